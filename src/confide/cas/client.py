"""A client of the CAS API over TLS, trusting only the CAS certificate it was given.

``CasClient.from_env()`` reads the variables ``confide cas serve`` writes to ``client.env``:
``CONFIDE_CAS_URL`` and ``CONFIDE_CAS_CERT`` (the PEM certificate to trust; nothing else is
trusted). Errors returned by the CAS are re-raised as the same confide error class. A request
the CAS refused with ``429`` (its per-client rate limits, docs/cas.md "HTTP API": the request
was not processed) is sent again after its ``Retry-After``, up to :data:`RATE_LIMIT_RETRIES`
times and :data:`MAX_RETRY_AFTER` seconds per wait.
"""

from __future__ import annotations

import base64
import hmac
import json
import os
import re
import ssl
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx2
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from confide import errors, jsonstrict
from confide.cas import answer as _answer
from confide.cas.documents import (
    APPROVAL_TYPE,
    POLICY_TYPE,
    READ_NONCE_PATH,
    READ_TYPE,
    READABLE_PATH,
    REVOKE_TYPE,
    SUCCESSOR_APPROVAL_TYPE,
    sign_document,
    spki_sha256,
)
from confide.cas.documents import BOARD_CHANGE_TYPE as SUCCESSOR_BOARD_CHANGE_TYPE
from confide.cas.documents import RETIREMENT_TYPE as SUCCESSOR_RETIREMENT_TYPE
from confide.cas.documents import WITHDRAWAL_TYPE as SUCCESSOR_WITHDRAWAL_TYPE
from confide.errors import ConfideError, NetworkError, UsageError
from confide.fsutil import read_small_file
from confide.httpbody import Answer, answer_client, fetch
from confide.identity import Identity

if TYPE_CHECKING:  # the policy model loads only where a policy is submitted
    from confide.policy import Policy

__all__ = ["CasClient", "policy_submission"]

ENV_URL = "CONFIDE_CAS_URL"
ENV_CERT = "CONFIDE_CAS_CERT"
ENV_PIN = "CONFIDE_CAS_SPKI"
"""The SHA-256 (hex) of the SubjectPublicKeyInfo of the one CAS :meth:`CasClient.from_env` may
talk to (:func:`confide.cas.documents.spki_sha256`, what ``confide cas attest`` shows): a
certificate in :data:`ENV_CERT` with another key is refused before anything is sent. The
launcher of an image converted with ``confide sconify --cas`` sets it (after removing the
host's value): the image, not the host's environment, names its CAS."""
RATE_LIMIT_RETRIES = 3
MAX_RETRY_AFTER = 10.0  # seconds: a longer Retry-After is waited for this long


def _retry_after(value: str | None) -> float:
    """The wait of a 429's ``Retry-After`` (RFC 9110 §10.2.3): delay-seconds (1*DIGIT, ASCII
    digits: ``str.isdigit`` also takes "²", which ``float`` refuses); an HTTP-date, a missing or
    a malformed value waits 1 s; at most :data:`MAX_RETRY_AFTER`."""
    if value is None or not (value.isascii() and value.isdigit()) or len(value) > 6:
        return 1.0
    return min(float(value), MAX_RETRY_AFTER)


def policy_submission(policy: Policy, identity: Identity, *, cas: str) -> dict[str, Any]:
    """``identity``'s signed submission of ``policy`` for the one CAS whose TLS key's
    SubjectPublicKeyInfo hashes to ``cas`` (:func:`confide.cas.core.spki_sha256`; docs/cas.md
    "Policies and governance"): no other CAS takes it. The policy's version hash is its own,
    whatever ``cas``."""
    from confide.policy.canonical import canonical_json  # noqa: PLC0415 - the caller loaded the policy model

    body = {"type": POLICY_TYPE, "policy": json.loads(canonical_json(policy)), "cas": cas}
    return sign_document(body, identity.sign, identity.public.public_base64)


MAX_ANSWER = 64 * 1024 * 1024
"""The largest answer the client reads from a CAS (bytes, after any content decoding): a
release carries the service's injected files, which a policy bounds to the CAS's 16 MiB request
limit, base64-encoded. A larger answer is a ``ParseError``, read no further."""

MAX_ANSWER_TIME = 600.0
"""The longest one answer of a CAS may take to arrive, whatever its pace (seconds): its
connection, status line, headers and body (:func:`confide.httpbody.fetch`). The read timeout
bounds each wait for more bytes only, so a CAS sending a byte just within it would hold a client
(``confide run`` holding a key, ``ledger history|accesses``, ``ledger verify --full
--identity``) for as long as the HTTP parser takes header lines, then as :data:`MAX_ANSWER`
allows. 600 s asks at least ~110 kB/s of the largest answer. Longer is a ``NetworkError``."""


def _fetch(http: httpx2.Client, url: str, method: str, path: str, **kwargs: Any) -> Answer:
    """One request, its answer read up to :data:`MAX_ANSWER` bytes within
    :data:`MAX_ANSWER_TIME` seconds, head and body: a hostile or broken CAS cannot make the
    client (``confide run`` holding a key) read, nor wait, without bound."""
    try:
        return fetch(
            http, method, path, limit=MAX_ANSWER, within=MAX_ANSWER_TIME,
            # a large answer is the CAS's fault, a slow one the network's (or the CAS's)
            too_large=lambda how: errors.ParseError(f"the CAS's answer {how}"),
            too_slow=lambda how: NetworkError(f"the CAS at {url}: its answer {how}"),
            **kwargs,
        )  # fmt: skip
    except httpx2.HTTPError as exc:
        refused = _certificate_refusal(exc)
        if refused is not None:
            # It was reached: it answered with a certificate the client does not trust (another
            # CAS's client.env, or the CAS was started anew on another data directory).
            raise NetworkError(
                f"the CAS at {url} is not the one this client trusts: its TLS certificate does not "
                f"verify against {ENV_CERT} (or the certificate pinned by 'confide cas attest'): "
                f"{refused}; source the client.env of the CAS at that address"
            ) from None
        hint = NOT_LISTENING if isinstance(exc, httpx2.ConnectError) else ""
        raise NetworkError(f"cannot reach the CAS at {url}: {type(exc).__name__}: {exc}{hint}") from None


# No connection at all: most often no CAS listens there (stopped, or restarted elsewhere).
NOT_LISTENING = (
    "; is a CAS running there? 'confide cas serve' writes the address it listens on into its"
    " client.env when it starts: source that one"
)


def _certificate_refusal(exc: BaseException) -> str | None:
    """The reason the TLS certificate was refused, when that is why ``exc`` was raised."""
    seen: BaseException | None = exc
    for _ in range(8):  # httpx2 -> httpcore2 -> ssl: a short chain, bounded all the same
        if seen is None:
            return None
        if isinstance(seen, ssl.SSLCertVerificationError):
            return str(seen.verify_message or seen)
        seen = seen.__cause__ or seen.__context__
    return None


def _raise_for(response: Answer) -> Any:
    """The JSON of a CAS answer (read strictly: a key given twice is a ParseError), or the
    error class and message of an error answer raised; other error answers are NetworkErrors."""
    try:
        data = jsonstrict.loads(response.content, structure="CAS answer")
    except errors.ParseError:
        if response.status_code < 400:
            raise
        data = None
    if response.status_code >= 400:
        err = data.get("error") if isinstance(data, dict) else None
        if isinstance(err, dict):
            cls = getattr(errors, str(err.get("class")), None)
            message = str(err.get("message"))
            # WaitStoppedError is this process's own (a stop signal during a local wait, which
            # `confide run` then ends by): no CAS sends it, and its constructor needs the signal.
            if (
                isinstance(cls, type)
                and issubclass(cls, ConfideError)
                and not issubclass(cls, errors.WaitStoppedError)
            ):
                if cls is errors.ParseError:
                    raise errors.ParseError(message)
                raise cls(message)
            if response.status_code == 503 and err.get("exit_code") == errors.StorageError.exit_code:
                # A StorageError of the CAS's own (LedgerEntriesAltered, EventsAltered,
                # PolicyRowsAltered: its database was altered): its message, as a StorageError.
                raise errors.StorageError(f"the CAS: {str(err.get('class'))[:64]}: {message}")
        raise NetworkError(f"CAS answered HTTP {response.status_code}")
    return data


MAX_CERT_FILE = 1 << 20
"""The largest certificate file read (bytes): a CAS certificate is a few KiB."""


def read_cert_file(path: Path, what: str = "the CAS certificate") -> bytes:
    """The bytes of the PEM file ``path`` (:func:`confide.fsutil.read_small_file`), so a FIFO or
    a device named by ``CONFIDE_CAS_CERT``, ``ca_cert=`` or ``--cacert`` is a ``UsageError`` at
    once, not a read by OpenSSL that waits for a writer for ever."""
    return read_small_file(path, MAX_CERT_FILE, what)


def tls_trusting(pem: bytes, what: str = "the CAS certificate") -> ssl.SSLContext:
    """A client context that trusts only the certificates in ``pem`` (the bytes of a PEM file:
    what OpenSSL read as ``cafile`` before; bytes outside the ASCII PEM blocks are skipped as it
    skipped them)."""
    try:
        return ssl.create_default_context(cadata=pem.decode("ascii", "ignore"))
    except (ssl.SSLError, ValueError) as exc:
        raise UsageError(f"cannot load {what}: {exc}") from None


def _one_certificate(cert: Path | bytes, pem: bytes) -> x509.Certificate:
    """The one certificate in ``pem`` (the bytes of ``cert``, a file or PEM bytes): the CAS this
    client trusts, and signs its requests for (:func:`confide.cas.core.spki_sha256` of its
    key). The TLS context trusts this certificate alone, whatever else the file holds that
    another PEM reader would take for a certificate."""
    shown = "(pinned in memory)" if isinstance(cert, bytes) else cert
    try:
        certificates = x509.load_pem_x509_certificates(pem)
    except ValueError as exc:
        raise UsageError(f"cannot load the CAS certificate {shown}: {exc}") from None
    if len(certificates) != 1:
        raise UsageError(
            f"the CAS certificate {shown} holds {len(certificates)} certificates, expected the CAS's one"
        )
    return certificates[0]


class CasClient:
    """``cert``: the file of the one certificate to trust, or its PEM bytes (a certificate pinned
    by attestation in memory, :mod:`confide.cas.join`: then the host name is not checked)."""

    def __init__(
        self,
        url: str,
        cert: Path | bytes | None,
        *,
        timeout: float = 30.0,
        sleep: Callable[[float], None] = time.sleep,
        plain_http_for_tests: bool = False,
    ) -> None:
        self.url = url.rstrip("/")
        self.sleep = sleep  # waits out a 429's Retry-After (tests pass their own)
        if not url.startswith("https://") and not plain_http_for_tests:
            # Without TLS the CAS is not authenticated: anyone on the path could answer with a
            # release of their own (command, environment, files) or accept a signed policy
            # document in its place. Every CAS serves TLS (docs/cas.md "HTTP API").
            raise UsageError(
                f"the CAS URL must be an https:// URL (got {url[:80]!r}): the CAS is authenticated by "
                f"TLS with the certificate in {ENV_CERT}"
            )
        if url.startswith("https://"):
            if cert is None:
                raise UsageError(
                    f"{ENV_CERT} is not set: the CAS certificate to trust is required (source the "
                    "client.env that 'confide cas serve' wrote, or set it to the file 'confide cas attest "
                    "--out PEM' wrote)"
                )
            # A file is read here (a regular file only, bounded), not handed to OpenSSL as a
            # cafile: a FIFO in its place would be waited on for ever.
            pem = cert if isinstance(cert, bytes) else read_cert_file(cert)
            certificate = _one_certificate(cert, pem)
            try:
                # The one certificate parsed, as DER: what OpenSSL trusts is exactly the
                # certificate whose key is pinned and signed for (cas_spki_sha256). Handing it
                # the file's text trusted what its own PEM reading found there: a second
                # certificate whose label holds a non-ASCII character (dropped before OpenSSL
                # read it) was no certificate to the parser above, but trusted by TLS.
                context = ssl.create_default_context(
                    cadata=certificate.public_bytes(serialization.Encoding.DER)
                )
            except (OSError, ssl.SSLError, ValueError) as exc:
                shown = "(pinned in memory)" if isinstance(cert, bytes) else cert
                raise UsageError(f"cannot load the CAS certificate {shown}: {exc}") from None
            context.minimum_version = ssl.TLSVersion.TLSv1_3
            if isinstance(cert, bytes):
                # Pinned by attestation (confide.cas.join): the exact certificate is the trust,
                # and the names it carries (the CAS's listen address) add nothing to it.
                context.check_hostname = False
            verify: ssl.SSLContext | bool = context
            self.cas_spki_sha256: str | None = spki_sha256(certificate)
        else:
            verify = False
            self.cas_spki_sha256 = None
        try:
            # No connection kept alive: each answer's deadline sees its connection made (its
            # head bounded too, confide.httpbody.fetch), for a TLS handshake per request.
            self.http = answer_client(base_url=self.url, verify=verify, timeout=timeout)
        except httpx2.InvalidURL as exc:  # a port that is not a number, a broken IPv6 address
            raise UsageError(f"the CAS URL {url[:80]!r} is not a valid URL: {exc}") from None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> CasClient:
        """A client of the CAS ``environ`` (default: this process's environment) names in
        :data:`ENV_URL`, trusting only the certificate in :data:`ENV_CERT`."""
        env = os.environ if environ is None else environ
        url = env.get(ENV_URL)
        if not url:
            raise UsageError(f"{ENV_URL} is not set: source the client.env that 'confide cas serve' wrote")
        cert = env.get(ENV_CERT)
        given = env.get(ENV_PIN) or ""  # unset or empty: no pin
        pin = given.strip().lower().encode()
        if given and not re.fullmatch(rb"[0-9a-f]{64}", pin):
            # A pin that cannot match is refused as such (a blank one would otherwise pin nothing,
            # a mistyped one be reported as another CAS's certificate).
            raise UsageError(
                f"{ENV_PIN}: got {given[:80]!r}, expected the SHA-256 of the CAS's key, 64 hex digits "
                "('confide cas attest' shows it as 'TLS key SHA-256')"
            )
        client = cls(url, Path(cert) if cert else None)
        if pin and not hmac.compare_digest((client.cas_spki_sha256 or "").encode(), pin):
            client.close()
            raise NetworkError(
                f"the CAS certificate in {ENV_CERT} is not the CAS this runtime is pinned to ({ENV_PIN}: "
                "set by an image converted with 'confide sconify --cas', or by you): its key's SHA-256 "
                "differs ('confide cas attest' shows a CAS's as 'TLS key SHA-256'); nothing was sent"
            )
        return client

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> CasClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, method: str, path: str, *, unknown: str | None = None, **kwargs: Any) -> Any:
        """The CAS's answer; ``unknown``: the error when the CAS does not know the route (404 or
        405 without an error object: a CAS older than the route)."""
        for attempt in range(RATE_LIMIT_RETRIES + 1):
            response = _fetch(self.http, self.url, method, path, **kwargs)
            if response.status_code != 429 or attempt == RATE_LIMIT_RETRIES:
                break
            self.sleep(_retry_after(response.headers.get("retry-after")))
        if unknown is not None and response.status_code in (404, 405) and b'"error"' not in response.content:
            raise NetworkError(unknown)
        return _raise_for(response)

    def apply(self, policy: Policy, identity: Identity) -> dict[str, str]:
        """Create or update ``policy``, signed by ``identity`` for the one CAS this client trusts
        (the SHA-256 of its certificate's key, as an approval names it)."""
        if self.cas_spki_sha256 is None:
            raise UsageError("submitting needs the CAS's certificate: a submission names the CAS's key")
        submission = policy_submission(policy, identity, cas=self.cas_spki_sha256)
        result: dict[str, str] = self._call("POST", "/v1/policies", json=submission)
        return result

    def approve(self, name: str, digest: str, identity: Identity) -> dict[str, str]:
        """A board member's signed approval of a pending version, for the one CAS this client
        trusts (the SHA-256 of its certificate's key, as a read request names it)."""
        if self.cas_spki_sha256 is None:
            raise UsageError("approving needs the CAS's certificate: an approval names the CAS's key")
        doc = sign_document(
            {"type": APPROVAL_TYPE, "name": name, "hash": digest, "cas": self.cas_spki_sha256},
            identity.sign,
            identity.public.public_base64,
        )
        result: dict[str, str] = self._call("POST", f"/v1/policies/{name}/approvals", json=doc)
        return result

    def read_nonce(self, name: str, route: str) -> str:
        """A single-use nonce for one read of policy ``name`` on ``route`` (docs/cas.md "Reading
        a policy")."""
        answer = self._call(
            "POST",
            READ_NONCE_PATH,
            json={"name": name, "route": route},
            unknown=f"the CAS issues no read nonces (POST {READ_NONCE_PATH}): it is older than this "
            f"client, which signs {READ_TYPE} read requests only; upgrade the CAS",
        )
        what = "the CAS's read nonce answer"
        return _answer.text(_answer.obj(answer, what), "nonce", what)

    def _read_header(self, name: str, identity: Identity, route: str) -> dict[str, str]:
        """A signed read request (docs/cas.md "Reading a policy") for the one CAS this client
        trusts (the SHA-256 of its certificate's key), for ``route``, over a nonce it asks that
        CAS for first (served once)."""
        if self.cas_spki_sha256 is None:
            raise UsageError("reading needs the CAS's certificate: a read request names the CAS's key")
        nonce = self.read_nonce(name, route)
        doc = sign_document(
            {"type": READ_TYPE, "name": name, "nonce": nonce, "cas": self.cas_spki_sha256, "route": route},
            identity.sign,
            identity.public.public_base64,
        )
        return {"X-Confide-Read": base64.b64encode(json.dumps(doc).encode()).decode()}

    def show(self, name: str, identity: Identity) -> dict[str, Any]:
        result: dict[str, Any] = self._call(
            "GET", f"/v1/policies/{name}", headers=self._read_header(name, identity, "show")
        )
        return result

    def readable(self, identity: Identity) -> list[str]:
        """The names of the policies ``identity`` may read at this CAS (a signed read, route
        ``list``: docs/cas.md "Reading a policy"); a CAS without the route is a NetworkError."""
        answer = self._call(
            "GET", READABLE_PATH, headers=self._read_header("", identity, "list"),
            unknown=f"the CAS does not list the policies an identity may read (GET {READABLE_PATH}): "
            "it is older than this client; name them with --policy",
        )  # fmt: skip
        from confide.policy._types import is_policy_name  # noqa: PLC0415 - as canonical_json above

        what = "the CAS's list of readable policies"
        names = _answer.obj(answer, what).get("policies")
        # Each a name a policy can have: it goes into a URL path and a state file next.
        if not isinstance(names, list) or not all(is_policy_name(n) for n in names):
            raise errors.ParseError("expected policies as a list of policy names", structure=what)
        if len(set(names)) != len(names):
            raise errors.ParseError("a policy named twice", structure=what)
        return list(names)

    def events(self, name: str, identity: Identity) -> dict[str, Any]:
        result: dict[str, Any] = self._call(
            "GET", f"/v1/policies/{name}/events", headers=self._read_header(name, identity, "events")
        )
        return result

    def crl(self, name: str, secret: str, identity: Identity | None, *, pem: bool = False) -> bytes:
        """The current CRL of the generated CA ``secret`` of policy ``name`` (DER, or PEM), read
        as ``identity`` (a reader of the policy) or, without one, as the public (a CA declared
        ``export_public``)."""
        headers = self._read_header(name, identity, "crl") if identity is not None else {}
        params = {"format": "pem"} if pem else {}
        response = _fetch(
            self.http, self.url, "GET", f"/v1/policies/{name}/crl/{secret}", headers=headers, params=params
        )
        if response.status_code >= 400:
            _raise_for(response)
        return response.content

    def revoke(
        self, name: str, secret: str, identity: Identity, *, reason: str, serial: str | None = None
    ) -> dict[str, Any]:
        """Revoke the certificate ``serial`` (hex) of secret ``secret`` of policy ``name``, or
        every valid one without ``serial``, for ``reason`` (RFC 5280 §5.3.1 name), at the one CAS
        this client trusts (the SHA-256 of its certificate's key)."""
        if self.cas_spki_sha256 is None:
            raise UsageError("revoking needs the CAS's certificate: a revocation request names the CAS's key")
        body: dict[str, Any] = {"type": REVOKE_TYPE, "name": name, "secret": secret, "reason": reason,
                                "time": int(time.time()), "cas": self.cas_spki_sha256}  # fmt: skip
        if serial is None:
            body["all_valid"] = True
        else:
            body["serial"] = serial
        doc = sign_document(body, identity.sign, identity.public.public_base64)
        result: dict[str, Any] = self._call("POST", f"/v1/policies/{name}/revocations", json=doc)
        return result

    def nonce(self) -> str:
        what = "the CAS's nonce answer"
        return _answer.text(_answer.obj(self._call("POST", "/v1/attest/nonce"), what), "nonce", what)

    def attest(self, request: dict[str, Any]) -> dict[str, Any]:
        result: dict[str, Any] = self._call("POST", "/v1/attest", json=request)
        return result

    def key_release_nonce(self) -> str:
        """A single-use nonce for a master-key release (docs/cas.md "Joining a running CAS")."""
        what = "the CAS's key-release nonce answer"
        return _answer.text(_answer.obj(self._call("POST", "/v1/cas/key-release/nonce"), what), "nonce", what)

    def successor(self) -> dict[str, Any]:
        """The successor board, the master key id and the approvals (:mod:`confide.cas.successor`)."""
        result: dict[str, Any] = self._call("GET", "/v1/cas/successor")
        return result

    def approve_successor(
        self,
        master_key_id: str,
        platform: str,
        claims: dict[str, str],
        expires: int,
        identity: Identity,
        *,
        generation: int = 0,
        retire: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        """Sign and submit an approval of a successor version (docs/cas.md "Handing over to a
        successor version"), under the board of ``generation``; ``retire``: the identity claims of
        the version it also approves retiring, the one that must hand the key over ("Retiring
        the old version")."""
        body: dict[str, Any] = {
            "type": SUCCESSOR_APPROVAL_TYPE, "master_key_id": master_key_id, "platform": platform,
            "claims": claims, "expires": expires,
            **({"generation": generation} if generation else {}),
            **({"retire": retire} if retire is not None else {}),
        }  # fmt: skip
        doc = sign_document(body, identity.sign, identity.public.public_base64)
        result: dict[str, Any] = self._call("POST", "/v1/cas/successor/approvals", json=doc)
        return result

    def withdraw_successor_approval(
        self, master_key_id: str, approval: str, identity: Identity, at: int | None = None
    ) -> dict[str, Any]:
        """Sign and submit the withdrawal of one's own successor approval, named by its digest
        (docs/cas.md "Withdrawing an approval"); ``at``: the signed time (default: now)."""
        body = {
            "type": SUCCESSOR_WITHDRAWAL_TYPE, "approval": approval, "master_key_id": master_key_id,
            "time": int(time.time()) if at is None else at,
        }  # fmt: skip
        doc = sign_document(body, identity.sign, identity.public.public_base64)
        result: dict[str, Any] = self._call("POST", "/v1/cas/successor/withdrawals", json=doc)
        return result

    def successor_board(self) -> dict[str, Any]:
        """The successor board, its generation and the pending board changes
        (:mod:`confide.cas.board_change`)."""
        result: dict[str, Any] = self._call("GET", "/v1/cas/successor/board")
        return result

    def approve_board_change(
        self, master_key_id: str, generation: int, board: dict[str, Any], expires: int, identity: Identity
    ) -> dict[str, Any]:
        """Sign and submit an approval of a change of the successor board to ``board`` (its JSON
        form), replacing the board of ``generation`` (docs/cas.md "Changing the successor board")."""
        body = {
            "type": SUCCESSOR_BOARD_CHANGE_TYPE, "master_key_id": master_key_id, "generation": generation,
            "board": board, "expires": expires,
        }  # fmt: skip
        doc = sign_document(body, identity.sign, identity.public.public_base64)
        result: dict[str, Any] = self._call("POST", "/v1/cas/successor/board/approvals", json=doc)
        return result

    def successor_retirements(self) -> dict[str, Any]:
        """The successor board, its generation, the pending retirements and the retired versions
        (:mod:`confide.cas.retirement`)."""
        result: dict[str, Any] = self._call("GET", "/v1/cas/successor/retirements")
        return result

    def approve_retirement(
        self,
        master_key_id: str,
        generation: int,
        platform: str,
        code: dict[str, str],
        expires: int,
        identity: Identity,
    ) -> dict[str, Any]:
        """Sign and submit an approval of retiring the version whose code identity claims are
        ``code``, under the board of ``generation`` (docs/cas.md "Retiring a version on its own")."""
        body = {
            "type": SUCCESSOR_RETIREMENT_TYPE, "master_key_id": master_key_id, "generation": generation,
            "platform": platform, "code": code, "expires": expires,
        }  # fmt: skip
        doc = sign_document(body, identity.sign, identity.public.public_base64)
        result: dict[str, Any] = self._call("POST", "/v1/cas/successor/retirements/approvals", json=doc)
        return result

    def key_release(self, request: dict[str, Any]) -> dict[str, Any]:
        """The master key, encrypted to the request's key (:mod:`confide.cas.key_release`)."""
        result: dict[str, Any] = self._call("POST", "/v1/cas/key-release", json=request)
        return result

    def report_volume_tag(
        self, policy: str, volume: str, session: str, old_tag: str, new_tag: str
    ) -> dict[str, Any]:
        body = {
            "policy": policy,
            "volume": volume,
            "session": session,
            "old_tag": old_tag,
            "new_tag": new_tag,
        }
        result: dict[str, Any] = self._call("POST", "/v1/volumes/tag", json=body)
        return result

    def cas_evidence(self) -> dict[str, Any]:
        result: dict[str, Any] = self._call("GET", "/v1/cas/evidence")
        return result
