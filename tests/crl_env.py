"""The in-process CAS of the revocation tests (tests/unit/test_cas_crl.py,
tests/unit/test_cas_owner_revocation.py): a policy with a generated CA and a leaf under it, an
injected clock, and helpers that read CRLs, serials and ledger events."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from cas_inproc import MEASUREMENT, Clock, InProcessCas, submission
from confide.cas.core import READ_TYPE, decrypt_release, sign_document
from confide.cas.db import raw_connection, raw_execute
from confide.cas.owner_revocation import REVOKE_TYPE
from confide.identity import Identity
from confide.ledger.encoding import Entry, EntryType
from confide.ledger.store import Ledger

DAY = 86400.0
T0 = 1_900_000_000.0  # 2030-03-17: far from the wall clock, so nothing reads it unnoticed
FILES = "/dev/shm/crl"


def header(name: str, predecessor: str | None = None, *, image: bool = True) -> str:
    """The start of a policy: its name, predecessor, and one simulated service ``svc`` (of image
    ``img``)."""
    pred = f'predecessor: "{predecessor}"\n' if predecessor else ""
    img = "    image_name: img\n" if image else ""
    return f"""name: {name}
version: "0.3"
{pred}services:
  - name: svc
{img}    command: svc
    attestation:
      sim:
        measurement: "{MEASUREMENT}"
"""


def policy(
    *,
    dns: str = "srv.local",
    leaf: bool = True,
    ca_extra: str = "",
    key_type: str = "P-256",
    name: str = "tls",
    predecessor: str | None = None,
    runtime: str | None = None,
    access: str = "",
) -> str:
    """Policy ``name``: a generated CA ``ca``, a leaf ``srv`` (``dns``) under it unless not
    ``leaf``, a certificate ``rt`` issued to the runtime's key (``runtime``: its DNS name), and
    ``access`` (an ``access_policy`` block)."""
    leaf_text = f"""  - name: srv_key
    kind: private-key
  - name: srv
    kind: x509
    private_key: srv_key
    issuer: ca
    common_name: srv.local
    dns: [{dns}]
    valid_for: 30 days
""" if leaf else ""  # fmt: skip
    files = f"""      - path: {FILES}/srv.pem
        content: "$$SCONE::srv:crt$$$$SCONE::srv:chain$$"
""" if leaf else ""  # fmt: skip
    if runtime is not None:
        leaf_text += f"""  - name: rt
    kind: x509
    issuer: ca
    issue_to_runtime: true
    common_name: rt.local
    dns: [{runtime}]
    valid_for: 1 day
"""
        files += f"""      - path: {FILES}/rt.pem
        content: "$$SCONE::rt:crt$$"
"""
    return f"""{header(name, predecessor)}{access}secrets:
  - name: ca_key
    kind: private-key
    key_type: {key_type}
  - name: ca
    kind: x509-ca
    private_key: ca_key
    common_name: Test CA
    valid_for: 90 days
    renew_before: 30 days
{ca_extra}
{leaf_text}
images:
  - name: img
    injection_files:
{files}      - path: {FILES}/ca.pem
        content: "$$SCONE::ca:crt$$"
      - path: {FILES}/ca.crl
        content: "$$SCONE::ca:crl$$"
      - path: {FILES}/ca.crl.der
        content: "$$SCONE::ca:crl:der$$"
security:
  attestation:
    tolerate: [simulation]
"""


# A root, an intermediate it signs, and a leaf the intermediate signs.
TWO_LEVEL = f"""{header("pki", image=False)}secrets:
  - name: root_key
    kind: private-key
  - name: root
    kind: x509-ca
    private_key: root_key
    common_name: Root CA
    valid_for: 365 days
  - name: int_key
    kind: private-key
  - name: int
    kind: x509-ca
    private_key: int_key
    issuer: root
    common_name: Intermediate CA
    valid_for: 90 days
    renew_before: 30 days
  - name: srv_key
    kind: private-key
  - name: srv
    kind: x509
    private_key: srv_key
    issuer: int
    common_name: srv.local
    dns: [srv.local]
    valid_for: 120 days
security:
  attestation:
    tolerate: [simulation]
"""


class Env(InProcessCas):
    owner: Identity
    clock: Clock[float]

    def apply_text(self, text: str) -> None:
        self.cas.apply(submission(self.cas, text, self.owner))

    def head(self, name: str = "tls") -> str:
        with self.cas.db.read() as conn:
            row = raw_execute(conn, "SELECT hash FROM policy_heads WHERE name = ?", (name,)).fetchone()
        return str(row[0])

    def release(self, name: str = "tls") -> dict[str, bytes]:
        body, key = self.request(policy=name)
        config = decrypt_release(key, self.cas.attest(body), bytes.fromhex(body["nonce"]))
        return {path: base64.b64decode(b64) for path, b64 in config["files"].items()}

    def read_request(
        self, name: str = "tls", who: Identity | None = None, *, route: str = "show"
    ) -> dict[str, Any]:
        """A signed read request for this CAS and ``route`` (docs/cas.md "Policies and governance")."""
        who = who or self.owner
        body = {"type": READ_TYPE, "name": name, "nonce": self.cas.new_read_nonce(name, route),
                "cas": self.cas.tls_spki_sha256, "route": route}  # fmt: skip
        return sign_document(body, who.sign, who.public.public_base64)

    def revocation(
        self,
        secret: str = "srv",
        *,
        serial: int | str | None = None,
        reason: str = "superseded",
        name: str = "tls",
        who: Identity | None = None,
        at: float | None = None,
        cas: str | None = None,
    ) -> dict[str, Any]:
        """A signed ``confide/revoke/v2`` request for this CAS (or the one whose TLS key hash is
        ``cas``): ``serial`` (an int, or hex text as sent), else every valid certificate of
        ``secret``."""
        who = who or self.owner
        body: dict[str, Any] = {"type": REVOKE_TYPE, "name": name, "secret": secret, "reason": reason,
                                "time": int(self.clock.now if at is None else at),
                                "cas": self.cas.tls_spki_sha256 if cas is None else cas}  # fmt: skip
        if serial is None:
            body["all_valid"] = True
        else:
            body["serial"] = format(serial, "x") if isinstance(serial, int) else serial
        return sign_document(body, who.sign, who.public.public_base64)

    def crl(self, name: str = "tls", ca: str = "ca") -> x509.CertificateRevocationList:
        der, _, public = self.cas.crl(name, ca, self.read_request(name, route="crl"))
        assert not public
        return x509.load_der_x509_crl(der)

    def ca_cert(self, name: str = "tls", ca: str = "ca") -> x509.Certificate:
        """The current certificate of CA ``ca`` of policy ``name``."""
        with self.cas.db.read() as conn:
            row = raw_execute(
                conn,
                "SELECT public FROM secrets WHERE policy = ? AND name = ? ORDER BY version DESC",
                (name, ca),
            ).fetchone()
        return x509.load_pem_x509_certificate(json.loads(row[0])["certificate"].encode())

    def versions(self, name: str = "srv", policy: str = "tls") -> list[tuple[int, dict[str, Any]]]:
        """The stored versions of secret ``name`` of ``policy``, oldest first, with their public
        metadata (certificate, serial, public key)."""
        with self.cas.db.read() as conn:
            rows = raw_execute(
                conn, "SELECT version, public FROM secrets WHERE policy = ? AND name = ? ORDER BY version",
                (policy, name),
            ).fetchall()  # fmt: skip
        return [(int(v), json.loads(p)) for v, p in rows]

    def certificate(
        self, name: str = "srv", version: int | None = None, policy: str = "tls"
    ) -> x509.Certificate:
        """The certificate of ``version`` (default: the latest) of secret ``name``."""
        public = (
            dict(self.versions(name, policy))[version]
            if version is not None
            else self.versions(name, policy)[-1][1]
        )
        return x509.load_pem_x509_certificate(public["certificate"].encode())

    def serial(self, name: str = "srv", version: int | None = None) -> int:
        return self.certificate(name, version).serial_number

    def events(self, type_: str, entry_type: EntryType) -> list[dict[str, Any]]:
        """The payloads of ``type_`` events of policy tls, each checked against its ledger entry."""
        out = []
        with self.cas.db.read() as conn:
            rows = raw_execute(
                conn,
                "SELECT seq, payload FROM events WHERE type = ? AND policy = 'tls' ORDER BY seq",
                (type_,),
            ).fetchall()
            for seq, payload in rows:
                entry = Ledger.entry(raw_connection(conn), seq - 1)
                assert entry is not None
                parsed = Entry.from_bytes(entry)
                assert parsed.type is entry_type and parsed.payload == json.loads(payload)
                out.append(json.loads(payload))
        return out


@contextmanager
def started(data_dir: Path, db_url: str | None = None, text: str | None = None) -> Iterator[Env]:
    """An in-process CAS (SQLite in ``data_dir``, or the PostgreSQL database ``db_url``) at
    :data:`T0` with policy ``text`` (default :func:`policy`) applied by ``owner``; closed
    afterwards."""
    ipc = InProcessCas.start(data_dir, db_url=db_url)
    out = Env(ipc.cas, ipc.platform)
    out.clock = Clock(T0)
    out.cas.clock = out.clock
    out.owner = Identity.generate()
    try:
        out.apply_text(text or policy())
        yield out
    finally:
        out.cas.db.dispose()


def number(crl: x509.CertificateRevocationList) -> int:
    return crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number


def revoked(crl: x509.CertificateRevocationList) -> dict[int, tuple[x509.ReasonFlags, datetime]]:
    out = {}
    for entry in crl:
        try:
            reason = entry.extensions.get_extension_for_class(x509.CRLReason).value.reason
        except x509.ExtensionNotFound:  # RFC 5280 §5.3.1: no reasonCode is unspecified
            reason = x509.ReasonFlags.unspecified
        out[entry.serial_number] = (reason, entry.revocation_date_utc)
    return out


def check_signed_by_ca(crl: x509.CertificateRevocationList, ca: x509.Certificate) -> None:
    """RFC 5280 §5: v2, signed by the CA's key, issuer = its subject, AKI = its SKI (§5.2.1)."""
    assert crl.is_signature_valid(ca.public_key())
    assert crl.issuer == ca.subject
    aki = crl.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    ski = ca.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    assert aki.key_identifier == ski.digest
    der = crl.public_bytes(serialization.Encoding.DER)
    tbs = _inside(der, _inside(der, 0))  # CertificateList, then tbsCertList (§5.1)
    assert der[tbs : tbs + 3] == b"\x02\x01\x01"  # version INTEGER 1: v2 (§5.1.2.1)


def _inside(der: bytes, pos: int) -> int:
    """Where the contents of the DER element at ``pos`` start (short or long length form)."""
    length = der[pos + 1]
    return pos + 2 + (length & 0x7F if length & 0x80 else 0)
