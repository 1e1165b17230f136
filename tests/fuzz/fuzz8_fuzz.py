"""Coverage-guided fuzzing (atheris) of the readers the fuzz8 campaign covered (CHANGELOG;
bounded, seeded tests in tests/unit/test_mutation_witness_board_tcb.py). One target per run:

- ``witness-request``: a tlog-witness ``add-checkpoint`` body, read and judged by a real
  :class:`~confide.ledger.witness.Witness` (``ledger witness serve``'s app, in process);
- ``witness-answer``: a witness's answer (status, content type, body) to the CAS's
  :func:`~confide.ledger.witness_http.request_cosignatures`;
- ``floor``: the CAS's ``DIR/dcap-tcb-evaluation.json``;
- ``collateral``: an Intel PCS TCB Info / QE Identity answer (:func:`split_pcs_response`,
  :meth:`TcbInfo.from_json_text`, :meth:`EnclaveIdentity.from_json_text`);
- ``board``: a successor, board-change, retirement approval or withdrawal document.

atheris is not a project dependency: install it outside the project's venv and run one CPU at a
time, e.g.::

    .venv/bin/python -m pip install --target /tmp/atheris-lib atheris
    .venv/bin/python tests/fuzz/fuzz8_fuzz.py --seeds /tmp/fuzz8-seeds   # writes the seeds
    PYTHONPATH=/tmp/atheris-lib:src flock -x /tmp/confide-cpu.lock .venv/bin/python \\
      tests/fuzz/fuzz8_fuzz.py witness-request /tmp/corpus-wr /tmp/fuzz8-seeds/witness-request \\
      -max_len=8192 -rss_limit_mb=1024 -timeout=5 -max_total_time=600

Invariants (an AssertionError or any exception but a :class:`~confide.errors.ConfideError` is a
finding; atheris then writes the input as ``crash-*``): only confide errors escape; a witness
cosigns (and its state changes) only a checkpoint the log signed, extending what it knew; the
CAS takes a cosignature only when it verifies under the witness's key for the text asked; a
floor file loads only when it is what the CAS writes (the oracle of the bounded tests); a TCB
Info or QE Identity read reports the number its JSON holds; a board document parses only with a
valid signature by the key it names.
"""

from __future__ import annotations

import base64
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

try:  # the harness runs with atheris; --seeds (writing the seed corpora) runs without it
    import atheris
except ImportError:  # pragma: no cover - the project's venv has no atheris
    atheris = None

if atheris is not None:
    with atheris.instrument_imports():
        from confide import errors, jsonstrict
        from confide.cas import board_change, retirement, successor, tcb_floor
        from confide.evidence import dcap_collateral
        from confide.ledger import note as note_mod
        from confide.ledger import witness as witness_mod
        from confide.ledger import witness_http
else:
    from confide import errors, jsonstrict
    from confide.cas import board_change, retirement, successor, tcb_floor
    from confide.evidence import dcap_collateral
    from confide.ledger import note as note_mod
    from confide.ledger import witness as witness_mod
    from confide.ledger import witness_http

import httpx2

from confide.cas.core import sign_document
from confide.identity import Identity
from confide.ledger.checkpoint import Checkpoint
from confide.ledger.note import SIG_TYPE_COSIGNATURE_V1, NoteSigner, parse_note
from confide.ledger.store import Ledger, connect, write_transaction

ORIGIN = "cas.example/log"
_WORK = Path(tempfile.mkdtemp(prefix="fuzz8-"))
_LOG_SIGNER = NoteSigner(ORIGIN, note_mod.Ed25519PrivateKey.from_private_bytes(b"\x01" * 32))
_WITNESS_SIGNER = NoteSigner(
    "w.example", note_mod.Ed25519PrivateKey.from_private_bytes(b"\x02" * 32), SIG_TYPE_COSIGNATURE_V1
)


def _log() -> tuple[Any, list[bytes]]:
    """A log of 12 entries with checkpoints at 4, 8 and 12 (their notes)."""
    conn = connect(_WORK / "log.db")
    Ledger.init_schema(conn)
    notes = []
    for n in range(3):
        with write_transaction(conn):
            Ledger().append_batch(conn, [f"e{n}-{i}".encode() for i in range(4)])
        notes.append(Ledger().sign_checkpoint(conn, _LOG_SIGNER))
    return conn, notes


_CONN, _NOTES = _log()


def _add_body(old: int, note: bytes) -> bytes:
    size = Checkpoint.from_text(parse_note(note).text).size
    proof = Ledger().consistency_proof(_CONN, old, size) if old else []
    return b"".join([f"old {old}\n".encode(), *(base64.b64encode(p) + b"\n" for p in proof), b"\n", note])


# --- targets -------------------------------------------------------------------------------------


def witness_request(data: bytes) -> None:
    state = _WORK / "w.json"
    state.unlink(missing_ok=True)
    witness = witness_mod.Witness(_WITNESS_SIGNER, state, {ORIGIN: _LOG_SIGNER.verifier})
    app = witness_http.WitnessApp(witness, prefix="", limiter=None)
    status, body, _, _ = app._add_checkpoint(_add_body(0, _NOTES[0]))  # the witness knows size 4
    assert status == 200
    before = state.read_bytes()
    status, body, _, _ = app._add_checkpoint(data)
    assert status in (200, 400, 403, 404, 409, 422), (status, body)
    if status != 200:
        assert state.read_bytes() == before
        return
    latest = witness.latest(ORIGIN)
    assert latest is not None and latest.size >= 4
    text = latest.to_text()
    assert text in [parse_note(n).text for n in _NOTES]
    sig = parse_note(b"x\n\n" + body).signatures[0]
    assert _WITNESS_SIGNER.verifier.verify(text, sig.signature)


def witness_answer(data: bytes) -> None:
    status = [200, 409, 422, 500][data[0] % 4] if data else 200
    ctype = witness_http.SIZE_CONTENT_TYPE if len(data) > 1 and data[1] & 1 else "text/plain"
    answer = httpx2.Response(status, content=data[2:], headers={"content-type": ctype})
    client = httpx2.Client(transport=httpx2.MockTransport(lambda request: answer))
    key = _WITNESS_SIGNER.verifier
    note = _NOTES[-1]
    try:
        sig = witness_http.request_cosignatures(
            _CONN, "http://w.example", key, client=client, note=note, old_size=8
        )
    except errors.LogRollbackError:
        assert status in (409, 422)
        return
    except errors.ConfideError:
        return
    assert status == 200 and key.verify(parse_note(note).text, sig.signature)


def floor(data: bytes) -> None:
    path = _WORK / tcb_floor.FLOOR_FILE
    path.write_bytes(data)
    try:
        loaded = tcb_floor.TcbEvaluationFloor(path)
    except (errors.ParseError, errors.StorageError):
        return
    doc = json.loads(data)
    assert type(doc["v"]) is int and doc["v"] in (1, 2)
    members = {"v", "tcb_info", "qe_identity"}
    assert members <= set(doc) <= members | ({"macs"} if doc["v"] == 2 else set())
    for key, number in doc["tcb_info"].items():
        tee, fmspc = key.split(":")
        assert tee in ("sgx", "tdx") and len(fmspc) == 12 and type(number) is int
        assert loaded.floors(tee, fmspc)[0] == number
    for tee, number in doc["qe_identity"].items():
        assert tee in ("sgx", "tdx") and type(number) is int
        assert loaded.floors(tee, "000000000000")[1] == number


def collateral(data: bytes) -> None:
    for key in ("tcbInfo", "enclaveIdentity"):
        try:
            text, _sig = dcap_collateral.split_pcs_response(data, key)
        except errors.ParseError:
            continue
        assert jsonstrict.loads(data, structure="oracle")[key] == jsonstrict.loads(text, structure="oracle")
    for reader in (dcap_collateral.TcbInfo.from_json_text, dcap_collateral.EnclaveIdentity.from_json_text):
        try:
            parsed = reader(data)
        except errors.ParseError:
            continue
        number = jsonstrict.loads(data, structure="oracle")["tcbEvaluationDataNumber"]
        assert parsed.tcb_evaluation_data_number == number and type(number) is int


_PARSERS = (
    successor.parse_approval,
    successor.parse_withdrawal,
    board_change.parse_change_approval,
    retirement.parse_retirement_approval,
)


def board(data: bytes) -> None:
    try:
        doc = jsonstrict.loads(data, structure="oracle")
    except errors.ParseError:
        return
    for parse in _PARSERS:
        try:
            parse(doc)
        except errors.ConfideError:
            continue
        # Parsed: the signature verified under the key the document names (a fuzzer cannot
        # forge one; the seeds are signed documents, so a mutation that keeps them valid must
        # leave the signed content as it was).
        body = {k: v for k, v in doc.items() if k != "signature"}
        assert isinstance(doc.get("signature"), str) and isinstance(body.get("signer"), str)


TARGETS = {"witness-request": witness_request, "witness-answer": witness_answer, "floor": floor,
           "collateral": collateral, "board": board}  # fmt: skip


# --- seeds ---------------------------------------------------------------------------------------


def write_seeds(directory: Path) -> None:
    """One seed directory per target, from valid inputs of each."""
    seeds: dict[str, list[bytes]] = {
        "witness-request": [_add_body(4, _NOTES[1]), _add_body(4, _NOTES[2]), _add_body(0, _NOTES[0])],
        "witness-answer": [
            b"\x00\x00" + _WITNESS_SIGNER.sign(parse_note(_NOTES[-1]).text, timestamp=1_900_000_000).line().encode(),
            b"\x01\x01" + b"8\n", b"\x01\x01" + b"13\n", b"\x02\x00" + b"no\n",
        ],
        "floor": [json.dumps({"v": 1, "tcb_info": {"sgx:00a067110000": 17, "tdx:b0c06f000000": 18},
                              "qe_identity": {"sgx": 17, "tdx": 18}}).encode(),
                  json.dumps({"v": 2, "tcb_info": {"sgx:00a067110000": 17}, "qe_identity": {"sgx": 17},
                              "macs": {"ab" * 16: "cd" * 32}}).encode()],
    }  # fmt: skip
    assets = Path(__file__).parents[1] / "assets"
    found = sorted(assets.rglob("*collateral*.json"))[:4]
    coll = []
    for path in found:
        try:
            bundle = dcap_collateral.DcapCollateral.from_dcap_qvl_json(path.read_bytes())
        except errors.ConfideError:
            continue
        sig = "ab" * 64
        coll += [bundle.tcb_info, bundle.qe_identity,
                 b'{"tcbInfo":' + bundle.tcb_info + b',"signature":"' + sig.encode() + b'"}',
                 b'{"enclaveIdentity":' + bundle.qe_identity + b',"signature":"' + sig.encode() + b'"}']  # fmt: skip
    seeds["collateral"] = coll
    who = Identity.generate("alice")
    key_id, now = "ab" * 16, int(time.time())
    bodies = [
        {"type": successor.APPROVAL_TYPE, "master_key_id": key_id, "platform": "sim",
         "claims": {"measurement": "ee" * 48}, "expires": now + 600},
        {"type": board_change.CHANGE_TYPE, "master_key_id": key_id, "generation": 0,
         "board": {"require-at-least-2": ["11" * 32, "22" * 32]}, "expires": now + 600},
        {"type": retirement.RETIREMENT_TYPE, "master_key_id": key_id, "generation": 0, "platform": "sim",
         "code": {"measurement": "dd" * 48}, "expires": now + 600},
        {"type": successor.WITHDRAWAL_TYPE, "approval": "cd" * 32, "master_key_id": key_id, "time": now},
    ]  # fmt: skip
    seeds["board"] = [
        json.dumps(sign_document(b, who.sign, who.public.public_base64)).encode() for b in bodies
    ]
    for target, items in seeds.items():
        out = directory / target
        out.mkdir(parents=True, exist_ok=True)
        for i, item in enumerate(items):
            (out / f"seed-{i}").write_bytes(item)


def main() -> None:
    if sys.argv[1:2] == ["--seeds"]:
        write_seeds(Path(sys.argv[2]))
        return
    target = TARGETS[sys.argv[1]]
    assert atheris is not None, "atheris is needed to fuzz (module docstring)"

    def one(data: bytes) -> None:
        try:
            target(data)
        except errors.ConfideError:
            pass

    atheris.Setup([sys.argv[0], *sys.argv[2:]], one)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
