"""``/metrics`` off the public API: a listener of its own, over HTTPS, and bearer tokens
(``--metrics-listen``, ``--metrics-cert``/``--metrics-key``, ``--metrics-token-file`` of
``confide cas serve``, ``confide ledger serve`` and ``confide ledger witness serve``; docs/cas.md
"Metrics: a listener of its own, tokens", docs/ledger.md "Metrics and refusals").

:class:`MetricsListenerApp` is the bare ASGI application of the metrics listener, served by
:func:`~confide.httpserve.server.plain_server` (HTTP/1.1, over TLS with a
:class:`~confide.httpserve.certreload.CertificateReloader` of ``--metrics-cert``, on the main
server's event loop, connections and request heads bounded by an
:class:`~confide.httpserve.limits.HttpLimits` of its own, :func:`listener_limits`): ``GET`` and
``HEAD`` of ``/metrics`` (a query string ignored), any other path an empty ``404``, any other
method ``405`` with ``Allow: GET, HEAD`` (RFC 9110 §15.5.6), a request with content ``413`` and
the connection closed (nothing reads a body there). It has no other route: nothing of the API
can be reached through it.

:class:`MetricsAuth` is the tokens of ``--metrics-token-file`` (a :class:`TokenSet`, read by
:func:`read_metrics_tokens`: one token a line, ``NAME:TOKEN`` or ``TOKEN``, ``#`` comments; kept
and reloaded by :class:`MetricsTokenFile` on ``SIGHUP`` and when polled, a bad file keeping the
tokens in use), required on whichever listener serves ``/metrics``: ``Authorization: Bearer
<token>`` (RFC 6750 §2.1), compared in constant time with every token (:meth:`TokenSet.match`:
:func:`hmac.compare_digest` of SHA-256 digests, all of them, no early exit); absent or wrong,
``401`` with ``WWW-Authenticate: Bearer ...`` (RFC 6750 §3), counted
(``confide_metrics_unauthorized_total{reason="missing"|"wrong"}``) and logged as a
rate-limited ``refused`` line (:class:`~confide.httpserve.ratelimit.RefusalLog`) naming the
client's address, never what it sent. An accepted scrape is counted by the scraper's name
(``confide_metrics_scrapes_total{scraper}``), its first one logged. No token is in a log
line, exception or metric. Each ``401`` takes a token from the client's bucket of failures
(:data:`FAILURE_RATE`, a :class:`~confide.httpserve.ratelimit.RateLimiter` keyed as the other
limiters key clients, bounded as they are): a client whose bucket is empty gets ``429`` with
``Retry-After`` without its token being checked (``reason="limited"``), so nothing guesses
tokens faster than that.

With ``--metrics-client-ca`` (only with ``--metrics-cert``) the listener's TLS handshake requires
a client certificate chaining to that bundle (the
:class:`~confide.httpserve.certreload.CertificateReloader`'s ``client_ca``, reloaded with the
certificate): a client without one, or with one the bundle does not vouch for, or an expired
one, gets no HTTP at all. :class:`ClientCertScrapers` names each scraper by its certificate
(subject and SHA-256 fingerprint: the first scrape of each logged, scrapes counted by them), and
answers ``403`` to a request that came without one (none does: the handshake refuses it first).
With a token file too, both are required.

With ``--metrics-client-allow`` (only with ``--metrics-client-ca``) a certificate that chains is
not enough: it must be on the allow-list (:func:`parse_client_allow_list`: one entry a line,
``sha256:HEX`` of the certificate's DER or its subject in RFC 4514 form; kept and reloaded by
:class:`MetricsClientAllowList`, a bad file keeping the list in use). Every request on a
connection whose certificate is not on it gets ``403`` (the handshake succeeded: the HTTP answer
says why), counted (``confide_metrics_client_cert_refused_total{reason="not_allowed"}``) and
logged as a rate-limited ``refused`` line naming the certificate's subject and SHA-256. With
``--metrics-client-crl`` the handshake also refuses a revoked certificate
(:mod:`~confide.httpserve.certreload`). A handshake that fails on the listener (no certificate,
another CA's, expired, revoked, ...) is counted by reason
(``confide_metrics_tls_handshake_failures_total{reason}``,
:data:`~confide.httpserve.limits.HANDSHAKE_FAILURES`) and logged as a rate-limited ``refused``
line (:func:`watch_handshakes`)."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import re
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, cast

from cryptography import x509
from prometheus_client import CONTENT_TYPE_LATEST
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from confide.errors import UsageError
from confide.fsutil import read_small_file
from confide.httpserve.certreload import CertificateReloader, FileReloader
from confide.httpserve.limits import CLIENT_CERT, HANDSHAKE_FAILURES, PUBLIC_MAX_HEAD, HttpLimits
from confide.httpserve.ratelimit import MAX_CLIENTS, Rate, RateLimiter, RefusalLog, client_key, retry_after

__all__ = [
    "CLIENT_CERT_REFUSALS",
    "FAILURE_RATE",
    "MAX_ALLOW_ENTRIES",
    "MAX_ALLOW_FILE",
    "MAX_CLIENT_CERTS",
    "MAX_TOKENS",
    "MAX_TOKEN_FILE",
    "METRICS_CLIENT_ALLOW_OPTION",
    "METRICS_CLIENT_CA_OPTION",
    "METRICS_CLIENT_CRL_OPTION",
    "METRICS_PATH",
    "METRICS_TLS_OPTIONS",
    "MIN_TOKEN",
    "ClientAllowList",
    "ClientCertScrapers",
    "MetricsAuth",
    "MetricsClientAllowList",
    "MetricsListenerApp",
    "MetricsTokenFile",
    "TokenSet",
    "client_allow_file",
    "limits_refused",
    "listener_limits",
    "metrics_files",
    "parse_client_allow_list",
    "parse_metrics_tokens",
    "read_client_allow_list",
    "read_metrics_tokens",
    "subject_string",
    "watch_handshakes",
]

METRICS_PATH = "/metrics"
METRICS_TLS_OPTIONS = ("--metrics-cert", "--metrics-key")
"""How errors name the metrics listener's certificate and key files."""
METRICS_CLIENT_CA_OPTION = "--metrics-client-ca"
METRICS_CLIENT_CRL_OPTION = "--metrics-client-crl"
METRICS_CLIENT_ALLOW_OPTION = "--metrics-client-allow"
MAX_ALLOW_FILE = 256 * 1024
MAX_ALLOW_ENTRIES = 4096
"""The most entries an allow-list file may hold."""
CLIENT_CERT_REFUSALS = ("not_allowed", "expired", "not_yet_valid", "unknown_ca", "crl", "revoked")
"""Why a request whose client certificate passed the handshake is refused
(``confide_metrics_client_cert_refused_total{reason}``, :class:`ClientCertScrapers`)."""
_MAX_LOGGED_SUBJECT = 512  # characters of a refused certificate's subject in its log line
MAX_CLIENT_CERTS = 256
"""The most client certificates counted apart (``confide_metrics_client_cert_scrapes_total``);
scrapes with others are counted together (``sha256="other"``)."""
MIN_TOKEN = 16
"""The shortest token accepted (bytes): a guessable one would be no access control."""
MAX_TOKEN_FILE = 64 * 1024
MAX_TOKENS = 256
"""The most tokens a token file may hold (each scrape is compared with all of them)."""
_NAME = re.compile(rb"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
"""A scraper's name in a token file (``NAME:TOKEN``)."""
FAILURE_RATE = Rate(5.0, 20.0)
"""Refused scrapes (``401``: no token, or a wrong one) a client may make a second, and at once,
before its scrapes get ``429`` without the token being checked: a scraper's typo shows in 20
refusals, a guesser gets 5 tries a second."""

Metric = CounterMetricFamily | GaugeMetricFamily
Response = tuple[int, list[tuple[bytes, bytes]], bytes]

_NO_STORE = (b"cache-control", b"no-store")
_ALLOW = b"GET, HEAD"
_NOSNIFF = b"nosniff"
_TEXT = b"text/plain; charset=utf-8"


def parse_metrics_tokens(data: bytes, where: str) -> TokenSet:
    """The tokens of a token file's bytes ``data`` (``where``: how errors name the file; module
    docstring): one a line, ``NAME:TOKEN`` or ``TOKEN`` (named ``line-N``), spaces, tabs and a
    carriage return around a line ignored, blank lines and ``#`` comments skipped. Each token
    at least :data:`MIN_TOKEN` bytes of printable ASCII other than a space (``0x21``-``0x7e``:
    what an ``Authorization`` header carries as it is); at most :data:`MAX_TOKENS`; no token
    and no name twice. A :class:`UsageError` otherwise, naming the file, the line and what is
    wrong, never a token."""
    names: dict[str, int] = {}
    digests: dict[bytes, int] = {}
    tokens: list[tuple[str, bytes]] = []
    for number, raw in enumerate(data.split(b"\n"), 1):
        line = raw.strip(b" \t\r")
        if not line or line.startswith(b"#"):
            continue
        head, colon, rest = line.partition(b":")
        if colon and _NAME.fullmatch(head):
            name, token = head.decode("ascii"), rest
        else:
            name, token = f"line-{number}", line
        at = f"{where}: line {number}"
        if len(token) < MIN_TOKEN:
            raise UsageError(f"{at}: the token has {len(token)} bytes, expected at least {MIN_TOKEN}")
        if any(b < 0x21 or b > 0x7E for b in token):
            raise UsageError(
                f"{at}: the token has a byte that is not printable ASCII (0x21-0x7e: no space, no"
                " control character)"
            )
        digest = hashlib.sha256(token).digest()
        if digest in digests:
            raise UsageError(f"{at}: the same token as line {digests[digest]} (a token per scraper)")
        if name in names:
            raise UsageError(f"{at}: the name {name!r} is line {names[name]}'s too")
        if len(tokens) == MAX_TOKENS:
            raise UsageError(f"{where}: more than {MAX_TOKENS} tokens")
        names[name], digests[digest] = number, number
        tokens.append((name, token))
    if not tokens:
        raise UsageError(f"{where}: no token in it (blank lines and # comments only)")
    return TokenSet.of(tokens)


def read_metrics_tokens(path: Path, option: str = "--metrics-token-file") -> TokenSet:
    """The tokens in the file ``path`` (read by :func:`~confide.fsutil.read_small_file`, at
    most :data:`MAX_TOKEN_FILE` bytes; :func:`parse_metrics_tokens`). A :class:`UsageError`
    otherwise, naming the file and what is wrong, never the file's content."""
    data = read_small_file(path, MAX_TOKEN_FILE, option)
    return parse_metrics_tokens(data, f"{option} {str(path)[:200]!r}")


class TokenSet:
    """The bearer tokens ``/metrics`` accepts, each with its scraper's name; only their SHA-256
    digests are kept. :meth:`match` compares what a scrape sent with every one of them."""

    __slots__ = ("_digests", "names")

    def __init__(self, names: tuple[str, ...], digests: tuple[bytes, ...]) -> None:
        if not names or len(names) != len(digests) or len(set(names)) != len(names):
            raise ValueError("a token set needs tokens, each with a name of its own")
        self.names, self._digests = names, digests

    @classmethod
    def of(cls, tokens: Sequence[tuple[str, bytes]]) -> TokenSet:
        """The set of ``(name, token)`` pairs; a ``ValueError`` for a token shorter than
        :data:`MIN_TOKEN` (never saying which)."""
        if any(len(token) < MIN_TOKEN for _, token in tokens):
            raise ValueError("a metrics token is too short")
        return cls(tuple(name for name, _ in tokens), tuple(hashlib.sha256(t).digest() for _, t in tokens))

    def __len__(self) -> int:
        return len(self.names)

    def __repr__(self) -> str:
        return f"TokenSet({', '.join(self.names)})"  # the names, never a token

    def match(self, sent: bytes) -> str | None:
        """The name of the token ``sent`` is (``None``: none). The SHA-256 digest of ``sent``
        is compared with every token's by :func:`hmac.compare_digest`, all of them, whichever
        matched: the time depends neither on what was sent, nor on which token it is, nor on
        where the first difference is."""
        digest = hashlib.sha256(sent).digest()
        found = -1
        for index, known in enumerate(self._digests):
            equal = hmac.compare_digest(digest, known)
            found = index if equal else found  # no early exit
        return self.names[found] if found >= 0 else None


class MetricsTokenFile(FileReloader[TokenSet]):
    """The tokens of ``--metrics-token-file`` (:func:`read_metrics_tokens`, which raises at
    construction: a server does not start with a bad file), read again on ``SIGHUP`` and, every
    ``poll_interval`` seconds, when the file changed (:class:`FileReloader`; log lines
    ``{"event": "metrics-token-reload", ...}`` naming the scrapers, never a token). A bad file
    keeps the tokens in use. Calling it returns the tokens in use."""

    event = "metrics-token-reload"

    def __init__(
        self,
        path: Path,
        *,
        poll_interval: float = 0.0,
        logger: str = "confide.ledger",
        option: str = "--metrics-token-file",
    ) -> None:
        self.path, self.option = Path(path), option
        super().__init__((self.path,), poll_interval=poll_interval, logger=logger, listener="metrics")

    def _load(self) -> TokenSet:
        return read_metrics_tokens(self.path, self.option)

    def _loaded_fields(self, loaded: TokenSet) -> dict[str, object]:
        return {"tokens": len(loaded), "scrapers": list(loaded.names)}

    def _in_use_fields(self) -> dict[str, object]:
        return {"tokens": len(self.loaded)}  # the ones still in use

    def __call__(self) -> TokenSet:
        return self.loaded

    def __repr__(self) -> str:
        return f"MetricsTokenFile({str(self.path)!r})"

    def collect(self) -> Iterator[Metric]:
        yield self.reloads_metric(
            "confide_metrics_token_reloads",
            "Reloads of --metrics-token-file, by result (failed: the tokens in use kept)",
        )
        yield GaugeMetricFamily(
            "confide_metrics_tokens", "Bearer tokens /metrics accepts (those in use)", value=len(self.loaded)
        )


_SHA256 = re.compile(r"(?:[0-9A-Fa-f]{64}|[0-9A-Fa-f]{2}(?::[0-9A-Fa-f]{2}){31})")


def subject_string(name: x509.Name) -> str:
    """``name`` in RFC 4514 form as :meth:`cryptography.x509.Name.rfc4514_string` gives it, but
    for the attributes of a multi-valued RDN, in the order of their renderings: a set, whose
    order cryptography gives as written (an allow-list line) or as sorted by DER (a
    certificate), so that ``CN=a+O=b`` and ``O=b+CN=a`` are one name."""
    return ",".join("+".join(sorted(a.rfc4514_string() for a in rdn)) for rdn in reversed(name.rdns))


class ClientAllowList:
    """The client certificates a metrics listener serves (``--metrics-client-allow``): by the
    SHA-256 fingerprint of their DER (``fingerprints``, lower-case hex) or by their subject
    (``subjects``, each in the form :func:`subject_string` gives: the
    subject of a certificate matches when it is that name exactly, attribute by attribute,
    values compared as written, case included)."""

    __slots__ = ("fingerprints", "subjects")

    def __init__(self, fingerprints: frozenset[str], subjects: frozenset[str]) -> None:
        self.fingerprints, self.subjects = fingerprints, subjects

    def __len__(self) -> int:
        return len(self.fingerprints) + len(self.subjects)

    def __repr__(self) -> str:
        return f"ClientAllowList({len(self.fingerprints)} fingerprints, {len(self.subjects)} subjects)"

    def allows(self, subject: str, sha256: str) -> bool:
        """Whether the certificate of ``subject`` (RFC 4514; "" when it could not be read: then
        only its fingerprint can match) and ``sha256`` (hex) is on the list."""
        return sha256.lower() in self.fingerprints or (subject != "" and subject in self.subjects)


def parse_client_allow_list(data: bytes, where: str) -> ClientAllowList:
    """The allow-list of a file's bytes ``data`` (``where``: how errors name the file): one entry
    a line, spaces, tabs and a carriage return around a line ignored, blank lines and ``#``
    comments skipped; an entry is ``sha256:`` and the certificate's SHA-256 fingerprint (64 hex
    digits, or 32 pairs separated by colons, as ``openssl x509 -fingerprint -sha256`` prints
    them; any case), or a subject distinguished name in RFC 4514 form (``CN=prometheus,O=Example``:
    the most specific attribute first, attribute types CN, L, ST, O, OU, C, STREET, DC, UID or a
    dotted OID, no space after a comma, special characters escaped with ``\\``). At least one
    entry, at most :data:`MAX_ALLOW_ENTRIES`, none twice. A :class:`UsageError` otherwise, naming
    the file, the line and what is wrong."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        where_bad = data[: exc.start].count(b"\n") + 1
        raise UsageError(f"{where}: line {where_bad}: not UTF-8") from None
    seen: dict[str, int] = {}
    fingerprints: set[str] = set()
    subjects: set[str] = set()
    for number, raw in enumerate(text.split("\n"), 1):
        line = raw.strip(" \t\r")
        if not line or line.startswith("#"):
            continue
        at = f"{where}: line {number}"
        if any(ord(c) < 0x20 or ord(c) == 0x7F for c in line):
            raise UsageError(f"{at}: a control character")
        if line[:7].lower() == "sha256:":
            digest = line[7:].strip(" \t")
            if not _SHA256.fullmatch(digest):
                raise UsageError(
                    f"{at}: not a SHA-256 fingerprint: expected sha256: and 64 hex digits (or 32 pairs"
                    " separated by colons)"
                )
            key = "sha256:" + digest.replace(":", "").lower()
        else:
            try:
                name = x509.Name.from_rfc4514_string(line)
            except ValueError:
                raise UsageError(
                    f"{at}: neither sha256:HEX nor a subject in RFC 4514 form (TYPE=value,...: types"
                    " CN, L, ST, O, OU, C, STREET, DC, UID or a dotted OID, upper case; no space"
                    " around = or after a comma; special characters escaped with a backslash)"
                ) from None
            if len(name) == 0:
                raise UsageError(f"{at}: an empty subject")
            key = "subject:" + subject_string(name)
        if key in seen:
            raise UsageError(f"{at}: the same entry as line {seen[key]}")
        if len(seen) == MAX_ALLOW_ENTRIES:
            raise UsageError(f"{where}: more than {MAX_ALLOW_ENTRIES} entries")
        seen[key] = number
        kind, _, value = key.partition(":")
        (fingerprints if kind == "sha256" else subjects).add(value)
    if not seen:
        raise UsageError(f"{where}: no entry in it (blank lines and # comments only)")
    return ClientAllowList(frozenset(fingerprints), frozenset(subjects))


def read_client_allow_list(path: Path, option: str = METRICS_CLIENT_ALLOW_OPTION) -> ClientAllowList:
    """The allow-list in the file ``path`` (read by :func:`~confide.fsutil.read_small_file`, at
    most :data:`MAX_ALLOW_FILE` bytes; :func:`parse_client_allow_list`)."""
    data = read_small_file(path, MAX_ALLOW_FILE, option)
    return parse_client_allow_list(data, f"{option} {str(path)[:200]!r}")


class MetricsClientAllowList(FileReloader[ClientAllowList]):
    """The allow-list of ``--metrics-client-allow`` (:func:`read_client_allow_list`, which raises
    at construction: a server does not start with a bad file), read again on ``SIGHUP`` and,
    every ``poll_interval`` seconds, when the file changed (:class:`FileReloader`; log lines
    ``{"event": "metrics-client-allow-reload", ...}``). A bad file keeps the list in use.
    Calling it returns the list in use. :meth:`check` judges a request's certificate; the
    refusals are logged on ``refusals`` (and counted by :class:`ClientCertScrapers`)."""

    event = "metrics-client-allow-reload"

    def __init__(
        self,
        path: Path,
        *,
        poll_interval: float = 0.0,
        logger: str = "confide.ledger",
        option: str = METRICS_CLIENT_ALLOW_OPTION,
    ) -> None:
        self.path, self.option = Path(path), option
        super().__init__((self.path,), poll_interval=poll_interval, logger=logger, listener="metrics")

    def _load(self) -> ClientAllowList:
        return read_client_allow_list(self.path, self.option)

    def _loaded_fields(self, loaded: ClientAllowList) -> dict[str, object]:
        return {"fingerprints": len(loaded.fingerprints), "subjects": len(loaded.subjects)}

    def _in_use_fields(self) -> dict[str, object]:
        return self._loaded_fields(self.loaded)  # the list still in use

    def __call__(self) -> ClientAllowList:
        return self.loaded

    def __repr__(self) -> str:
        return f"MetricsClientAllowList({str(self.path)!r})"

    def check(self, who: tuple[str, str], address: str, refusals: RefusalLog) -> Response | None:
        """``None`` when the certificate ``who`` (subject, SHA-256) is on the list in use; else
        the ``403`` to send (logged on ``refusals``)."""
        subject, sha256 = who
        if self.loaded.allows(subject, sha256):
            return None
        refusals.log(
            "metrics-client-cert-not-allowed", address, listener="metrics",
            client_cert_subject=subject[:_MAX_LOGGED_SUBJECT], client_cert_sha256=sha256,
        )  # fmt: skip
        return 403, [_NO_STORE, (b"content-type", _TEXT)], b"this client certificate is not allowed\n"

    def collect(self) -> Iterator[Metric]:
        yield self.reloads_metric(
            "confide_metrics_client_allow_reloads",
            "Reloads of --metrics-client-allow, by result (failed: the list in use kept)",
        )
        yield GaugeMetricFamily(
            "confide_metrics_client_allow_entries",
            "Entries of the client certificate allow-list in use (fingerprints and subjects)",
            value=len(self.loaded),
        )


def watch_handshakes(limits: HttpLimits, refusals: RefusalLog) -> None:
    """Count the failed TLS handshakes of the listener of ``limits`` by reason (exported by
    :meth:`MetricsListenerApp.collect`) and log each on ``refusals`` (``{"event": "refused",
    "reason": "metrics-tls-handshake", "cause": REASON, "detail": OpenSSL's words, "client":
    ADDRESS, "listener": "metrics"}``, rate-limited), but a connection closed during its
    handshake (counted only: a TCP probe, a port scan)."""

    def failed(reason: str, client: str, detail: str) -> None:
        if reason != "closed":
            refusals.log("metrics-tls-handshake", client, listener="metrics", cause=reason, detail=detail)

    limits.on_handshake_failure = failed


def metrics_files(
    listening: bool,
    token_file: Path | None,
    cert: Path | None,
    key: Path | None,
    *,
    poll_interval: float,
    logger: str,
    client_ca: Path | None = None,
    client_crl: Path | None = None,
) -> tuple[MetricsTokenFile | None, CertificateReloader | None]:
    """The metrics listener's files of ``--metrics-token-file`` and ``--metrics-cert``/
    ``--metrics-key`` (both or neither, only when ``listening``: a ``--metrics-listen`` is
    given), each read at once (a :class:`UsageError` for a bad one), to be reloaded on
    ``SIGHUP`` and polled every ``poll_interval`` seconds, logged on ``logger``.
    ``client_ca``: ``--metrics-client-ca``, only with the certificate, read and reloaded with it
    (the TLS handshake then requires a client certificate chaining to it); ``client_crl``:
    ``--metrics-client-crl``, only with ``client_ca``, read and reloaded with them (the
    handshake then refuses a revoked certificate). The allow-list, ``--metrics-client-allow``:
    :func:`client_allow_file`."""
    if (cert is None) != (key is None):
        raise UsageError("--metrics-cert and --metrics-key go together")
    if cert is not None and not listening:
        raise UsageError("--metrics-cert and --metrics-key need --metrics-listen (the listener they serve)")
    if client_ca is not None and cert is None:
        raise UsageError(
            f"{METRICS_CLIENT_CA_OPTION} needs --metrics-cert and --metrics-key (client certificates are"
            " asked for in the metrics listener's TLS handshake)"
        )
    if client_crl is not None and client_ca is None:
        raise UsageError(
            f"{METRICS_CLIENT_CRL_OPTION} needs {METRICS_CLIENT_CA_OPTION} (the CRLs are of its CAs)"
        )
    tokens = tls = None
    if token_file is not None:
        tokens = MetricsTokenFile(token_file, poll_interval=poll_interval, logger=logger)
    if cert is not None and key is not None:
        tls = CertificateReloader(
            cert, key, poll_interval=poll_interval, logger=logger, options=METRICS_TLS_OPTIONS,
            metric_prefix="confide_metrics_tls_certificate", listener="metrics",
            client_ca=client_ca, client_ca_option=METRICS_CLIENT_CA_OPTION,
            client_crl=client_crl, client_crl_option=METRICS_CLIENT_CRL_OPTION,
        )  # fmt: skip
    return tokens, tls


def client_allow_file(
    allow: Path | None, tls: CertificateReloader | None, *, poll_interval: float, logger: str
) -> MetricsClientAllowList | None:
    """The allow-list of ``--metrics-client-allow`` (``allow``; ``None``: none), only when the
    metrics listener requires client certificates (``tls`` with a client CA bundle), read at once
    (a :class:`UsageError` for a bad one), to be reloaded on ``SIGHUP`` and polled every
    ``poll_interval`` seconds."""
    if allow is None:
        return None
    if tls is None or tls.client_ca is None:
        raise UsageError(
            f"{METRICS_CLIENT_ALLOW_OPTION} needs {METRICS_CLIENT_CA_OPTION} (it lists client"
            " certificates the bundle's CAs issued)"
        )
    return MetricsClientAllowList(allow, poll_interval=poll_interval, logger=logger)


class MetricsAuth:
    """The bearer tokens ``/metrics`` requires (module docstring): ``tokens``, a fixed
    :class:`TokenSet` or a :class:`MetricsTokenFile` (asked for the tokens in use at each
    scrape); ``refusals``: where a refused scrape is logged (the server's
    :class:`~confide.httpserve.ratelimit.RefusalLog`); ``failures``: each client's bucket of
    refused scrapes (:data:`FAILURE_RATE`, at most ``max_clients`` clients, ``clock`` monotonic
    seconds); ``logger``: where a scraper's first accepted scrape (since the start, or since its
    token was reloaded) is logged at INFO. Counts and buckets change on the event loop's thread
    only."""

    def __init__(
        self,
        tokens: TokenSet | MetricsTokenFile,
        refusals: RefusalLog,
        *,
        failures: Rate = FAILURE_RATE,
        max_clients: int = MAX_CLIENTS,
        clock: Callable[[], float] = time.monotonic,
        logger: str = "confide.ledger",
    ) -> None:
        self.reloader = tokens if isinstance(tokens, MetricsTokenFile) else None
        self._fixed = tokens if isinstance(tokens, TokenSet) else None
        self.refusals = refusals
        self.failures = RateLimiter(failures, max_clients=max_clients, clock=clock)
        self.refused = {"missing": 0, "wrong": 0, "limited": 0}
        self.scrapes: dict[str, int] = {}  # accepted scrapes by scraper name
        self._log = logging.getLogger(logger)
        self._announced: tuple[TokenSet | None, set[str]] = (None, set())

    def __repr__(self) -> str:
        return "MetricsAuth(<tokens>)"  # never a token

    @property
    def tokens(self) -> TokenSet:
        """The tokens in use."""
        return self._fixed if self._fixed is not None else cast(MetricsTokenFile, self.reloader)()

    def refusal(self, scope: Any, listener: str) -> Response | None:
        """``None`` when ``scope`` carries one of the tokens; else the ``401`` to send, or the
        ``429`` when the client has used up its refused scrapes (counted and logged,
        ``listener`` naming where)."""
        return self.check(scope, listener)[0]

    def check(self, scope: Any, listener: str) -> tuple[Response | None, str | None]:
        """:meth:`refusal`, and the name of the scraper whose token ``scope`` carries (``None``
        when refused)."""
        client = scope.get("client")
        address = client_key(str(client[0])) if client else ""
        wait = self.failures.waiting(address)
        if wait > 0.0:  # the token is not even looked at
            self.refused["limited"] += 1
            self.refusals.log("metrics-unauthorized", address, listener=listener, cause="limited")
            headers = [(b"retry-after", retry_after(wait).encode()), _NO_STORE, (b"content-type", _TEXT)]
            return (429, headers, b"too many refused requests\n"), None
        given: list[bytes] = [value for name, value in scope.get("headers", ()) if name == b"authorization"]
        reason = "missing"
        if len(given) > 1:
            reason = "wrong"  # two Authorization headers: refused, as a wrong token
        elif given:
            scheme, _, credentials = given[0].strip().partition(b" ")
            if scheme.lower() == b"bearer":
                tokens = self.tokens
                scraper = tokens.match(credentials.strip(b" "))
                if scraper is not None:
                    self._accepted(tokens, scraper, address, listener)
                    return None, scraper
                reason = "wrong"
        self.refused[reason] += 1
        self.failures.take(address)
        self.refusals.log("metrics-unauthorized", address, listener=listener, cause=reason)
        challenge = b'Bearer realm="metrics"'
        if reason == "wrong":
            challenge += b', error="invalid_token"'
        headers = [(b"www-authenticate", challenge), _NO_STORE, (b"content-type", _TEXT)]
        return (401, headers, b"unauthorized\n"), None

    def _accepted(self, tokens: TokenSet, scraper: str, address: str, listener: str) -> None:
        self.scrapes[scraper] = self.scrapes.get(scraper, 0) + 1
        current, announced = self._announced
        if current is not tokens:  # a token file reloaded: each scraper's first use logged again
            announced = set()
            self._announced = tokens, announced
        if scraper not in announced:
            announced.add(scraper)
            line = {"event": "metrics-scraper", "scraper": scraper, "client": address, "listener": listener}
            self._log.info(json.dumps(line, sort_keys=True))

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(
            "confide_metrics_unauthorized",
            "Requests of /metrics refused (reason: 401 for no bearer token or a wrong one; limited:"
            " 429, the client's refused requests over their rate, its token not checked)",
            labels=["reason"],
        )
        for reason, n in sorted(self.refused.copy().items()):
            family.add_metric([reason], n)
        yield family
        scrapes = CounterMetricFamily(
            "confide_metrics_scrapes",
            "Requests of /metrics accepted, by the name of the scraper whose token they carried"
            " (the tokens in use: 0 for one not used yet)",
            labels=["scraper"],
        )
        counts = self.scrapes.copy()
        for name in self.tokens.names:
            scrapes.add_metric([name], counts.get(name, 0))
        yield scrapes
        if self.reloader is not None:
            yield from self.reloader.collect()


class ClientCertScrapers:
    """The scrapers of a metrics listener whose TLS handshake requires a client certificate
    (``--metrics-client-ca``), each named by its certificate: its subject (RFC 4514) and the
    SHA-256 fingerprint of its DER. :meth:`identify` gives them for a request's scope (``None``:
    it came without a certificate, which the handshake does not let happen); each certificate's
    first scrape is logged at INFO on ``logger`` (``{"event": "metrics-scraper",
    "client_cert_sha256": ..., "client_cert_subject": ...}``); scrapes are counted by them, at
    most :data:`MAX_CLIENT_CERTS` certificates apart. ``tls``: the listener's certificate
    reloader, by whose files in use (client CA bundle, CRLs) and clock :meth:`judge` judges the
    certificate again at each request of a connection (its handshake judged it by the files of
    then); the requests refused, here or by the allow-list, are counted by reason
    (:data:`CLIENT_CERT_REFUSALS`). Changed on the event loop's thread only."""

    def __init__(
        self,
        *,
        logger: str = "confide.ledger",
        max_certs: int = MAX_CLIENT_CERTS,
        tls: CertificateReloader | None = None,
    ) -> None:
        self._log = logging.getLogger(logger)
        self.max_certs = max_certs
        self.tls = tls
        self.refused: dict[str, int] = dict.fromkeys(CLIENT_CERT_REFUSALS, 0)
        self.scrapes: dict[tuple[str, str], int] = {}  # (subject, sha256) -> accepted scrapes
        self.other = 0  # scrapes with certificates past max_certs
        self._known: dict[bytes, tuple[str, str]] = {}  # DER -> (subject, sha256), bounded

    def __repr__(self) -> str:
        return f"ClientCertScrapers({len(self.scrapes)} certificates)"

    def identify(self, scope: Any) -> tuple[str, str] | None:
        """The subject and fingerprint of the client certificate of ``scope``'s connection."""
        der = scope.get(CLIENT_CERT)
        if not isinstance(der, bytes):
            return None
        known = self._known.get(der)
        if known is not None:
            return known
        sha256 = hashlib.sha256(der).hexdigest()
        try:
            subject = subject_string(x509.load_der_x509_certificate(der).subject)
        except ValueError:  # OpenSSL took it; a subject cryptography cannot render is named by hash only
            subject = ""
        if len(self._known) < self.max_certs:
            self._known[der] = subject, sha256
        return subject, sha256

    def judge(self, scope: Any, who: tuple[str, str], address: str, refusals: RefusalLog) -> Response | None:
        """``None`` when the certificate of ``scope``'s connection (``who``: :meth:`identify`)
        is still served by the files in use (:meth:`CertificateReloader.client_cert_refusal`:
        not expired, and with CRLs, still issued by a CA of the bundle, its CRL current, not
        revoked); else the ``403`` to send, closing the connection (a new one is judged by its
        handshake), counted and logged on ``refusals``."""
        der = scope.get(CLIENT_CERT)
        if self.tls is None or not isinstance(der, bytes):
            return None
        reason = self.tls.client_cert_refusal(der)
        if reason is None:
            return None
        self.refused[reason] += 1
        subject, sha256 = who
        refusals.log(
            "metrics-client-cert-refused", address, listener="metrics", cause=reason,
            client_cert_subject=subject[:_MAX_LOGGED_SUBJECT], client_cert_sha256=sha256,
        )  # fmt: skip
        body = f"this client certificate is no longer accepted ({reason})\n".encode()
        return 403, [_NO_STORE, (b"content-type", _TEXT), (b"connection", b"close")], body

    def not_allowed(self) -> None:
        """Count a request refused by the allow-list."""
        self.refused["not_allowed"] += 1

    def accepted(self, who: tuple[str, str], address: str) -> None:
        """Count a scrape of the certificate ``who`` (:meth:`identify`) from ``address``; log its
        first one."""
        if who in self.scrapes:
            self.scrapes[who] += 1
            return
        if len(self.scrapes) >= self.max_certs:
            self.other += 1
            return
        self.scrapes[who] = 1
        subject, sha256 = who
        line = {"event": "metrics-scraper", "client_cert_subject": subject, "client_cert_sha256": sha256,
                "client": address, "listener": "metrics"}  # fmt: skip
        self._log.info(json.dumps(line, sort_keys=True))

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(
            "confide_metrics_client_cert_scrapes",
            "Requests of /metrics accepted on the metrics listener, by the client certificate they"
            f" came with (subject, SHA-256 of its DER; past {self.max_certs} certificates, together"
            ' as sha256="other")',
            labels=["subject", "sha256"],
        )
        for (subject, sha256), n in sorted(self.scrapes.copy().items()):
            family.add_metric([subject, sha256], n)
        if self.other:
            family.add_metric(["", "other"], self.other)
        yield family
        refused = CounterMetricFamily(
            "confide_metrics_client_cert_refused",
            "Requests on the metrics listener refused 403 although their client certificate passed"
            " the handshake, by reason (not_allowed: not on --metrics-client-allow; expired,"
            " not_yet_valid, unknown_ca: its CA no longer in --metrics-client-ca, crl: no current"
            " CRL of its CA, revoked: judged again at each request of a kept-alive connection)",
            labels=["reason"],
        )
        for reason in CLIENT_CERT_REFUSALS:
            refused.add_metric([reason], self.refused.get(reason, 0))
        yield refused


def listener_limits(like: HttpLimits) -> HttpLimits:
    """A plain companion listener's limits (the metrics listener's, the CAS's public one's): the
    values of ``like`` (the API listener's), counted apart from them; request heads of at most
    :data:`~confide.httpserve.limits.PUBLIC_MAX_HEAD` bytes (neither needs a large header)."""
    return HttpLimits(
        max_connections=like.max_connections,
        max_connections_per_client=like.max_per_client,
        head_timeout=like.head_timeout,
        body_timeout=like.body_timeout,
        handshake_timeout=like.handshake_timeout,
        max_head=PUBLIC_MAX_HEAD,
        log_name=like.log_name,
    )


class MetricsListenerApp:
    """The ASGI application of the metrics listener (module docstring). ``render``: the
    server's metrics in the Prometheus text format (run in a worker thread); ``auth``: the
    token required (``None``: none); ``client_certs``: the listener's TLS requires client
    certificates, and they name the scrapers (``None``: none asked for); ``limits``: the
    listener's own (its counts exported by :meth:`collect`, its failed TLS handshakes too when
    watched, :func:`watch_handshakes`); ``logger``: where one JSON line per request goes at level
    INFO (``None``: no request lines, as the ledger's servers log none); ``allow``: the client
    certificates served (``--metrics-client-allow``; only with ``client_certs``), others
    refused ``403`` and logged on ``refusals``."""

    def __init__(
        self,
        render: Callable[[], bytes],
        *,
        auth: MetricsAuth | None,
        limits: HttpLimits,
        logger: str | None = None,
        client_certs: ClientCertScrapers | None = None,
        allow: MetricsClientAllowList | None = None,
        refusals: RefusalLog | None = None,
    ) -> None:
        if allow is not None and client_certs is None:
            raise ValueError("an allow-list of client certificates needs client certificates")
        self.render, self.auth, self.limits = render, auth, limits
        self.client_certs = client_certs
        self.allow = allow
        self.refusals = refusals if refusals is not None else RefusalLog(logger=logger or "confide.ledger")
        self._log = logging.getLogger(logger) if logger is not None else None
        self.responses: dict[int, int] = {}

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":  # lifespan is off; websockets never reach a plain HTTP/1.1 app
            return
        start = time.perf_counter()
        method = scope["method"]
        response: Response
        scraper: str | None = None
        cert = self.client_certs.identify(scope) if self.client_certs is not None else None
        client = scope.get("client")
        address = client_key(str(client[0])) if client else ""
        if self.client_certs is not None and cert is None:  # the handshake asks for one: never
            response = 403, [_NO_STORE, (b"content-type", _TEXT)], b"a client certificate is required\n"
        elif (
            cert is not None
            and self.client_certs is not None
            and (refused_cert := self.client_certs.judge(scope, cert, address, self.refusals))
        ):
            response = refused_cert
        elif (
            cert is not None
            and self.allow is not None
            and self.client_certs is not None
            and (not_allowed := self.allow.check(cert, address, self.refusals))
        ):
            self.client_certs.not_allowed()
            response = not_allowed
        elif method not in ("GET", "HEAD"):
            response = 405, [(b"allow", _ALLOW), _NO_STORE], b""
        elif _has_content(scope):
            response = 413, [(b"connection", b"close"), _NO_STORE], b""
        elif scope["path"] != METRICS_PATH:
            response = 404, [_NO_STORE], b""
        else:
            refused, scraper = self.auth.check(scope, "metrics") if self.auth is not None else (None, None)
            if refused is not None:
                response = refused
            else:
                if self.client_certs is not None and cert is not None:
                    self.client_certs.accepted(cert, address)
                body = await asyncio.to_thread(self.render)
                response = 200, [(b"content-type", CONTENT_TYPE_LATEST.encode()), _NO_STORE], body
        status, headers, body = response
        raw = [(b"content-length", str(len(body)).encode()), *headers, (b"x-content-type-options", _NOSNIFF)]
        await send({"type": "http.response.start", "status": status, "headers": raw})
        await send({"type": "http.response.body", "body": b"" if method == "HEAD" else body})
        self.responses[status] = self.responses.get(status, 0) + 1
        if self._log is not None and self._log.isEnabledFor(logging.INFO):
            route = METRICS_PATH if scope["path"] == METRICS_PATH else "unmatched"
            self._log.info(
                json.dumps(
                    {"event": "request", "listener": "metrics", "method": method[:16], "route": route,
                     "status": status, "scraper": scraper,
                     **({} if cert is None else {"client_cert_sha256": cert[1]}),
                     "ms": round((time.perf_counter() - start) * 1000, 2)}
                )
            )  # fmt: skip

    def collect(self) -> Iterator[Metric]:
        """The listener's answers by status, its open connections and what its limits refused."""
        responses = CounterMetricFamily(
            "confide_metrics_http_requests", "Requests answered by the metrics listener", labels=["status"]
        )
        for status, n in sorted(self.responses.copy().items()):
            responses.add_metric([str(status)], n)
        yield responses
        limits = self.limits
        yield GaugeMetricFamily(
            "confide_metrics_http_connections", "Connections open on the metrics listener", value=limits.open
        )
        yield limits_refused("confide_metrics_http_refused", "the metrics listener", limits)
        if limits.on_handshake_failure is not None:
            failures = CounterMetricFamily(
                "confide_metrics_tls_handshake_failures",
                "TLS handshakes of the metrics listener that failed, by reason (no_certificate,"
                " unknown_ca, expired, not_yet_valid, revoked, crl: no valid CRL of its issuer,"
                " bad_certificate: another check, peer_alert: the client refused the handshake,"
                " tls_version: no TLS version in common, TLS 1.3 only with client certificates,"
                " protocol, timeout, closed: the connection ended during it)",
                labels=["reason"],
            )
            counts = limits.handshake_failures.copy()
            for reason in HANDSHAKE_FAILURES:
                failures.add_metric([reason], counts.get(reason, 0))
            yield failures
        if self.client_certs is not None:
            yield from self.client_certs.collect()
        if self.allow is not None:
            yield from self.allow.collect()


def limits_refused(name: str, listener: str, limits: HttpLimits) -> CounterMetricFamily:
    """The counter family ``name`` of what a plain listener's ``limits`` refused, by reason
    (``listener``: how its help text names the listener)."""
    refused = CounterMetricFamily(
        name,
        f"Connections and requests {listener}'s limits refused (reason: total and per_ip"
        " connections, head_too_large 431, head_timeout 408 or close, pipeline_too_deep 503)",
        labels=["reason"],
    )
    refused.add_metric(["total"], limits.refused_total)
    refused.add_metric(["per_ip"], limits.refused_per_client)
    refused.add_metric(["head_too_large"], limits.head_too_large)
    refused.add_metric(["head_timeout"], limits.head_timeouts)
    refused.add_metric(["pipeline_too_deep"], limits.pipeline_too_deep)
    return refused


def _has_content(scope: Any) -> bool:
    """Whether the request carries content (RFC 9112 §6.3): a Transfer-Encoding, or a
    Content-Length other than 0."""
    for name, value in scope.get("headers", ()):
        if name == b"transfer-encoding" or (name == b"content-length" and value.strip().strip(b"0")):
            return True
    return False
