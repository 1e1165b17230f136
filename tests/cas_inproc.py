"""An in-process CAS for unit tests: the real ``prepare()`` (SQLite in a temporary directory,
the simulated platform, the ledger sink), a policy with one simulated service, and attestation
requests bound to fresh runtime keys."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from confide import errors
from confide.cas.client import policy_submission
from confide.cas.core import Cas, binding_report_data, decrypt_release
from confide.cas.db import raw_connection, raw_execute
from confide.cas.server import prepare
from confide.cas.verifier import PlatformVerifier
from confide.identity import Identity
from confide.ledger.encoding import Entry
from confide.ledger.store import Ledger
from confide.policy import Policy
from confide.policy.loader import loads_policy
from confide.sim.platform import SimPlatform

MEASUREMENT = "ab" * 48

T = TypeVar("T")


class Clock(Generic[T]):
    """A clock the test sets: calling it returns ``now`` (a POSIX time for ``Cas.clock``, a
    datetime for ``prepare(clock=...)``); tests move it by assigning ``now``."""

    def __init__(self, now: T) -> None:
        self.now = now

    def __call__(self) -> T:
        return self.now


def submission(cas: Cas | str, policy: Policy | str, identity: Identity | None = None) -> dict[str, Any]:
    """A signed policy submission (``confide/policy/v2``) for ``cas`` (a CAS, or the SHA-256 of
    its TLS key's SubjectPublicKeyInfo: the CAS the submission names), of ``policy`` (a loaded
    policy or its YAML text), by ``identity`` (a fresh one by default)."""
    for_cas = cas if isinstance(cas, str) else cas.tls_spki_sha256
    loaded = loads_policy(policy) if isinstance(policy, str) else policy
    return policy_submission(loaded, identity or Identity.generate(), cas=for_cas)


def production_cas(data_dir: Path, verifier: PlatformVerifier, policy: str) -> Cas:
    """A CAS as ``cas serve`` prepares it without ``--dev`` (no simulated platform), verifying
    with ``verifier`` (the test PKIs' roots), with ``policy`` applied."""
    cas, *_ = prepare(data_dir, host="127.0.0.1", dev=False, db_url=None, collateral=None)
    cas.verifier = verifier
    cas.apply(submission(cas, policy))
    return cas


def sim_policy(
    name: str = "app", service: str = "svc", measurement: str = MEASUREMENT, predecessor: str | None = None
) -> str:
    """Policy ``name`` with one simulated service of ``measurement`` (an update of the version
    ``predecessor`` when given)."""
    pred = "" if predecessor is None else f"predecessor: {predecessor}\n"
    return f"""name: {name}
version: "0.3"
{pred}services:
  - name: {service}
    command: {service} --token $$SCONE::token$$
    attestation:
      sim:
        measurement: "{measurement}"
secrets:
  - name: token
    kind: ascii
security:
  attestation:
    tolerate: [simulation]
"""


class RuntimeKey:
    """The runtime's side of an attestation: an ephemeral P-256 key, the CAS nonce (fresh unless
    given), the binding they give, request bodies and the release's decryption."""

    def __init__(self, cas: Cas, nonce: str | None = None) -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.der = self.key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        self.nonce = nonce or cas.new_nonce()
        self.binding = binding_report_data(self.der, bytes.fromhex(self.nonce))

    def body(
        self,
        *,
        policy: str,
        service: str,
        platform: str,
        evidence: bytes,
        aux: dict[str, bytes] | None = None,
    ) -> dict[str, Any]:
        out = {
            "policy": policy, "service": service, "platform": platform, "nonce": self.nonce,
            "evidence": base64.b64encode(evidence).decode(), "public_key": base64.b64encode(self.der).decode(),
        }  # fmt: skip
        if aux:
            out["aux"] = {k: base64.b64encode(v).decode() for k, v in aux.items()}
        return out

    def open(self, release: dict[str, Any]) -> dict[str, Any]:
        return decrypt_release(self.key, release, bytes.fromhex(self.nonce))


class InProcessClient:
    """What ``confide.runtime.run.attest_and_prepare`` needs of a CasClient, answered by an
    in-process CAS; ``attested`` counts the attestation requests that reached it."""

    def __init__(self, cas: Cas) -> None:
        self.cas = cas
        self.attested = 0

    def nonce(self) -> str:
        return self.cas.new_nonce()

    def attest(self, request: dict[str, Any]) -> dict[str, Any]:
        self.attested += 1
        return self.cas.attest(request)


def evict_before_phase_one(cas: Cas, monkeypatch: pytest.MonkeyPatch, evict: Callable[[], None]) -> list[int]:
    """Make ``evict()`` run between the prefetch and phase 1 of every attestation (as an LRU
    eviction by other attestations' fetches would); returns how often it ran."""
    begin, ran = cas.attest_begin, []

    def evicted_first(request: Any, **kw: Any) -> Any:
        evict()
        ran.append(1)
        return begin(request, **kw)

    monkeypatch.setattr(cas, "attest_begin", evicted_first)
    return ran


def last_attestation(cas: Cas) -> dict[str, Any]:
    """The newest attestation event, checked against its ledger entry."""
    with cas.db.read() as conn:
        seq, payload = raw_execute(
            conn, "SELECT seq, payload FROM events WHERE type = 'attestation' ORDER BY seq DESC LIMIT 1"
        ).fetchone()
        entry = Ledger.entry(raw_connection(conn), seq - 1)
    assert entry is not None
    recorded = json.loads(payload)
    assert Entry.from_bytes(entry).payload == recorded
    return dict(recorded)


def refused(cas: Cas, request: dict[str, Any], error: type[errors.ConfideError], match: str) -> Any:
    """Attest ``request``; it must be refused with exactly ``error`` and recorded as refused."""
    with pytest.raises(error, match=match) as info:
        cas.attest(request)
    assert type(info.value) is error
    event = last_attestation(cas)
    assert event["verdict"] == "refused" and event["reason_class"] == info.value.kind
    assert event["evidence_sha256"]
    return info.value


@dataclass
class InProcessCas:
    cas: Cas
    platform: SimPlatform

    @classmethod
    def start(cls, data_dir: Path, policy: str | None = None, *, db_url: str | None = None) -> InProcessCas:
        """``db_url``: a PostgreSQL database instead of SQLite in ``data_dir``; ``policy``: one
        to apply (the sim policy by default; ``""``: none)."""
        cas, _evidence, _key, _cert, env, _signer = prepare(
            data_dir, host="127.0.0.1", dev=True, db_url=db_url, collateral=None
        )
        if policy != "":
            cas.apply(submission(cas, policy or sim_policy()))
        return cls(cas, SimPlatform.load(Path(env["CONFIDE_SIM_DIR"])))

    def apply(self, text: str, identity: Identity | None = None) -> Any:
        """Create or update a policy from YAML ``text``, submitted by ``identity`` (a fresh one
        by default)."""
        return self.cas.apply(submission(self.cas, text, identity))

    def verify_with(self, **roots: Any) -> InProcessCas:
        """Replace the CAS's verifier by one that keeps the simulated platform's key and is
        given ``roots`` (``PlatformVerifier`` keyword arguments: the test PKIs' roots)."""
        sim_key = self.cas.verifier.sim_key  # type: ignore[attr-defined]
        self.cas.verifier = PlatformVerifier(sim_key=sim_key, **roots)
        return self

    def request(
        self,
        nonce: str | None = None,
        *,
        policy: str = "app",
        service: str = "svc",
        measurement: str = MEASUREMENT,
    ) -> tuple[dict[str, Any], ec.EllipticCurvePrivateKey]:
        """An attestation request (and the runtime key it binds) for a fresh or given nonce."""
        rt = RuntimeKey(self.cas, nonce)
        evidence = self.platform.issue(
            report_data=rt.binding, measurement=bytes.fromhex(measurement), timestamp=int(time.time())
        ).to_bytes()
        return rt.body(policy=policy, service=service, platform="sim", evidence=evidence), rt.key


@dataclass
class DbEnv:
    """An in-process CAS on its data directory and database (``db_url``: PostgreSQL, ``None``:
    SQLite in ``data``) with a policy owner, for tests that edit the database as an operator
    could and restart the CAS on it."""

    data: Path
    db_url: str | None
    ipc: InProcessCas
    owner: Identity

    @property
    def cas(self) -> Cas:
        return self.ipc.cas

    def restart(self) -> None:
        self.cas.db.dispose()
        self.ipc = InProcessCas.start(self.data, "", db_url=self.db_url)

    def sql(self, statement: str, params: tuple[object, ...] = ()) -> list[Any]:
        """Run ``statement`` in a write transaction; a ``SELECT``'s rows as tuples."""
        with self.cas.db.write() as conn:
            cur = raw_execute(conn, statement, params)
            return (
                [tuple(r) for r in cur.fetchall()] if statement.lstrip().upper().startswith("SELECT") else []
            )

    def commit_while_judged(
        self, monkeypatch: pytest.MonkeyPatch, policy_text: str, *, scanned: bool
    ) -> list[Any]:
        """Make the next read of the ledger's size by the head index (``HeadIndex.view``, what
        a policy's or a secret's head is judged against) race with ``policy_text`` applied by
        the owner through another CAS process on the same database (committed when it returns):
        applied before that size is read (``scanned`` false: the rows were read before, the
        ledger's size after), or right after it, then scanned by another read of this process
        (``scanned`` true: the verified heads it changed dropped while the first read is still
        judging). Returns the list the applied version is appended to (once)."""
        index = self.cas.policy_auth.index
        view = index.view
        done: list[Any] = []

        def racing(conn: Any) -> Any:
            seen = view(conn) if scanned else None
            if not done:
                other = InProcessCas.start(self.data, "", db_url=self.db_url)
                try:
                    done.append(other.apply(policy_text, self.owner))
                finally:
                    other.cas.db.dispose()
                if scanned:
                    with self.cas.db.read() as fresh:
                        view(fresh)
            return view(conn) if seen is None else seen

        monkeypatch.setattr(index, "view", racing)
        return done
