"""tlog-witness HTTP statuses over a real socket on 127.0.0.1."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path

import httpx2
import pytest
from _ledger_ref import MemNodes

from confide.ledger.checkpoint import Checkpoint, sign_checkpoint
from confide.ledger.merkle import consistency_proof, mth
from confide.ledger.note import SIG_TYPE_COSIGNATURE_V1, NoteSigner, open_note
from confide.ledger.witness import Witness
from confide.ledger.witness_http import WitnessServer

ORIGIN = "cas.example/ledger"
LEAVES = [i.to_bytes(4, "big") for i in range(64)]


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[tuple[str, NoteSigner, Witness]]:
    log = NoteSigner.generate(ORIGIN)
    witness = Witness(NoteSigner.generate("w.example/1", SIG_TYPE_COSIGNATURE_V1), tmp_path / "w.json",
                      {ORIGIN: log.verifier})  # fmt: skip
    server = WitnessServer(witness, ("127.0.0.1", 0))
    server.serve_in_thread()
    try:
        yield server.url, log, witness
    finally:
        server.shutdown()
        server.server_close()


def _body(old: int, proof: list[bytes], note: bytes) -> bytes:
    return f"old {old}\n".encode() + b"".join(base64.b64encode(p) + b"\n" for p in proof) + b"\n" + note


def _cp(log: NoteSigner, n: int, leaves: list[bytes] = LEAVES) -> bytes:
    return sign_checkpoint(Checkpoint(ORIGIN, n, mth(leaves[:n])), log)


def test_statuses(setup: tuple[str, NoteSigner, Witness]) -> None:
    url, log, witness = setup
    with httpx2.Client(timeout=10) as http:
        post = lambda body, path="/add-checkpoint": http.post(url + path, content=body)  # noqa: E731
        assert post(_body(0, [], _cp(log, 10)), "/other").status_code == 404
        assert post(b"garbage").status_code == 400
        stranger = sign_checkpoint(Checkpoint("other.example/log", 1, mth(LEAVES[:1])), log)
        assert post(_body(0, [], stranger)).status_code == 404  # unknown origin
        assert post(_body(0, [], _cp(NoteSigner.generate(ORIGIN), 10))).status_code == 403  # other key
        ok = post(_body(0, [], _cp(log, 10)))
        assert ok.status_code == 200
        _, verified = open_note(_cp(log, 10) + ok.content, [witness.verifier])
        assert verified[0].name == "w.example/1"
        stale = post(_body(0, [], _cp(log, 20)))
        assert (stale.status_code, stale.text, stale.headers["content-type"]) == (
            409,
            "10\n",
            "text/x.tlog.size",
        )
        assert post(_body(20, [], _cp(log, 10))).status_code == 400  # old size above the checkpoint
        bad_proof = consistency_proof(MemNodes(LEAVES), 10, 20)[:-1]
        assert post(_body(10, bad_proof, _cp(log, 20))).status_code == 422
        good = post(_body(10, consistency_proof(MemNodes(LEAVES), 10, 20), _cp(log, 20)))
        assert good.status_code == 200
        forked = [b"x", *LEAVES[1:]]
        assert post(_body(20, [], _cp(log, 20, forked))).status_code == 409  # same size, other root
