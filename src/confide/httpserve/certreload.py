"""A TLS certificate and key an operator gives a server (``--tls-cert``, ``--tls-key``; the
metrics listener's ``--metrics-cert``, ``--metrics-key``), reloaded without a restart: on
``SIGHUP``, and every ``--cert-reload-interval`` (``cas serve``: ``--metrics-reload-interval``)
seconds when the files changed (docs/ledger.md "Certificate reload"). :class:`FileReloader` is
that reload for any operator's files (the metrics token file's
:class:`~confide.httpserve.metrics_listener.MetricsTokenFile` too).

:func:`load_certificate_pair` reads both files once (each a regular file, at most
:data:`MAX_PEM_FILE` bytes, opened without blocking), parses the certificate chain and the key,
checks that the key is the first certificate's (the public keys compared in constant time), and
only then makes a new :class:`ssl.SSLContext` from those same bytes (through anonymous memory
files on Linux: the key is never written anywhere else); OpenSSL checks the pair again. Any
error is a :class:`~confide.errors.UsageError` naming the file and what is wrong, never its
content.

:class:`CertificateReloader` holds the context in use. Calling it returns that context: the
TLS protocol factory (:meth:`~confide.httpserve.limits.HttpLimits.tls_protocol`) asks it for
each new connection, so that a reload changes the certificate of new handshakes only;
connections already open keep the context (and the ``SSLObject``) they were made with.
:meth:`CertificateReloader.reload` swaps the context only after the new pair loaded and its
certificate is valid at the reloader's clock: a certificate already expired, or not yet valid,
is refused like a bad file (at start it is loaded whatever its dates, as before: there is no
other to keep). On any error the old one stays in use, a one-line JSON error is logged, a failure is counted
(``confide_tls_certificate_reloads_total{result="failed"}``) and the server goes on. A success
logs the new certificate's SHA-256 fingerprint and notAfter. The server
(:class:`~confide.httpserve.server.ServerWithCompanions`) calls it on ``SIGHUP`` and polls
:meth:`CertificateReloader.poll` (the files' device, inode, size and mtime, following
symlinks: a Kubernetes Secret volume is updated by swapping a symlink, with no signal). A
pair refused only because its certificate was not yet valid is tried again by the first poll
at or after its notBefore, although the files did not change.

With a ``client_ca`` file (``cas serve --metrics-client-ca``), the reloader's contexts require a
client certificate (mutual TLS, ``ssl.CERT_REQUIRED``) that chains to a certificate of that PEM
bundle (:func:`load_client_ca`; each certificate of it a trust anchor, an intermediate CA alone
is enough: ``VERIFY_X509_PARTIAL_CHAIN``); the bundle is one more of the reloader's files, read
with the pair on each reload: a bad bundle keeps the context in use (its certificate and its
client CAs) as a bad pair does. Such a context speaks TLS 1.3 only and sends no session ticket,
so that no session is ever resumed and every connection's certificate is judged by OpenSSL at
its own handshake (:func:`_requiring_client_certs`): one context per load, made where the
reload runs (at start, then in the reloader's worker thread), shared by every connection until
the next reload; nothing is made per connection.

With a ``client_crl`` file too (``--metrics-client-crl``: PEM or DER CRLs of the bundle's CAs,
:func:`load_client_crl`), each connection's client certificate is checked against them by
OpenSSL in the handshake (``VERIFY_CRL_CHECK_LEAF``, the CRLs loaded into the context): revoked,
refused; fail-closed: a certificate whose issuer has no CRL in the file, or whose CRL is past its
nextUpdate (or not yet valid), is refused too. Each CRL's signature is verified at load against
the certificate of the bundle that issued it (a CRL of no CA of the bundle, one without a
nextUpdate, a delta CRL, two of one CA: a :class:`~confide.errors.UsageError`); the file is read
with the pair and the bundle on each reload, a bad one keeping the context in use.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import re
import ssl
import tempfile
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Generic, TypeVar

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from confide.errors import UsageError
from confide.fsutil import read_regular

__all__ = [
    "MAX_PEM_FILE",
    "TLS_OPTIONS",
    "CertificateReloader",
    "ClientCrlEntry",
    "FileReloader",
    "LoadedCertificate",
    "LoadedClientCa",
    "LoadedClientCrl",
    "check_valid_at",
    "load_certificate_pair",
    "load_client_ca",
    "load_client_crl",
    "tls12_server_context",
]

MAX_PEM_FILE = 1 << 20
"""The largest certificate chain or key file read (bytes)."""

TLS_OPTIONS = ("--tls-cert", "--tls-key")
"""How errors name a server's certificate and key files (its API listener's)."""

T = TypeVar("T")

FileStamp = tuple[int, int, int, int] | None
"""A file's device, inode, size and mtime (ns), after symlinks; ``None`` when it cannot be stat'ed."""


def tls12_server_context() -> ssl.SSLContext:
    """An empty server-side context: TLS 1.2 or later."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx


@dataclass(frozen=True)
class LoadedClientCa:
    """The certificates of a client CA bundle (``--metrics-client-ca``), checked, as PEM text
    for :meth:`ssl.SSLContext.load_verify_locations`, and what the log says of them."""

    pem: str
    sha256: tuple[str, ...]  # of each certificate's DER, hex, in the file's order
    subjects: tuple[str, ...]  # RFC 4514
    not_after: datetime  # the earliest of them
    certificates: tuple[x509.Certificate, ...] = field(default=(), compare=False, repr=False)


@dataclass(frozen=True)
class LoadedClientCrl:
    """The CRLs of a client CRL file (``--metrics-client-crl``), checked, as PEM text for
    OpenSSL, and what the log and the metrics say of them."""

    pem: str
    issuers: tuple[str, ...]  # the SHA-256 of the bundle's certificate that signed each, hex
    issuer_subjects: tuple[str, ...]  # RFC 4514
    revoked: int  # revoked certificates, in all of them
    next_update: datetime  # the earliest
    by_issuer: dict[str, ClientCrlEntry] = field(default_factory=dict, compare=False, repr=False)
    """Each CRL by :attr:`issuers`: what a request on a connection whose handshake was judged
    by older CRLs is judged by (:meth:`CertificateReloader.client_cert_refusal`)."""


@dataclass(frozen=True)
class ClientCrlEntry:
    """One CA's CRL of a client CRL file: its dates, its CRL number (``None``: none) and the
    serial numbers it revokes."""

    this_update: datetime
    next_update: datetime
    number: int | None
    revoked: frozenset[int]


@dataclass(frozen=True)
class _ClientCertFacts:
    """What a client certificate is judged by at each request
    (:meth:`CertificateReloader.client_cert_refusal`)."""

    loaded: LoadedCertificate  # the files it was found with
    not_before: datetime
    not_after: datetime
    serial: int
    issuer: str | None  # the SHA-256 of the bundle's certificate that issued it (None: none)


@dataclass(frozen=True)
class LoadedCertificate:
    """A context loaded with a certificate chain and its key, and what the log says of it;
    ``client_ca``: the client CAs the context requires a client certificate of (``None``:
    none asked for)."""

    context: ssl.SSLContext
    sha256: str  # of the first (leaf) certificate's DER, hex
    not_after: datetime
    chain_length: int
    not_before: datetime
    client_ca: LoadedClientCa | None = None
    client_crl: LoadedClientCrl | None = None


def _read(path: Path, option: str) -> bytes:
    try:
        data = read_regular(path, MAX_PEM_FILE)
    except FileNotFoundError:
        raise UsageError(f"{option} {os.fspath(path)!r}: does not exist") from None
    except OSError as exc:
        raise UsageError(f"{option} {os.fspath(path)!r}: cannot read: {exc.strerror or exc}") from None
    if len(data) > MAX_PEM_FILE:
        raise UsageError(f"{option} {os.fspath(path)!r}: larger than {MAX_PEM_FILE} bytes")
    if not data.strip():
        raise UsageError(f"{option} {os.fspath(path)!r}: empty")
    return data


def _spki(public_key: object) -> bytes:
    return public_key.public_bytes(  # type: ignore[attr-defined, no-any-return]
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _load_chain(ctx: ssl.SSLContext, cert_pem: bytes, key_pem: bytes, cert: Path, key: Path) -> None:
    """Load the bytes already checked into ``ctx``: through two anonymous memory files where
    the platform has them (what was checked is what is loaded, and the key touches no disk),
    else from the paths (OpenSSL checks the pair again either way)."""
    memfd = getattr(os, "memfd_create", None)
    if memfd is None or not os.path.isdir("/proc/self/fd"):
        ctx.load_cert_chain(os.fspath(cert), os.fspath(key))
        return
    fds: list[int] = []
    try:
        for data in (cert_pem, key_pem):
            fd = memfd("confide-tls", os.MFD_CLOEXEC)
            fds.append(fd)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
        ctx.load_cert_chain(f"/proc/self/fd/{fds[0]}", f"/proc/self/fd/{fds[1]}")
    finally:
        for fd in fds:
            os.close(fd)


def check_valid_at(loaded: LoadedCertificate, at: datetime, cert: Path, option: str = TLS_OPTIONS[0]) -> None:
    """The first certificate's notBefore <= ``at`` <= notAfter (RFC 5280 §4.1.2.5: both ends
    included; ``at`` aware), else a :class:`UsageError` naming ``option``, ``cert`` and the dates. The
    other certificates of the chain are the clients' to judge: a chain may carry an expired
    cross-signature on purpose."""
    if at.tzinfo is None:
        raise ValueError("expected an aware time")  # a bug of the caller, not of the files
    when = at.astimezone(UTC).isoformat()
    if at < loaded.not_before:
        raise UsageError(
            f"{option} {os.fspath(cert)!r}: the certificate is not yet valid: notBefore"
            f" {loaded.not_before.isoformat()}, now {when}"
        )
    if at > loaded.not_after:
        raise UsageError(
            f"{option} {os.fspath(cert)!r}: the certificate has expired: notAfter"
            f" {loaded.not_after.isoformat()}, now {when}"
        )


def load_certificate_pair(
    cert: Path,
    key: Path,
    make_context: Callable[[], ssl.SSLContext] = tls12_server_context,
    options: tuple[str, str] = TLS_OPTIONS,
) -> LoadedCertificate:
    """``make_context()`` loaded with the PEM certificate chain in ``cert`` and its unencrypted
    PEM private key in ``key``, both parsed and checked to match first. A
    :class:`UsageError` (one line: the option, the file, what is wrong; ``options`` name the
    two files) otherwise. Its dates are not judged here (:func:`check_valid_at`)."""
    cert_opt, key_opt = options
    both = f"{cert_opt}/{key_opt}"
    cert_pem = _read(cert, cert_opt)
    key_pem = _read(key, key_opt)
    try:
        chain = x509.load_pem_x509_certificates(cert_pem)
    except ValueError:
        raise UsageError(
            f"{cert_opt} {os.fspath(cert)!r}: cannot load: not a PEM certificate chain (or an incomplete one)"
        ) from None
    # a chain cut short after a whole certificate (a file being written) parses as a shorter chain
    if (
        not cert_pem.count(b"-----BEGIN CERTIFICATE-----")
        == cert_pem.count(b"-----END CERTIFICATE-----")
        == len(chain)
    ):
        raise UsageError(f"{cert_opt} {os.fspath(cert)!r}: cannot load: an incomplete PEM certificate chain")
    try:
        private_key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise UsageError(
            f"{key_opt} {os.fspath(key)!r}: cannot load: not an unencrypted PEM private key "
            "(or an incomplete one)"
        ) from None
    leaf = chain[0]
    try:  # parsed lazily: an unknown algorithm, or a key that is not one (a point off its curve)
        leaf_key = leaf.public_key()
    except (ValueError, UnsupportedAlgorithm):
        raise UsageError(
            f"{cert_opt} {os.fspath(cert)!r}: cannot load: the first certificate's public key is not"
            " one this server can read"
        ) from None
    if not hmac.compare_digest(_spki(leaf_key), _spki(private_key.public_key())):
        raise UsageError(
            f"{both}: cannot load: the key in {os.fspath(key)!r} is not the key of the "
            f"first certificate in {os.fspath(cert)!r}"
        )
    ctx = make_context()
    try:
        _load_chain(ctx, cert_pem, key_pem, cert, key)
    except ssl.SSLError as exc:
        raise UsageError(
            f"{both}: cannot load {os.fspath(cert)!r} with {os.fspath(key)!r} "
            f"({exc.reason or 'rejected by OpenSSL'})"
        ) from None
    except OSError as exc:
        raise UsageError(f"{both}: cannot load: {exc.strerror or exc}") from None
    der = leaf.public_bytes(serialization.Encoding.DER)
    return LoadedCertificate(
        ctx, hashlib.sha256(der).hexdigest(), leaf.not_valid_after_utc, len(chain), leaf.not_valid_before_utc
    )


def load_client_ca(path: Path, option: str) -> LoadedClientCa:
    """The PEM certificates in ``path`` (a client CA bundle: at least one, each a whole
    ``CERTIFICATE`` block; read as the certificate files are, at most :data:`MAX_PEM_FILE`
    bytes), parsed, and checked by OpenSSL as trust anchors. A :class:`UsageError` (one line:
    ``option``, the file, what is wrong) otherwise. Their dates are not judged (OpenSSL judges
    each client's chain at its handshake)."""
    where = f"{option} {os.fspath(path)!r}"
    data = _read(path, option)
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError:
        raise UsageError(f"{where}: cannot load: not PEM certificates (or an incomplete one)") from None
    if (
        not data.count(b"-----BEGIN CERTIFICATE-----")
        == data.count(b"-----END CERTIFICATE-----")
        == len(certs)
    ):
        raise UsageError(f"{where}: cannot load: an incomplete PEM certificate")
    pem = "".join(c.public_bytes(serialization.Encoding.PEM).decode("ascii") for c in certs)
    try:  # what OpenSSL will be given: the same certificates, re-encoded
        tls12_server_context().load_verify_locations(cadata=pem)
    except ssl.SSLError as exc:
        raise UsageError(f"{where}: cannot load: {exc.reason or 'rejected by OpenSSL'}") from None
    try:
        subjects = tuple(c.subject.rfc4514_string() for c in certs)
    except ValueError:
        raise UsageError(f"{where}: cannot load: a certificate's subject cannot be read") from None
    return LoadedClientCa(
        pem,
        tuple(hashlib.sha256(c.public_bytes(serialization.Encoding.DER)).hexdigest() for c in certs),
        subjects,
        min(c.not_valid_after_utc for c in certs),
        tuple(certs),
    )


_PEM_BLOCK = re.compile(rb"-----BEGIN ([A-Z0-9 ]+)-----\r?\n(.*?)-----END \1-----", re.DOTALL)


def _crl_blocks(data: bytes, where: str) -> list[x509.CertificateRevocationList]:
    """The CRLs of ``data``: PEM ``X509 CRL`` blocks (all of them whole, nothing else), or one
    DER CRL."""
    if b"-----BEGIN" not in data:
        try:
            return [x509.load_der_x509_crl(data)]
        except ValueError:
            raise UsageError(f"{where}: cannot load: not a PEM or DER CRL") from None
    blocks = list(_PEM_BLOCK.finditer(data))
    if len(blocks) != data.count(b"-----BEGIN") or len(blocks) != data.count(b"-----END"):
        raise UsageError(f"{where}: cannot load: an incomplete PEM block")
    crls = []
    for number, block in enumerate(blocks, 1):
        if block.group(1) != b"X509 CRL":
            raise UsageError(f"{where}: PEM block {number} is not a CRL (an X509 CRL block)")
        try:
            crls.append(x509.load_pem_x509_crl(block.group(0)))
        except ValueError:
            raise UsageError(f"{where}: cannot load: PEM block {number} is not a CRL it can read") from None
    return crls


def load_client_crl(path: Path, option: str, ca: LoadedClientCa) -> LoadedClientCrl:
    """The CRLs in ``path`` (PEM ``X509 CRL`` blocks, or one DER CRL; read as the certificate
    files are), each issued by a certificate of the client CA bundle ``ca`` (its subject the
    CRL's issuer, its key verifying the CRL's signature, its key usage, when it has one, allowing
    CRL signing), with a nextUpdate, not a delta CRL, at most one per CA, applying to every
    client certificate of its CA (:func:`_check_crl_scope`); loaded by OpenSSL. A
    :class:`UsageError` (one line: ``option``, the file, what is wrong) otherwise. Their dates are
    not judged here: OpenSSL judges them at each handshake (past its nextUpdate, a CRL refuses
    its CA's clients)."""
    where = f"{option} {os.fspath(path)!r}"
    crls = _crl_blocks(_read(path, option), where)
    issuers: list[str] = []
    subjects: list[str] = []
    by_issuer: dict[str, ClientCrlEntry] = {}
    for position, crl in enumerate(crls, 1):
        at = f"{where}: CRL {position}"
        if crl.next_update_utc is None:
            raise UsageError(f"{at}: has no nextUpdate (a CRL must say until when it holds)")
        try:
            crl.extensions.get_extension_for_class(x509.DeltaCRLIndicator)
        except x509.ExtensionNotFound:
            pass
        except ValueError:
            raise UsageError(f"{at}: cannot load: an extension it cannot read") from None
        else:
            raise UsageError(f"{at}: a delta CRL (give complete CRLs only)")
        _check_crl_scope(crl, at)
        signer = None
        for index, cert in enumerate(ca.certificates):
            if cert.subject != crl.issuer:
                continue
            try:
                valid = crl.is_signature_valid(cert.public_key())  # type: ignore[arg-type]
            except (TypeError, ValueError, UnsupportedAlgorithm):
                valid = False
            if valid:
                signer = index
                break
        try:
            issuer = crl.issuer.rfc4514_string()[:200]
        except ValueError:
            issuer = "?"
        if signer is None:
            raise UsageError(
                f"{at}: not signed by a certificate of the client CA bundle (its issuer: {issuer!r})"
            )
        try:
            usage = ca.certificates[signer].extensions.get_extension_for_class(x509.KeyUsage).value
        except x509.ExtensionNotFound:
            usage = None
        if usage is not None and not usage.crl_sign:
            raise UsageError(f"{at}: its issuer {issuer!r} may not sign CRLs (its key usage has no cRLSign)")
        if ca.sha256[signer] in issuers:
            raise UsageError(f"{at}: a second CRL of {issuer!r} (one CRL per CA)")
        issuers.append(ca.sha256[signer])
        subjects.append(issuer)
        try:
            number: int | None = crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
        except x509.ExtensionNotFound:
            number = None
        assert crl.next_update_utc is not None  # checked above
        by_issuer[ca.sha256[signer]] = ClientCrlEntry(
            crl.last_update_utc, crl.next_update_utc, number, frozenset(r.serial_number for r in crl)
        )
    pem = "".join(c.public_bytes(serialization.Encoding.PEM).decode("ascii") for c in crls)
    try:  # what OpenSSL will be given: the same CRLs, re-encoded
        _load_crls(tls12_server_context(), pem)
    except ssl.SSLError as exc:
        raise UsageError(f"{where}: cannot load: {exc.reason or 'rejected by OpenSSL'}") from None
    return LoadedClientCrl(
        pem,
        tuple(issuers),
        tuple(subjects),
        sum(len(c) for c in crls),
        min(c.next_update_utc for c in crls if c.next_update_utc is not None),
        by_issuer,
    )


# Critical extensions OpenSSL acts on; any other critical one makes it refuse the CRL (and so,
# fail-closed, every client of its CA) at each handshake: refused at load instead, saying so.
_CRL_CRITICAL_OK = (x509.IssuingDistributionPoint, x509.AuthorityKeyIdentifier, x509.DeltaCRLIndicator)


def _check_crl_scope(crl: x509.CertificateRevocationList, at: str) -> None:
    """Refuse a CRL OpenSSL would not apply to every client certificate of its issuer: one with
    a critical extension it does not handle (on the CRL or an entry), an indirect CRL, one
    whose issuing distribution point restricts it to CA or attribute certificates or to some
    revocation reasons (OpenSSL would refuse every client of that CA, fail-closed, and say only
    "unable to get certificate CRL" at each handshake)."""
    try:
        extensions = list(crl.extensions)
    except ValueError:
        raise UsageError(f"{at}: cannot load: an extension it cannot read") from None
    for ext in extensions:
        if ext.critical and not isinstance(ext.value, _CRL_CRITICAL_OK):
            raise UsageError(f"{at}: a critical extension OpenSSL does not handle ({ext.oid.dotted_string})")
        if isinstance(ext.value, x509.IssuingDistributionPoint):
            idp = ext.value
            if idp.indirect_crl:
                raise UsageError(f"{at}: an indirect CRL (give each CA's own CRL)")
            if idp.only_contains_ca_certs or idp.only_contains_attribute_certs:
                raise UsageError(f"{at}: its issuing distribution point excludes end-entity certificates")
            if idp.only_some_reasons:
                raise UsageError(f"{at}: its issuing distribution point covers some revocation reasons only")
    try:
        for entry in crl:
            for ext in entry.extensions:
                if ext.critical and not isinstance(ext.value, x509.CertificateIssuer):
                    raise UsageError(
                        f"{at}: the entry of serial {entry.serial_number:x} has a critical extension"
                        f" OpenSSL does not handle ({ext.oid.dotted_string})"
                    )
                if isinstance(ext.value, x509.CertificateIssuer):
                    raise UsageError(f"{at}: an entry names another certificate issuer (an indirect CRL)")
    except ValueError:
        raise UsageError(f"{at}: cannot load: an entry it cannot read") from None


def _load_crls(ctx: ssl.SSLContext, pem: str) -> None:
    """Load the PEM CRLs ``pem`` into ``ctx``'s store: ``load_verify_locations(cadata=)`` takes
    certificates only, a file may hold CRLs; an anonymous memory file where the platform has
    one, else a temporary file (CRLs are public)."""
    data = pem.encode("ascii")
    memfd = getattr(os, "memfd_create", None)
    if memfd is not None and os.path.isdir("/proc/self/fd"):
        fd = memfd("confide-crl", os.MFD_CLOEXEC)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            ctx.load_verify_locations(cafile=f"/proc/self/fd/{fd}")
        finally:
            os.close(fd)
        return
    with tempfile.NamedTemporaryFile(prefix="confide-crl-", suffix=".pem") as tmp:
        tmp.write(data)
        tmp.flush()
        ctx.load_verify_locations(cafile=tmp.name)


def _requiring_client_certs(
    make_context: Callable[[], ssl.SSLContext],
    ca: LoadedClientCa,
    crl: LoadedClientCrl | None = None,
    option: str = "--client-ca",
) -> ssl.SSLContext:
    """``make_context()`` asking every client for a certificate chaining to ``ca`` and refusing
    the handshake without one, TLS 1.3 only, with no session tickets: no session is ever
    resumed, every connection's certificate is judged by OpenSSL at its own handshake (its
    chain, every certificate's dates, with ``crl`` its revocation), so one context serves every
    connection until the next reload. A resumed session carries the certificate of the handshake
    that made it, judged then: not its chain's dates again (an expired client CA's clients
    would be served by resuming, for the session's lifetime, hours), and OpenSSL's server cache
    of TLS 1.2 session ids, which ``OP_NO_TICKET`` leaves on, cannot be turned off from Python:
    hence no TLS 1.2 (a TLS 1.2-only client is refused in the handshake: ``tls_version``,
    :data:`~confide.httpserve.limits.HANDSHAKE_FAILURES`). With ``crl``: the client certificate
    is checked against it (``VERIFY_CRL_CHECK_LEAF``: a certificate whose issuer has no CRL
    there, or a CRL out of its dates, is refused). ``option`` names the bundle in the
    :class:`UsageError` of an OpenSSL without TLS 1.3."""
    if not ssl.HAS_TLSv1_3:
        raise UsageError(f"{option}: needs TLS 1.3, which this Python's OpenSSL does not have")
    ctx = make_context()
    if ctx.maximum_version not in (ssl.TLSVersion.MAXIMUM_SUPPORTED, ssl.TLSVersion.TLSv1_3):
        raise ValueError("a context requiring client certificates must allow TLS 1.3")  # a caller's bug
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN  # any certificate of the bundle an anchor
    ctx.load_verify_locations(cadata=ca.pem)
    if crl is not None:
        _load_crls(ctx, crl.pem)
        ctx.verify_flags |= ssl.VERIFY_CRL_CHECK_LEAF
    ctx.num_tickets = 0
    ctx.options |= ssl.OP_NO_TICKET
    return ctx


_MAX_CLIENT_FACTS = 256  # client certificates whose facts are kept (then forgotten, all at once)


def _client_cert_facts(der: bytes, loaded: LoadedCertificate) -> _ClientCertFacts:
    """The dates, serial number and (with client CRLs) issuer in ``loaded``'s client CA bundle
    (its subject the certificate's issuer, its key verifying the certificate's signature) of the
    client certificate ``der``. One cryptography cannot read (OpenSSL took it): refused as
    expired."""
    try:
        cert = x509.load_der_x509_certificate(der)
        not_before, not_after = cert.not_valid_before_utc, cert.not_valid_after_utc
    except ValueError:
        epoch = datetime.fromtimestamp(0, UTC)
        return _ClientCertFacts(loaded, epoch, epoch, -1, None)
    issuer = None
    ca = loaded.client_ca if loaded.client_crl is not None else None  # asked for with CRLs only
    for index, candidate in enumerate(ca.certificates if ca is not None else ()):
        try:
            cert.verify_directly_issued_by(candidate)
        except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
            continue
        assert ca is not None
        issuer = ca.sha256[index]
        break
    return _ClientCertFacts(loaded, not_before, not_after, cert.serial_number, issuer)


def _stamp(path: Path) -> FileStamp:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns


class FileReloader(Generic[T]):
    """What an operator's files hold (:meth:`_load`, which raises a :class:`UsageError` at
    construction: a server does not start with bad files), reloadable: :meth:`reload` on
    ``SIGHUP``, :meth:`poll` every ``poll_interval`` seconds (0: only on ``SIGHUP``), which
    reloads when one of ``paths`` changed (device, inode, size, mtime, after symlinks).
    ``loaded`` is swapped by one attribute assignment, only after the new files loaded; on any
    error the old value stays, a one-line JSON error is logged at WARNING (``{"event":
    self.event, "result": "failed", ...}``, the error's message: it never holds the files'
    content) and the failure is counted (``failed``); a success is logged at INFO and counted
    (``reloaded``). ``listener``: named in the log lines (``None``: not). Reloads are
    serialized (they run in worker threads)."""

    event = "reload"

    def __init__(
        self, paths: Sequence[Path], *, poll_interval: float, logger: str, listener: str | None = None
    ) -> None:
        self.paths = tuple(Path(p) for p in paths)
        self.poll_interval = poll_interval
        self.listener = listener
        self._log = logging.getLogger(logger)
        self._lock = threading.Lock()
        stamps = self._stamps()
        self.loaded: T = self._load()
        self._stamps_seen = stamps  # the files as they were when last read (reloaded or not)
        self.reloaded = 0
        self.failed = 0

    def _load(self) -> T:
        raise NotImplementedError

    def _loaded_fields(self, loaded: T) -> dict[str, object]:
        """What a success's log line says of the new value."""
        raise NotImplementedError

    def _in_use_fields(self) -> dict[str, object]:
        """What a failure's log line says of the value still in use."""
        raise NotImplementedError

    def _check_reloaded(self, loaded: T) -> None:
        """Judge what a reload loaded (a :class:`UsageError` keeps the old value); not asked at
        construction. Nothing by default."""

    def _due(self) -> bool:
        """Whether :meth:`poll` reloads although no file changed. Never by default."""
        return False

    def _stamps(self) -> tuple[FileStamp, ...]:
        return tuple(_stamp(path) for path in self.paths)

    def _line(self, result: str, trigger: str, fields: dict[str, object]) -> str:
        line: dict[str, object] = {"event": self.event, "result": result, "trigger": trigger, **fields}
        if self.listener is not None:
            line["listener"] = self.listener
        return json.dumps(line, sort_keys=True)

    def reload(self, trigger: str = "SIGHUP") -> bool:
        """Read the files again; swap what is in use when they load, keep it otherwise.
        Whether the new files are in use."""
        with self._lock:
            stamps = self._stamps()  # before reading: a change while reading is seen next time
            try:
                loaded = self._load()
                self._check_reloaded(loaded)
            except UsageError as exc:
                self._stamps_seen = stamps
                self.failed += 1
                self._log.warning(self._line("failed", trigger, {"error": str(exc), **self._in_use_fields()}))
                return False
            self.loaded = loaded
            self._stamps_seen = stamps
            self.reloaded += 1
        self._log.info(self._line("ok", trigger, self._loaded_fields(loaded)))
        return True

    def reloads_metric(self, name: str, documentation: str) -> CounterMetricFamily:
        """The counter ``name`` of this reloader's reloads by ``result`` (``ok``, ``failed``)."""
        reloads = CounterMetricFamily(name, documentation, labels=["result"])
        reloads.add_metric(["ok"], self.reloaded)
        reloads.add_metric(["failed"], self.failed)
        return reloads

    def poll(self) -> bool | None:
        """Reload if a file changed since it was last read, or when :meth:`_due` (``None``:
        nothing to do)."""
        if self._stamps() == self._stamps_seen and not self._due():
            return None
        return self.reload("poll")


class CertificateReloader(FileReloader[LoadedCertificate]):
    """The certificate and key of ``cert`` and ``key`` (:func:`load_certificate_pair`, which
    raises at construction: a server does not start with a bad pair), reloadable
    (:class:`FileReloader`; log lines ``{"event": "tls-reload", ...}``). ``poll_interval``:
    seconds between looks at the files (``--cert-reload-interval``; 0: only on ``SIGHUP``).
    ``options``: how errors name the two files; ``metric_prefix``: the start of the names of
    its metrics (:meth:`collect`: a server's second listener with certificates of its own, the
    metrics listener's, exports them under a name of its own). ``clock``: the time a reloaded
    certificate must be valid at (aware; the wall clock by default; not asked at construction,
    where the pair is loaded whatever its dates). A pair refused only as not yet valid is tried
    again by the first :meth:`poll` at or after its notBefore, although the files did not
    change. ``client_ca``: a client CA bundle (:func:`load_client_ca`, errors naming
    ``client_ca_option``) the contexts require a client certificate of, read and reloaded with
    the pair (module docstring)."""

    event = "tls-reload"

    def __init__(
        self,
        cert: Path,
        key: Path,
        *,
        poll_interval: float = 0.0,
        make_context: Callable[[], ssl.SSLContext] = tls12_server_context,
        logger: str = "confide.ledger",
        options: tuple[str, str] = TLS_OPTIONS,
        metric_prefix: str = "confide_tls_certificate",
        listener: str | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        client_ca: Path | None = None,
        client_ca_option: str = "--client-ca",
        client_crl: Path | None = None,
        client_crl_option: str = "--client-crl",
    ) -> None:
        self.cert, self.key = Path(cert), Path(key)
        self.client_ca = Path(client_ca) if client_ca is not None else None
        self.client_ca_option = client_ca_option
        if client_crl is not None and client_ca is None:
            raise ValueError("client CRLs need a client CA bundle")  # the CLI says so first
        self.client_crl = Path(client_crl) if client_crl is not None else None
        self.client_crl_option = client_crl_option
        self._make_context = make_context
        self.options = options
        self.metric_prefix = metric_prefix
        self._clock = clock
        self._retry_at: datetime | None = None  # the notBefore of a pair refused as not yet valid
        self._client_facts: dict[bytes, _ClientCertFacts] = {}  # client certificate DER -> facts
        paths = (self.cert, self.key) if self.client_ca is None else (self.cert, self.key, self.client_ca)
        if self.client_crl is not None:
            paths = (*paths, self.client_crl)
        super().__init__(paths, poll_interval=poll_interval, logger=logger, listener=listener)

    def _load(self) -> LoadedCertificate:
        self._retry_at = None  # files that do not load are not tried again until they change
        if self.client_ca is None:
            return load_certificate_pair(self.cert, self.key, self._make_context, self.options)
        ca = load_client_ca(self.client_ca, self.client_ca_option)
        crl = None
        if self.client_crl is not None:
            crl = load_client_crl(self.client_crl, self.client_crl_option, ca)
        make, option = self._make_context, self.client_ca_option
        loaded = load_certificate_pair(
            self.cert, self.key, lambda: _requiring_client_certs(make, ca, crl, option), self.options
        )
        return replace(loaded, client_ca=ca, client_crl=crl)

    def _check_reloaded(self, loaded: LoadedCertificate) -> None:
        """A reloaded certificate must be valid now (``clock``); one not yet valid is tried
        again at its notBefore."""
        now = self._clock()
        if now < loaded.not_before:  # the same files are tried again then
            self._retry_at = loaded.not_before
        check_valid_at(loaded, now, self.cert, self.options[0])
        old, new = self.loaded.client_crl, loaded.client_crl
        if old is not None and new is not None:
            for issuer, crl in new.by_issuer.items():
                in_use = old.by_issuer.get(issuer)
                if in_use is None:
                    continue
                older = crl.this_update < in_use.this_update or (
                    crl.number is not None and in_use.number is not None and crl.number < in_use.number
                )
                if older:
                    subject = new.issuer_subjects[new.issuers.index(issuer)]
                    raise UsageError(
                        f"{self.client_crl_option} {os.fspath(self.client_crl or '')!r}: the CRL of"
                        f" {subject!r} is older than the one in use (thisUpdate"
                        f" {crl.this_update.isoformat()}, CRL number {crl.number}; in use:"
                        f" {in_use.this_update.isoformat()}, {in_use.number})"
                    )

    def client_cert_refusal(self, der: bytes) -> str | None:
        """Why a request on a connection whose client certificate (``der``) passed its handshake
        is refused now, by the files in use and the ``clock``: ``expired``, ``not_yet_valid``;
        with client CRLs, ``unknown_ca`` (no certificate of the bundle issued it any more),
        ``crl`` (no CRL of its issuer, or one out of its dates) or ``revoked``. ``None``: served.
        A kept-alive connection's certificate is judged again at each request: a reload that
        revokes it, or the CRL's nextUpdate passing, ends what its handshake allowed."""
        loaded = self.loaded
        facts = self._client_facts.get(der)
        if facts is None or facts.loaded is not loaded:
            facts = _client_cert_facts(der, loaded)
            if len(self._client_facts) >= _MAX_CLIENT_FACTS:
                self._client_facts.clear()
            self._client_facts[der] = facts
        now = self._clock()
        if now > facts.not_after:
            return "expired"
        if now < facts.not_before:
            return "not_yet_valid"
        crls = loaded.client_crl
        if crls is None:
            return None
        if facts.issuer is None:
            return "unknown_ca"
        crl = crls.by_issuer.get(facts.issuer)
        if crl is None or not crl.this_update <= now <= crl.next_update:
            return "crl"
        return "revoked" if facts.serial in crl.revoked else None

    def _due(self) -> bool:
        return self._retry_at is not None and self._clock() >= self._retry_at

    def _loaded_fields(self, loaded: LoadedCertificate) -> dict[str, object]:
        fields: dict[str, object] = {
            "certificate_sha256": loaded.sha256,
            "not_after": loaded.not_after.isoformat(),
            "chain_length": loaded.chain_length,
        }
        if loaded.client_ca is not None:
            fields["client_ca_sha256"] = list(loaded.client_ca.sha256)
            fields["client_ca_subjects"] = list(loaded.client_ca.subjects)
        if loaded.client_crl is not None:
            fields["client_crl_issuers"] = list(loaded.client_crl.issuer_subjects)
            fields["client_crl_revoked"] = loaded.client_crl.revoked
            fields["client_crl_next_update"] = loaded.client_crl.next_update.isoformat()
        return fields

    def _in_use_fields(self) -> dict[str, object]:
        fields: dict[str, object] = {"certificate_sha256": self.loaded.sha256}  # the one still in use
        if self.loaded.client_ca is not None:
            fields["client_ca_sha256"] = list(self.loaded.client_ca.sha256)
        if self.loaded.client_crl is not None:
            fields["client_crl_next_update"] = self.loaded.client_crl.next_update.isoformat()
        return fields

    @property
    def context(self) -> ssl.SSLContext:
        return self.loaded.context

    def __call__(self) -> ssl.SSLContext:
        """The context for a new connection: the one of the files in use (made when they were
        loaded; with a client CA bundle too: no session is resumed there, TLS 1.3 only and no
        tickets, :func:`_requiring_client_certs`)."""
        return self.loaded.context

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        """``<metric_prefix>_reloads_total{result}`` and ``<metric_prefix>_not_after_seconds``
        (of the certificate in use)."""
        of = "" if self.listener is None else f" of the {self.listener} listener"
        yield self.reloads_metric(
            f"{self.metric_prefix}_reloads", f"Reloads of the TLS certificate and key{of}, by result"
        )
        yield GaugeMetricFamily(
            f"{self.metric_prefix}_not_after_seconds",
            f"notAfter of the TLS certificate{of} in use (Unix time)",
            value=self.loaded.not_after.timestamp(),
        )
        ca = self.loaded.client_ca
        if ca is not None:
            yield GaugeMetricFamily(
                f"{self.metric_prefix}_client_ca_certificates",
                f"Certificates of the client CA bundle{of} in use (a client certificate must chain to one)",
                value=len(ca.sha256),
            )
            yield GaugeMetricFamily(
                f"{self.metric_prefix}_client_ca_not_after_seconds",
                f"The earliest notAfter of the client CA bundle{of} in use (Unix time)",
                value=ca.not_after.timestamp(),
            )
        crl = self.loaded.client_crl
        if crl is not None:
            yield GaugeMetricFamily(
                f"{self.metric_prefix}_client_crl_next_update_seconds",
                f"The earliest nextUpdate of the client CRLs{of} in use (Unix time; past it, that"
                " CA's clients are refused until a newer CRL is loaded)",
                value=crl.next_update.timestamp(),
            )
            yield GaugeMetricFamily(
                f"{self.metric_prefix}_client_crl_revoked",
                f"Certificates revoked by the client CRLs{of} in use",
                value=crl.revoked,
            )
