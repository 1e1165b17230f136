"""``confide ledger``: audit a ledger, manage keys, sign checkpoints, run a witness.

Exit codes are those of :mod:`confide.errors`: 0 verified, 21 bad signature, 65 checkpoint
not signed by the pinned key, 61 fork (inconsistent), 60 rollback, 63 entry mismatch,
64 entry missing, 10 malformed input, 40 network, 50 storage.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import signal
import sys
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import click

from confide.errors import AccessDeniedError, ConfideError, UsageError
from confide.fsutil import new_file_error, read_small_file, write_new
from confide.httpbody import answer_client
from confide.httpserve.certreload import CertificateReloader
from confide.httpserve.limits import (
    HANDSHAKE_TIMEOUT,
    HEAD_TIMEOUT,
    MAX_CONNECTIONS,
    MAX_CONNECTIONS_PER_CLIENT,
    HttpLimits,
)
from confide.httpserve.metrics_listener import client_allow_file, metrics_files
from confide.httpserve.options import reload_interval
from confide.httpserve.ratelimit import Rate, parse_rate
from confide.httpserve.server import reserve_descriptors
from confide.ledger.auditor import (
    COSIGN_WAIT,
    CosignWait,
    LocalLogClient,
    LogClient,
    LogVerification,
    ViewUpdate,
    log_verifier,
    verify_log,
    witness_verifier,
)
from confide.ledger.freshness import Freshness, freshness_for
from confide.ledger.http import (
    LEDGER_BODY_TIMEOUT,
    TILES_RATE,
    WITNESS_RATE,
    HttpLogClient,
    LedgerHTTPServer,
    TilesServer,
    client_tls_context,
    ledger_limits,
)
from confide.ledger.note import SIG_TYPE_COSIGNATURE_V1, SIG_TYPE_ED25519, NoteSigner, NoteVerifier
from confide.ledger.store import Ledger, connect
from confide.ledger.witness import MAX_REQUEST_SIZE, Witness, parse_add_checkpoint
from confide.ledger.witness_http import WitnessServer, request_cosignatures
from confide.termsafe import printable, printable_lines

__all__ = ["ledger"]

_PATH = click.Path(path_type=Path)


def _fail(exc: ConfideError) -> None:
    click.echo(f"error: {printable_lines(exc.diagnostics())}", err=True)
    sys.exit(exc.exit_code)


MAX_KEY_FILE = 64 * 1024
"""The largest key file read (bytes): a note key is a line of about 100 characters."""


def _read_key_text(value: str, what: str) -> str:
    """A key given inline or as a path to a file holding it (a regular file, bounded, opened
    without blocking: :func:`confide.fsutil.read_small_file`)."""
    path = Path(value)
    if "+" not in value or path.is_file():
        data = read_small_file(path, MAX_KEY_FILE, f"{what} file")
        try:
            return data.decode("utf-8").strip()
        except UnicodeDecodeError:
            raise UsageError(f"{what}: {value!r} is not UTF-8 text (a key file holds one line)") from None
    return value.strip()


def _witness_key(value: str) -> NoteVerifier:
    return witness_verifier(_read_key_text(value, "--witness"))


_witness_option = click.option(
    "--witness", "witness_keys", multiple=True, metavar="VKEY", help="Require this witness's cosignature."
)


def _witness_wait_value(_ctx: click.Context, _param: click.Parameter, value: str | None) -> float | None:
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        seconds = math.nan
    if not math.isfinite(seconds) or not 0 <= seconds <= 60:
        raise click.BadParameter(f"got {value[:40]!r}, expected a number of seconds from 0 to 60")
    return seconds


_witness_wait_option = click.option(
    "--witness-wait",
    "witness_wait",
    metavar="SECONDS",
    callback=_witness_wait_value,
    help=f"With --witness: read the log again for up to this long (0 to 60; default {COSIGN_WAIT:g})"
    " while its newest checkpoint lacks a required cosignature (a growing log's newest checkpoint is"
    " cosigned a round trip after it is signed); then exit 65.",
)
_max_age_option = click.option(
    "--max-age",
    "max_age",
    metavar="DURATION",
    help="With --witness: each witness's cosignature must be at most this old (e.g. '1h', '30 minutes';"
    " 1 minute to 366 days), and none dated more than 60 s ahead: else exit 69 (a frozen log).",
)


@click.group("ledger")
def ledger() -> None:
    """Transparency ledger: audit, keys, checkpoints."""


@ledger.command("verify")
@click.option("--log-db", type=_PATH, help="Ledger database (SQLite) to audit.")
@click.option(
    "--url",
    help="Or: the log's tlog-tiles prefix (http(s)://host/prefix; default without --log-db: "
    "$CONFIDE_LOG_URL from client.env).",
)
@click.option("--state", type=_PATH, help="Auditor state file: the last verified checkpoint.")
@click.option(
    "--key",
    "key",
    metavar="VKEY",
    help="Pinned log key (name+hash+base64) or a file (default: $CONFIDE_LOG_KEY from client.env).",
)
@click.option(
    "--full",
    is_flag=True,
    help="Also recompute the tree from every leaf hash and check the entries: all of them (--log-db),"
    " or at a CAS those of the policies --identity may read.",
)
@click.option(
    "--identity",
    "identity_file",
    type=_PATH,
    help="With --full at a CAS: your identity file (mode 0600); the entries checked are those of the"
    " policies it may read (signed reads).",
)
@click.option(
    "--policy",
    "policy_names",
    multiple=True,
    metavar="NAME",
    help="With --identity: check this policy's entries (repeat; default: every policy it may read and,"
    " with --state, every one the file remembers).",
)
@_witness_option
@_witness_wait_option
@_max_age_option
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.option(
    "--cacert", type=_PATH, help="Trust only this certificate for --url (default: $CONFIDE_CAS_CERT)."
)
def verify(
    log_db: Path | None,
    url: str | None,
    state: Path | None,
    key: str | None,
    full: bool,
    identity_file: Path | None,
    policy_names: tuple[str, ...],
    witness_keys: tuple[str, ...],
    witness_wait: float | None,
    max_age: str | None,
    as_json: bool,
    cacert: Path | None,
) -> None:
    """Verify the log's latest checkpoint and its consistency with the last one seen.

    \b
    After `source DIR/client.env` (CONFIDE_LOG_URL, CONFIDE_LOG_KEY, CONFIDE_CAS_CERT):
      confide ledger verify --state auditor.json
      confide ledger verify --full --identity me.id --state auditor.json
      confide ledger verify --state auditor.json --witness W_VKEY --max-age 1h
    """
    try:
        if policy_names and identity_file is None:
            raise UsageError("--policy goes with --identity (whose policies' entries --full checks)")
        if identity_file is not None and (not full or log_db is not None):
            raise UsageError(
                "--identity goes with --full at a CAS (--url or CONFIDE_LOG_URL), not with --log-db"
                if full
                else "--identity goes with --full (it names whose policies' entries are checked)"
            )
        witnesses, freshness, wait = _witness_freshness(witness_keys, max_age, witness_wait)
        # The client.env that `cas serve` writes names the log and its key (docs/cas.md); the
        # key is as trusted as CONFIDE_CAS_CERT, which comes from the same file.
        if key is None:
            key = os.environ.get("CONFIDE_LOG_KEY") or None
            if key is None:
                raise UsageError(
                    "--key VKEY is required (or CONFIDE_LOG_KEY: source the client.env that "
                    "'confide cas serve' wrote)"
                )
        if log_db is None and url is None:
            url = os.environ.get("CONFIDE_LOG_URL") or None
        log_key = log_verifier(_read_key_text(key, "--key"))
        if (log_db is None) == (url is None):
            raise UsageError(
                "give exactly one of --log-db FILE and --url URL (or CONFIDE_LOG_URL from client.env)"
            )
        if identity_file is not None:
            assert url is not None
            checked = _verify_readable(
                url, cacert, log_key, identity_file, policy_names, state, witnesses, freshness, wait
            )
        else:
            checked = _verify(log_db, url, cacert, log_key, state, full, witnesses, freshness, wait)
    except ConfideError as exc:
        if as_json:
            error = {"class": exc.kind, "message": exc.message, "exit_code": exc.exit_code}
            click.echo(json.dumps({"verified": False, "error": error}))
        _fail(exc)
        return
    if as_json:
        click.echo(json.dumps(checked.to_json()))
        return
    click.echo(printable(f"verified: {checked.origin} size {checked.size} root {checked.root}"))
    if checked.previous_size is not None:
        click.echo(f"  consistent with the last seen size {checked.previous_size}")
    if full and checked.reader is None:
        click.echo(f"  all {checked.size} entries match the tree")
    elif full:
        reader = f"{str(checked.reader)[:16]}…"
        click.echo(f"  all {checked.size} leaf hashes give the root")
        if not checked.policies:
            click.echo(f"  no policy readable by {reader}: no entries checked")
        for p in checked.policies:
            line = f"  {p.name}: {p.entries} entries match the tree, current version {p.head[:16]}…"
            click.echo(printable(line))
        if checked.policies:
            click.echo(
                f"  {checked.entries_checked} entries of {len(checked.policies)} "
                f"polic{'y' if len(checked.policies) == 1 else 'ies'} readable by {reader} checked"
            )
    for w in witnesses:
        click.echo(printable(f"  cosigned by witness {w.name}"))
    if checked.max_age is not None:
        click.echo(f"  each witness's newest cosignature is at most {checked.max_age} s old (--max-age)")


def _witness_freshness(
    witness_keys: tuple[str, ...], max_age: str | None, witness_wait: float | None = None
) -> tuple[list[NoteVerifier], Freshness | None, CosignWait]:
    """``--witness VKEY... [--witness-wait SECONDS] [--max-age DURATION]`` of ``ledger verify``,
    ``history`` and ``accesses``: the witness keys, the freshness their cosignatures must show,
    and how long to wait for them. The verify layer is given the time: read here, and again as
    each checkpoint is fetched (a wait for the state's lock, a long listing: judged when it was
    read)."""
    if witness_wait is not None and not witness_keys:
        raise UsageError("--witness-wait goes with --witness (it bounds the wait for their cosignatures)")
    witnesses = [_witness_key(w) for w in witness_keys]
    wait = CosignWait() if witness_wait is None else CosignWait(witness_wait)
    return witnesses, freshness_for(max_age, witnesses, lambda: datetime.now(UTC)), wait


def _verify(
    log_db: Path | None,
    url: str | None,
    cacert: Path | None,
    log_key: NoteVerifier,
    state: Path | None,
    full: bool,
    witnesses: list[NoteVerifier],
    freshness: Freshness | None = None,
    wait: CosignWait | None = None,
) -> LogVerification:
    """``ledger verify`` of the log database ``log_db`` or of the tlog-tiles at ``url``."""
    with contextlib.ExitStack() as stack:
        client: LogClient
        if log_db is not None:
            _existing(log_db)
            conn = connect(log_db, durable=False)
            stack.callback(conn.close)
            client = LocalLogClient(conn)
        else:
            assert url is not None
            if not url.startswith(("http://", "https://")):
                raise UsageError(f"--url: got {url[:60]!r}, expected http:// or https://")
            ca = cacert or _env_cert()
            http = None
            if ca is not None and url.startswith("https://"):
                ctx = client_tls_context(ca)
                http = stack.enter_context(answer_client(verify=ctx, timeout=30.0))
            client = stack.enter_context(HttpLogClient(url, client=http))
        return verify_log(
            client, log_key, state, full=full, witnesses=witnesses, freshness=freshness,
            wait=wait or CosignWait(),
        )  # fmt: skip


def _verify_readable(
    url: str,
    cacert: Path | None,
    log_key: NoteVerifier,
    identity_file: Path,
    policies: tuple[str, ...],
    state: Path | None,
    witnesses: list[NoteVerifier],
    freshness: Freshness | None = None,
    wait: CosignWait | None = None,
) -> LogVerification:
    """``ledger verify --full --identity``: the CAS of client.env (``CONFIDE_CAS_URL``, trusting
    ``--cacert`` or ``CONFIDE_CAS_CERT``), whose log must be ``url``; its tiles read on the same
    connection (:func:`confide.cas.audit.verify_readable`)."""
    from confide.cas.audit import verify_readable
    from confide.cas.client import CasClient
    from confide.identity import load_identity

    cas_url = os.environ.get("CONFIDE_CAS_URL") or ""
    if not cas_url:
        raise UsageError(
            "--identity reads the CAS of CONFIDE_CAS_URL: source the client.env that 'confide cas serve' "
            "wrote"
        )
    if url.rstrip("/") != f"{cas_url.rstrip('/')}/v1/log":
        raise UsageError(
            f"--identity reads the CAS of CONFIDE_CAS_URL ({cas_url[:80]!r}), whose log is "
            f"{cas_url.rstrip('/')[:80]}/v1/log, not --url {url[:80]!r}"
        )
    identity = load_identity(identity_file)
    with (
        CasClient(cas_url, cacert or _env_cert()) as client,
        HttpLogClient(f"{client.url}/v1/log", client=client.http) as tiles,
    ):
        return verify_readable(
            client, tiles, log_key, identity, policies, state, witnesses=witnesses, freshness=freshness,
            wait=wait or CosignWait(),
        )  # fmt: skip


def _env_cert() -> Path | None:
    """The CAS certificate of client.env (``CONFIDE_CAS_CERT``), if set."""
    return Path(os.environ["CONFIDE_CAS_CERT"]) if os.environ.get("CONFIDE_CAS_CERT") else None


def _existing(log_db: Path) -> None:
    """``--log-db`` names a database that exists: connecting would create an empty one (and
    ``ledger checkpoint`` would then sign the empty tree of a log that is not the one meant)."""
    if not log_db.is_file():
        raise UsageError(f"--log-db: {str(log_db)!r} does not exist")


def _address(listen: str, option: str = "--listen") -> tuple[str, int]:
    host, _, port = listen.rpartition(":")
    # ASCII digits only (str.isdigit() takes "²", which int() refuses), at most 5 of them
    if not host or not (port.isascii() and port.isdigit() and len(port) <= 5) or int(port) > 65535:
        raise UsageError(f"{option}: got {listen[:80]!r}, expected HOST:PORT")
    return host.strip("[]"), int(port)


def _options(options: Sequence[Callable[[Any], Any]]) -> Callable[[Any], Any]:
    """A decorator applying the click ``options``, as if written above the command in order."""

    def apply(f: Any) -> Any:
        for option in reversed(options):
            f = option(f)
        return f

    return apply


_METRICS_OPTIONS = [
    click.option("--metrics-listen", metavar="HOST:PORT",
                 help="Serve GET /metrics on a plain-HTTP listener of its own there (everything else"
                 " 404), with connection limits of its own (the values of this server's); the"
                 " server's listener then answers /metrics 404."),
    click.option("--metrics-token-file", type=_PATH, metavar="FILE",
                 help="Require 'Authorization: Bearer TOKEN' for /metrics, wherever it is served,"
                 " TOKEN one of the file's: one a line, NAME:TOKEN or TOKEN (named line-N), at least"
                 " 16 printable ASCII bytes, no space; blank lines and # comments skipped. Else 401."
                 " Read again on SIGHUP and at --cert-reload-interval (a bad file keeps the tokens"
                 " in use)."),
    click.option("--metrics-cert", type=_PATH, metavar="FILE",
                 help="Serve the --metrics-listen listener over HTTPS (TLS 1.2+) with this PEM"
                 " certificate (chain); reloaded with --metrics-key on SIGHUP and at"
                 " --cert-reload-interval."),
    click.option("--metrics-key", type=_PATH, metavar="FILE",
                 help="The --metrics-cert certificate's private key (PEM, unencrypted)."),
    click.option("--metrics-client-ca", type=_PATH, metavar="FILE",
                 help="Require a client certificate (mutual TLS) on the --metrics-listen listener,"
                 " chaining to one of this file's PEM certificates (each one a trust anchor); needs"
                 " --metrics-cert. TLS 1.3 only then (no session resumed: every connection's"
                 " certificate judged at its handshake). Scrapers are then named by their"
                 " certificate's subject and SHA-256 in the log and the counters. With"
                 " --metrics-token-file, both are required. Reloaded with --metrics-cert (a bad file"
                 " keeps the CAs in use)."),
    click.option("--metrics-client-allow", type=_PATH, metavar="FILE",
                 help="Serve only the client certificates this file lists (needs --metrics-client-ca):"
                 " one a line, sha256:HEX of the certificate or its subject in RFC 4514 form"
                 " (CN=prometheus,O=Example); # comments. Others get 403, counted and logged. Read"
                 " again on SIGHUP and at --cert-reload-interval (a bad file keeps the list in use)."),
    click.option("--metrics-client-crl", type=_PATH, metavar="FILE",
                 help="Refuse revoked client certificates (needs --metrics-client-ca): the CRLs (PEM,"
                 " or one DER) of the bundle's CAs, each signed by its CA. Fail-closed: a client whose"
                 " CA has no CRL here, or whose CRL is past its nextUpdate, is refused too. Reloaded"
                 " with --metrics-cert."),
]  # fmt: skip


_metrics_options = _options(_METRICS_OPTIONS)


def _metrics(
    metrics_listen: str | None,
    metrics_token_file: Path | None,
    metrics_cert: Path | None,
    metrics_key: Path | None,
    reload_interval: float,
    metrics_client_ca: Path | None = None,
    metrics_client_allow: Path | None = None,
    metrics_client_crl: Path | None = None,
) -> dict[str, Any]:
    """The metrics listener's address, its certificate and the tokens (``--metrics-listen``,
    ``--metrics-cert``, ``--metrics-key``, ``--metrics-token-file``, ``--metrics-client-ca``:
    the client CAs its TLS handshake requires a certificate of, read and reloaded with the
    certificate, as ``--metrics-client-crl`` is; ``--metrics-client-allow``: the client
    certificates served; docs/ledger.md "Metrics and refusals") as server arguments: the files read at
    once (a bad one: a usage error), then reloaded on SIGHUP and every ``reload_interval``
    seconds (``--cert-reload-interval``) when they changed."""
    address = None if metrics_listen is None else _address(metrics_listen, "--metrics-listen")
    tokens, tls = metrics_files(
        address is not None, metrics_token_file, metrics_cert, metrics_key, poll_interval=reload_interval,
        logger="confide.ledger", client_ca=metrics_client_ca, client_crl=metrics_client_crl,
    )  # fmt: skip
    allow = client_allow_file(
        metrics_client_allow, tls, poll_interval=reload_interval, logger="confide.ledger"
    )
    if tokens is not None or tls is not None:
        # Until the server handles it (once it listens), a SIGHUP is ignored rather than fatal.
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
    return {"metrics_listen": address, "metrics_tokens": tokens, "metrics_tls": tls, "metrics_allow": allow}


def _banner_metrics(server: LedgerHTTPServer) -> str:
    return f"; metrics at {server.metrics_url}" if server.metrics_url is not None else ""


def _tls(
    cert: Path | None, key: Path | None, reload_interval: float = 0.0, metrics_reloadable: bool = False
) -> CertificateReloader | None:
    """The server's certificate files from --tls-cert/--tls-key (both or neither), reloaded on
    SIGHUP and every --cert-reload-interval seconds when they changed; None for plain HTTP.
    ``metrics_reloadable``: the metrics listener has files of its own to reload (--metrics-cert,
    --metrics-token-file), which --cert-reload-interval polls too."""
    if (cert is None) != (key is None):
        raise UsageError("--tls-cert and --tls-key go together")
    if cert is None or key is None:
        if reload_interval and not metrics_reloadable:
            raise UsageError(
                "--cert-reload-interval needs files to reload: --tls-cert and --tls-key,"
                " --metrics-cert and --metrics-key, or --metrics-token-file"
            )
        return None
    # Until the server handles it (once it listens), a SIGHUP is ignored rather than fatal.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    return CertificateReloader(cert, key, poll_interval=reload_interval)


_TLS_OPTIONS = [
    click.option("--tls-cert", type=_PATH, help="Serve HTTPS with this PEM certificate (chain);"
                 " reloaded with --tls-key on SIGHUP."),
    click.option("--tls-key", type=_PATH, help="The certificate's private key (PEM, unencrypted)."),
    click.option("--cert-reload-interval", type=click.FloatRange(min=0, max=86400), default=0.0,
                 callback=reload_interval,
                 metavar="SECONDS", help="Also look at --tls-cert and --tls-key (and --metrics-cert,"
                 " --metrics-key, --metrics-token-file) this often (at least 1) and reload them when"
                 " they changed (e.g. a Kubernetes Secret volume). 0 (default): on SIGHUP only."),
]  # fmt: skip


_tls_options = _options(_TLS_OPTIONS)


def _limit_options(rate: Rate) -> Callable[[Any], Any]:
    """The serving limits of ``ledger serve`` and ``ledger witness serve`` (docs/ledger.md
    "Serving limits"); ``rate``: the default per-client request rate."""
    options = [
        click.option("--max-connections", type=click.IntRange(min=0), default=MAX_CONNECTIONS,
                     show_default=True, help="Open connections at once (TLS handshakes included); one"
                     " more is closed when accepted, before its handshake. 0: no limit."),
        click.option("--max-connections-per-ip", type=click.IntRange(min=0),
                     default=MAX_CONNECTIONS_PER_CLIENT, show_default=True,
                     help="Open connections at once per client IP address (IPv6: per /64). 0: no limit."),
        click.option("--head-timeout", type=click.FloatRange(min=0.1), default=HEAD_TIMEOUT,
                     show_default=True, metavar="SECONDS", help="A request head must be complete this"
                     " long after the connection (or the request's first byte), else the connection is"
                     " closed."),
        click.option("--body-timeout", type=click.FloatRange(min=0), default=LEDGER_BODY_TIMEOUT,
                     show_default=True, metavar="SECONDS", help="A request body must be complete this"
                     " long after its head, else 408 and the connection is closed. 0: no limit."),
        click.option("--tls-handshake-timeout", type=click.FloatRange(min=0.1), default=HANDSHAKE_TIMEOUT,
                     show_default=True, metavar="SECONDS",
                     help="A TLS handshake must complete within this, else the connection is closed."),
        click.option("--request-rate", default=f"{rate.per_second:g}", show_default=True,
                     metavar="PER_SECOND", help="Requests a second per client IP address (IPv6: /64),"
                     " answered 429 with Retry-After past it. 0: no limit."),
        click.option("--request-burst", metavar="N",
                     help="The most requests at once per client (default: twice --request-rate)."),
    ]  # fmt: skip

    return _options(options)


def _limits(
    max_connections: int,
    max_connections_per_ip: int,
    head_timeout: float,
    body_timeout: float,
    tls_handshake_timeout: float,
    *,
    metrics_listener: bool = False,
) -> HttpLimits:
    # a metrics listener (--metrics-listen) has connection limits of the same values
    reserve_descriptors(max_connections, max_connections if metrics_listener else 0)
    return ledger_limits(
        max_connections=max_connections,
        max_connections_per_client=max_connections_per_ip,
        head_timeout=head_timeout,
        body_timeout=body_timeout,
        handshake_timeout=tls_handshake_timeout,
    )


def _log_reloads() -> None:
    """Certificate reloads (a success at INFO) on stderr, as refusals are (WARNING, which
    Python's last-resort handler prints): one line each, the message only."""
    log = logging.getLogger("confide.ledger")
    if not log.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
        log.addHandler(handler)
    if log.getEffectiveLevel() > logging.INFO:
        log.setLevel(logging.INFO)


def _serve(listen: str, start: Callable[[], tuple[LedgerHTTPServer, str]]) -> None:
    """Serve until interrupted what ``start()`` bound to ``listen`` (it returns the server and
    the banner to print); an error of ``start`` exits with its code (a socket's: a usage error)."""
    try:
        server, banner = start()
    except ConfideError as exc:
        _fail(exc)
        return
    except OSError as exc:
        _fail(UsageError(f"--listen {listen}: {exc.strerror or exc}"))
        return
    click.echo(banner, err=True)
    _log_reloads()
    try:
        server.serve_forever()
    finally:
        server.server_close()


@ledger.command("serve")
@click.option("--log-db", type=_PATH, required=True, help="Ledger database (SQLite).")
@click.option("--listen", default="127.0.0.1:8080", show_default=True, help="HOST:PORT to listen on.")
@click.option("--serve-entries", is_flag=True, help="Also serve entry bundles (they reveal entry contents).")
@_tls_options
@_limit_options(TILES_RATE)
@_metrics_options
def serve_tiles(
    log_db: Path,
    listen: str,
    serve_entries: bool,
    tls_cert: Path | None,
    tls_key: Path | None,
    cert_reload_interval: float,
    request_rate: str,
    request_burst: str | None,
    metrics_listen: str | None,
    metrics_token_file: Path | None,
    metrics_cert: Path | None,
    metrics_key: Path | None,
    metrics_client_ca: Path | None,
    metrics_client_allow: Path | None,
    metrics_client_crl: Path | None,
    **limits: Any,
) -> None:
    """Serve the log read-only as C2SP tlog-tiles (checkpoint, tiles), over HTTPS with --tls-cert."""

    def start() -> tuple[LedgerHTTPServer, str]:
        _existing(log_db)
        reloadable = metrics_token_file is not None or metrics_cert is not None
        tls = _tls(tls_cert, tls_key, cert_reload_interval, reloadable)
        rate = parse_rate(request_rate, request_burst, "request")
        metrics = _metrics(metrics_listen, metrics_token_file, metrics_cert, metrics_key,
                           cert_reload_interval, metrics_client_ca, metrics_client_allow,
                           metrics_client_crl)  # fmt: skip
        server = TilesServer(log_db, _address(listen), serve_entries=serve_entries, tls=tls,
                             limits=_limits(**limits, metrics_listener=metrics_listen is not None), rate=rate,
                             **metrics)  # fmt: skip
        return server, f"serving {log_db} at {server.url}/{_banner_metrics(server)}"

    _serve(listen, start)


@ledger.command("keygen")
@click.option("--name", required=True, help="Key name (the log origin, or the witness name).")
@click.option("--witness", is_flag=True, help="A witness cosigning key (type 0x04) instead of a log key.")
@click.option("--out", type=_PATH, required=True, help="File for the private key (mode 0600).")
def keygen(name: str, witness: bool, out: Path) -> None:
    """Generate an Ed25519 note key; prints the verifier key (vkey)."""
    try:
        signer = NoteSigner.generate(name, SIG_TYPE_COSIGNATURE_V1 if witness else SIG_TYPE_ED25519)
        # one open that creates the file (never through a symlink), the key written through it
        write_new(out, (signer.skey + "\n").encode(), mode=0o600)
    except FileExistsError:
        _fail(UsageError(f"--out: {str(out)!r} exists; refusing to overwrite a key"))
        return
    except OSError as exc:
        _fail(new_file_error(exc, f"--out: cannot create {str(out)!r}: {exc.strerror or exc}"))
        return
    except ConfideError as exc:
        _fail(exc)
        return
    click.echo(signer.verifier.vkey)


@ledger.command("checkpoint")
@click.option("--log-db", type=_PATH, required=True, help="Ledger database (SQLite).")
@click.option("--signing-key", type=_PATH, required=True, help="File with the log's private key (skey).")
def checkpoint(log_db: Path, signing_key: Path) -> None:
    """Sign and record a checkpoint of the current tree; prints it."""
    try:
        _existing(log_db)
        signer = NoteSigner.from_skey(_read_key_text(str(signing_key), "--signing-key"))
        conn = connect(log_db)
        try:
            Ledger.init_schema(conn)
            note = Ledger().sign_checkpoint(conn, signer)
        finally:
            conn.close()
    except ConfideError as exc:
        _fail(exc)
        return
    click.echo(note.decode("utf-8"), nl=False)


@ledger.command("request-cosignature")
@click.option("--log-db", type=_PATH, required=True, help="Ledger database (SQLite).")
@click.option("--witness-url", required=True, help="The witness's submission prefix (http(s)://host:port).")
@click.option("--witness-key", required=True, metavar="VKEY", help="The witness's verifier key or a file.")
@click.option(
    "--cacert", type=_PATH, help="Trust only this certificate for an https:// witness (default: system CAs)."
)
def request_cosignature(log_db: Path, witness_url: str, witness_key: str, cacert: Path | None) -> None:
    """Have a witness cosign the latest checkpoint; store the cosignature with it."""
    try:
        key = _witness_key(witness_key)
        if not witness_url.startswith(("http://", "https://")):
            raise UsageError(f"--witness-url: got {witness_url[:60]!r}, expected http:// or https://")
        with contextlib.ExitStack() as stack:
            http = None
            if cacert is not None:
                http = stack.enter_context(answer_client(verify=client_tls_context(cacert), timeout=10.0))
            _existing(log_db)
            conn = connect(log_db)
            stack.callback(conn.close)
            sig = request_cosignatures(conn, witness_url, key, client=http)
    except ConfideError as exc:
        _fail(exc)
        return
    click.echo(sig.line(), nl=False)


@ledger.group("witness")
def witness_group() -> None:
    """Run a C2SP witness (tlog-witness, cosignature/v1)."""


def _make_witness(state: Path, key_file: Path, logs: tuple[str, ...]) -> Witness:
    signer = NoteSigner.from_skey(_read_key_text(str(key_file), "--key"))
    if signer.verifier.sig_type != SIG_TYPE_COSIGNATURE_V1:
        raise UsageError("--key: expected a witness key (signature type 0x04; keygen --witness)")
    if not logs:
        raise UsageError("--log: give at least one log key")
    known: dict[str, NoteVerifier] = {}
    for value in logs:
        # A log signs its checkpoints with an Ed25519 key (type 0x01, c2sp.org/tlog-checkpoint);
        # one origin has one key here (a second --log of an origin would silently replace the first).
        key = log_verifier(_read_key_text(value, "--log"), "--log")
        if key.name in known:
            raise UsageError(f"--log: two keys for the origin {key.name!r}, expected one per log")
        known[key.name] = key
    return Witness(signer, state, known)


_WITNESS_OPTIONS = [
    click.option(
        "--state", type=_PATH, required=True, help="Witness state file (latest cosigned checkpoints)."
    ),
    click.option("--key", "key_file", type=_PATH, required=True, help="File with the witness's private key."),
    click.option(
        "--log", "logs", multiple=True, metavar="VKEY", help="A log key to witness (name = origin)."
    ),
]


_witness_options = _options(_WITNESS_OPTIONS)


@witness_group.command("serve")
@_witness_options
@click.option("--listen", default="127.0.0.1:8090", show_default=True, help="HOST:PORT to listen on.")
@_tls_options
@_limit_options(WITNESS_RATE)
@_metrics_options
def witness_serve(
    state: Path,
    key_file: Path,
    logs: tuple[str, ...],
    listen: str,
    tls_cert: Path | None,
    tls_key: Path | None,
    cert_reload_interval: float,
    request_rate: str,
    request_burst: str | None,
    metrics_listen: str | None,
    metrics_token_file: Path | None,
    metrics_cert: Path | None,
    metrics_key: Path | None,
    metrics_client_ca: Path | None,
    metrics_client_allow: Path | None,
    metrics_client_crl: Path | None,
    **limits: Any,
) -> None:
    """Serve POST /add-checkpoint until interrupted (over HTTPS with --tls-cert)."""

    def start() -> tuple[LedgerHTTPServer, str]:
        witness = _make_witness(state, key_file, logs)
        rate = parse_rate(request_rate, request_burst, "request")
        reloadable = metrics_token_file is not None or metrics_cert is not None
        tls = _tls(tls_cert, tls_key, cert_reload_interval, reloadable)
        metrics = _metrics(metrics_listen, metrics_token_file, metrics_cert, metrics_key,
                           cert_reload_interval, metrics_client_ca, metrics_client_allow,
                           metrics_client_crl)  # fmt: skip
        server = WitnessServer(witness, _address(listen), tls=tls,
                               limits=_limits(**limits, metrics_listener=metrics_listen is not None),
                               rate=rate, **metrics)  # fmt: skip
        banner = f"witness {witness.verifier.vkey} at {server.url}/add-checkpoint{_banner_metrics(server)}"
        return server, banner

    _serve(listen, start)


@witness_group.command("add-checkpoint")
@_witness_options
@click.argument("request", type=_PATH)
def witness_add_checkpoint(state: Path, key_file: Path, logs: tuple[str, ...], request: Path) -> None:
    """Process one add-checkpoint REQUEST body offline; print the cosignature line."""
    try:
        witness = _make_witness(state, key_file, logs)
        # The HTTP witness refuses a body above MAX_REQUEST_SIZE; so does the offline command
        # (a regular file only: a FIFO is refused at once, not waited on).
        body = read_small_file(request, MAX_REQUEST_SIZE, "REQUEST")
        old_size, proof, note = parse_add_checkpoint(body)
        sig = witness.add_checkpoint(old_size, proof, note, at=datetime.now(UTC))
    except ConfideError as exc:
        _fail(exc)
        return
    click.echo(sig.line(), nl=False)


def _cas_inputs(identity_file: Path, key: str | None) -> tuple[Any, Any, Any]:
    from confide.cas.client import CasClient
    from confide.identity import load_identity

    key_text = key or os.environ.get("CONFIDE_LOG_KEY")
    if not key_text:
        raise UsageError("--key: give the CAS's log key (or set CONFIDE_LOG_KEY from client.env)")
    return (
        CasClient.from_env(),
        load_identity(identity_file),
        NoteVerifier.from_vkey(_read_key_text(key_text, "--key")),
    )


F = TypeVar("F", bound=Callable[..., Any])


def _audit_options(command: F) -> F:
    """The options of ``ledger history`` and ``ledger accesses``: who reads, the log key, JSON,
    the state file, the witnesses and ``--max-age`` (as ``ledger verify`` takes them)."""
    options = (
        click.option("--identity", "identity_file", type=_PATH, required=True,
                     help="Your identity file (a reader of POLICY; mode 0600): signs the read request."),
        click.option("--key", metavar="VKEY", help="Pinned log key (default: $CONFIDE_LOG_KEY)."),
        click.option("--json", "as_json", is_flag=True, help="Print the result as one JSON document."),
        click.option("--state", "state_file", type=_PATH, metavar="FILE",
                     help="Remember the checkpoint and the policy's entries in FILE: the next run refuses "
                     "an older or forked log (exit 60, 61) and an entry seen before left out (exit 64)."),
        _witness_option,
        _witness_wait_option,
        _max_age_option,
    )  # fmt: skip
    for option in reversed(options):  # as written above the function, top first
        command = option(command)
    return command


def _state_line(state_file: Path, policy: str, signed: Any, update: ViewUpdate) -> None:
    """One line on stderr: what the state file says about this run (stdout stays as without it)."""
    size = signed.checkpoint.size if signed is not None else 0
    before = "first run" if update.previous is None else f"extends size {update.previous.size} seen before"
    click.echo(
        f"state {str(state_file)!r}: checkpoint size {size} ({before}); {policy}: {update.known} entries "
        f"seen before all returned, {update.remembered} remembered",
        err=True,
    )


@ledger.command("history")
@click.argument("policy")
@_audit_options
def history_cmd(
    policy: str,
    identity_file: Path,
    key: str | None,
    as_json: bool,
    state_file: Path | None,
    witness_keys: tuple[str, ...],
    witness_wait: float | None,
    max_age: str | None,
) -> None:
    """Every version of POLICY: who signed it, who approved it (entries proven in the log)."""
    from confide.cas.audit import history, read_audited, verified_events

    try:
        witnesses, freshness, wait = _witness_freshness(witness_keys, max_age, witness_wait)
        client, ident, log_key = _cas_inputs(identity_file, key)

        def read() -> tuple[str, Any, list[Any]]:
            return (policy, *verified_events(client, policy, ident, log_key))

        _, signed, events, update = read_audited(
            client, log_key, state_file, read, witnesses=witnesses, freshness=freshness, wait=wait
        )
    except ConfideError as exc:
        _fail(exc)
        return
    rows = history(events)
    if state_file is not None and update is not None:
        _state_line(state_file, policy, signed, update)
    if as_json:
        out: dict[str, Any] = {"checkpoint_size": signed.checkpoint.size if signed else 0, "history": rows}
        if update is not None:
            out["state"] = {
                "previous_size": None if update.previous is None else update.previous.size,
                "entries_known": update.known, "entries_remembered": update.remembered,
            }  # fmt: skip
        click.echo(json.dumps(out))
        return
    for r in rows:
        mark = "" if r["included"] else " (not yet in a checkpoint)"
        extra = f" approvers={r['approvers']}" if r["approvers"] else ""
        line = f"#{r['index']} {r['time']} {r['event']} {r['hash']} signer={r['signer']}{extra}{mark}"
        click.echo(printable(line))


# docs/ledger.md "In the CAS": a release is one entry, under the policy of the service that
# received it.
RELEASES_WHERE = (
    "a release is recorded under the policy of the service that received it, and a secret or"
    " volume exported to another policy under its exporter too (the importer named)"
)


@ledger.command("accesses")
@click.argument("target", metavar="POLICY[/SECRET]")
@_audit_options
def accesses_cmd(
    target: str,
    identity_file: Path,
    key: str | None,
    as_json: bool,
    state_file: Path | None,
    witness_keys: tuple[str, ...],
    witness_wait: float | None,
    max_age: str | None,
) -> None:
    """Which attested services received POLICY's secrets, when, under which measurement; and
    which services of importing policies received the secrets and volumes POLICY exports (the
    importer named)."""
    from confide.cas.audit import accesses, read_audited, verified_events

    # Policy names may have namespaces (a/b/c), secret names never contain "/": TARGET is the
    # policy named TARGET when there is one the identity may read, else POLICY/SECRET split at
    # the last "/".
    secret = ""
    try:
        witnesses, freshness, wait = _witness_freshness(witness_keys, max_age, witness_wait)
        client, ident, log_key = _cas_inputs(identity_file, key)

        def read() -> tuple[str, Any, list[Any]]:
            nonlocal secret
            try:
                return (target, *verified_events(client, target, ident, log_key))
            except AccessDeniedError as whole:
                if "/" not in target:
                    raise
                policy, _, secret = target.rpartition("/")
                try:
                    return (policy, *verified_events(client, policy, ident, log_key))
                except AccessDeniedError:
                    raise whole from None  # neither reading: name the target as given

        policy, signed, events, update = read_audited(
            client, log_key, state_file, read, witnesses=witnesses, freshness=freshness, wait=wait
        )
        rows = accesses(events, secret or None)
    except ConfideError as exc:
        _fail(exc)
        return
    if state_file is not None and update is not None:
        _state_line(state_file, policy, signed, update)
    if not rows:  # say where else releases are: an exporter would read "never released" here
        what = f"{policy}'s secret {secret}" if secret else policy
        click.echo(printable(f"no release recorded under {what}: {RELEASES_WHERE}"), err=True)
    if as_json:
        click.echo(json.dumps(rows))
        return
    for r in rows:
        names = ", ".join(f"{s.get('policy')}/{s.get('name')} v{s.get('version')}" for s in r["secrets"])
        line = f"#{r['index']} {r['time']} service={r['service']} measurement={r['measurement']}"
        if r.get("importer") is not None:  # released to a service of the importing policy
            line += (
                f" importer={r['importer']} importer_version={r.get('policy_hash')}"
                f" platform={r.get('platform')} attestation=#{r.get('attestation_index')}"
            )
        click.echo(printable(line))
        click.echo(printable(f"    secrets=[{names}]"))
        if r.get("volumes"):
            vols = ", ".join(f"{v.get('name')} ({v.get('update_policy')})" for v in r["volumes"])
            click.echo(printable(f"    volumes=[{vols}]"))
