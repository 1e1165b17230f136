"""``prepare(join=URL)`` in an SEV-SNP guest, end to end in process (docs/cas.md "Joining a
running CAS").

Both CAS run the real ``prepare()`` with ``tee="sev-snp"`` over a fake configfs-tsm tree whose
reports are signed by a private AMD-shaped PKI (the ``SigningTsm`` of test_cas_self_attest.py:
every report has the same launch measurement), sharing one SQLite database. The running CAS
serves its real app over TLS (uvicorn in a thread); the joiner verifies its evidence, sends its
own and gets the master key, held in memory. A debug guest (another guest policy) refuses the
running CAS before sending anything, and a joiner that reaches a CAS of another database refuses
its key.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from snp_fakes import FakeAmd, make_fake_amd
from test_cas_self_attest import signing_tsm

from confide import errors
from confide.cas.app import create_app
from confide.cas.core import Cas
from confide.cas.db import raw_execute
from confide.cas.server import prepare, uvicorn_server
from confide.httpserve.limits import HttpLimits
from confide.runtime.quote import ConfigfsTsmQuoteProvider


@pytest.fixture(scope="module")
def amd() -> FakeAmd:
    return make_fake_amd()


@contextlib.contextmanager
def serving(data_dir: Path, root: Path, amd: FakeAmd, db_url: str) -> Iterator[tuple[str, Cas]]:
    """The CAS of ``data_dir`` in an SEV-SNP guest (the fake tree at ``root``), served over TLS."""
    cas, evidence, key_path, cert_path, _env, _signer = prepare(
        data_dir, host="127.0.0.1", dev=False, db_url=db_url, collateral=None,
        tee="sev-snp", quote_provider=ConfigfsTsmQuoteProvider(root), amd_roots=amd.roots(),
    )  # fmt: skip
    server = uvicorn_server(create_app(cas, cas_evidence=evidence), key_path, cert_path, None, HttpLimits())
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the CAS did not start"
        time.sleep(0.02)
    try:
        yield f"https://127.0.0.1:{sock.getsockname()[1]}", cas
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()
        cas.db.dispose()


def _released(cas: Cas) -> list[dict[str, object]]:
    with cas.db.read() as conn:
        rows = raw_execute(
            conn, "SELECT type, payload FROM events WHERE type LIKE 'master-key-release%' ORDER BY seq", ()
        ).fetchall()
    return [{"type": t, **json.loads(p)} for t, p in rows]


def test_a_cas_in_an_snp_guest_joins_and_holds_the_key_in_memory(tmp_path: Path, amd: FakeAmd) -> None:
    db = f"sqlite:///{tmp_path / 'shared.db'}"
    with signing_tsm(tmp_path, amd) as (root, _tsm), serving(tmp_path / "a", root, amd, db) as (url, first):
        joiner, evidence, *_ = prepare(
            tmp_path / "b", host="127.0.0.1", dev=False, db_url=db, collateral=None,
            tee="sev-snp", quote_provider=ConfigfsTsmQuoteProvider(root), amd_roots=amd.roots(), join=url,
        )  # fmt: skip
        try:
            assert evidence is not None and joiner.master_key_in_memory
            assert joiner.sealer.sealing_key_id == first.sealer.sealing_key_id
            key_id = first.sealer.sealing_key_id
            assert joiner.sealer.export_key(key_id) == (tmp_path / "a" / "master.key").read_bytes()
            assert not list((tmp_path / "b").glob("master.key*"))
            # The joiner releases too: it has evidence of its own and the key.
            assert joiner.key_release is not None and joiner.key_release.own is not None
            (released,) = _released(first)
            assert released["type"] == "master-key-released" and released["simulated"] is False
            identity = released["identity"]
            assert isinstance(identity, dict) and identity["measurement"] == "cd" * 48
            assert identity == released["releaser"]["identity"]  # type: ignore[index]
        finally:
            joiner.db.dispose()


def test_a_debug_guest_does_not_join(tmp_path: Path, amd: FakeAmd) -> None:
    """The guest policy (with its DEBUG bit) is an identity claim: a debug guest already differs
    from the running CAS, and refuses it before sending anything (so nothing is recorded; the
    running CAS's own refusal of debug evidence is in test_cas_key_release.py)."""
    db = f"sqlite:///{tmp_path / 'shared.db'}"
    with (
        signing_tsm(tmp_path / "good", amd) as (root, _tsm),
        serving(tmp_path / "a", root, amd, db) as (url, first),
        signing_tsm(tmp_path / "debug", amd, debug=True) as (debug_root, _debug),
        pytest.raises(
            errors.AppraisalError, match=r"not the same CAS as this one, not joining: policy: got 196608"
        ),
    ):
        prepare(
            tmp_path / "b", host="127.0.0.1", dev=False, db_url=db, collateral=None, tee="sev-snp",
            quote_provider=ConfigfsTsmQuoteProvider(debug_root), amd_roots=amd.roots(), join=url,
        )  # fmt: skip
    assert _released(first) == []
    assert not list((tmp_path / "b").glob("master.key*"))


def test_a_key_of_another_database_is_refused_by_the_joiner(tmp_path: Path, amd: FakeAmd) -> None:
    with signing_tsm(tmp_path, amd) as (root, _tsm):
        # A CAS of another database names another key.
        other, *_ = prepare(
            tmp_path / "other", host="127.0.0.1", dev=False, db_url=None, collateral=None,
            tee="sev-snp", quote_provider=ConfigfsTsmQuoteProvider(root), amd_roots=amd.roots(),
        )  # fmt: skip
        other.db.dispose()
        with (
            serving(tmp_path / "a", root, amd, f"sqlite:///{tmp_path / 'a.db'}") as (url, _first),
            pytest.raises(errors.BindingError, match="sealed under"),
        ):
            prepare(
                tmp_path / "b", host="127.0.0.1", dev=False, db_url=f"sqlite:///{tmp_path / 'other' / 'cas.db'}",
                collateral=None, tee="sev-snp", quote_provider=ConfigfsTsmQuoteProvider(root),
                amd_roots=amd.roots(), join=url,
            )  # fmt: skip


class _FakeSeal:
    """A sealing provider (confide.cas.sealing.SealingKeyProvider) with a fixed key."""

    name, binding = "fake", "fake-binding"

    def sealing_key(self) -> bytes:
        return b"\x42" * 32


def test_a_joiner_with_a_sealing_provider_seals_the_key_and_restarts_without_joining(
    tmp_path: Path, amd: FakeAmd
) -> None:
    db = f"sqlite:///{tmp_path / 'shared.db'}"
    snp = {
        "host": "127.0.0.1",
        "dev": False,
        "db_url": db,
        "collateral": None,
        "tee": "sev-snp",
        "amd_roots": amd.roots(),
    }
    with signing_tsm(tmp_path, amd) as (root, _tsm):
        with serving(tmp_path / "a", root, amd, db) as (url, first):
            key_id = first.sealer.sealing_key_id
            joiner, *_ = prepare(
                tmp_path / "b",
                quote_provider=ConfigfsTsmQuoteProvider(root),
                join=url,
                seal=_FakeSeal(),
                **snp,
            )
            joiner.db.dispose()
        assert not joiner.master_key_in_memory
        assert sorted(p.name for p in (tmp_path / "b").glob("master.key*")) == ["master.key.sealed"]
        # The running CAS is gone; the joiner starts from its sealed key alone.
        again, *_ = prepare(
            tmp_path / "b", quote_provider=ConfigfsTsmQuoteProvider(root), seal=_FakeSeal(), **snp
        )
        again.db.dispose()
        assert again.sealer.sealing_key_id == key_id
        # ... and --join again is refused: the key is there.
        with pytest.raises(errors.UsageError, match=r"already holds master\.key\.sealed"):
            prepare(
                tmp_path / "b",
                quote_provider=ConfigfsTsmQuoteProvider(root),
                join=url,
                seal=_FakeSeal(),
                **snp,
            )
