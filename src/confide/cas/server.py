"""``confide cas serve``: the CAS over TLS (uvicorn), with its state in a data directory; with
``--public-http-listen``, also a plain-HTTP listener for its public CRLs and CA certificates only
(:mod:`confide.cas.public_http`, :func:`public_http_server`), and with ``--metrics-listen`` one
for ``/metrics`` only (:mod:`confide.httpserve.metrics_listener`), on the same event loop.

The data directory holds (created on first start, mode 0700/0600):

- ``master.key``: the 32-byte key that seals secrets at rest, in plain (``--seal file``,
  development only); or ``master.key.sealed``: the same key sealed to the TEE the CAS runs in
  (``--seal gramine|gramine-mrsigner|sev-snp``; :mod:`confide.cas.master_key`);
- ``cas-key.pem`` / ``cas-cert.pem``: the CAS's TLS key and self-signed certificate; with a
  sealing provider the key is encrypted under a key derived from the master key
  (:mod:`confide.cas.keyfiles`);
- ``log.key``: the transparency log's signer key (plain); with a sealing provider
  ``log.key.sealed`` instead, sealed under the master key;
- ``cas.db``: the embedded SQLite database (unless ``--db`` names PostgreSQL);
- ``sim/``: with ``--dev``, the simulated platform's key (development only);
- ``kds-cache/``: with ``--kds URL``, the VCEKs (and AMD chains and CRLs) fetched from AMD KDS
  for SEV-SNP evidence sent without its VCEK, the CAS's own included (:mod:`confide.cas.kds`:
  bounded, and verified again whenever it is read; :mod:`confide.cas.own_vcek`);
- ``ocsp-cache/``: with ``--nvidia-ocsp URL``, the good OCSP responses (with a ``nextUpdate``)
  the responder gave for NVIDIA GPU chains (:mod:`confide.cas.revocation`: bounded, and
  verified again whenever it is read);
- ``rim-cache/``: with ``--nvidia-rim URL``, the NVIDIA RIMs fetched from the RIM service
  (:mod:`confide.cas.rims`: bounded, and verified again whenever it is read);
- ``gce-crl-cache/``: with ``--gce-crl fetch``, the CRLs fetched from Google's distribution
  points (:mod:`confide.cas.gce_crl`: bounded, and verified again whenever it is read);
- ``gce-crl-newest.json``: with ``--gce-crl fetch``, the newest thisUpdate and CRL number seen
  per CRL issuer and Issuing Distribution Point (the rollback memory, :mod:`confide.cas.gce_crl`;
  deleted: the next CRL of each issuer is trusted as its newest);
- ``dcap-tcb-evaluation.json``: the highest Intel TCB evaluation numbers verified with the
  CAS's own collateral, MAC'd under the master key (:mod:`confide.cas.tcb_floor`);
- ``client.env``: ``export`` lines with what a client needs (``CONFIDE_CAS_URL``,
  ``CONFIDE_CAS_CERT``, and with ``--dev`` ``CONFIDE_SIM_DIR``), replaced atomically
  (:func:`~confide.fsutil.write_atomic`) at every start;
- ``*.new``: only while ``confide cas rotate-master-key`` runs, or after it was interrupted
  (:mod:`confide.cas.rotation`: :func:`prepare` finishes or undoes it before reading any key,
  and refuses a master key whose id is not the one the database names);
- ``run.lock``: the run lock (:mod:`confide.cas.runlock`), which a serving CAS holds
  exclusively from before it reads anything in the directory until it exits: one ``cas serve``
  per data directory. Kept between runs (0600; the holder's pid in it, a hint).

With ``--tee tdx|sev-snp|sgx-gramine|az-vtpm`` the CAS obtains its own evidence at startup from
that TEE's quote provider (:mod:`confide.runtime.quote`), bound to its TLS certificate and log
key, and refuses to start without it; ``--dev`` publishes simulated evidence instead. Either is
then re-obtained every ``--evidence-refresh`` seconds (:mod:`confide.cas.own_evidence`). Before
publishing, at startup and on every refresh, the CAS verifies the document as a client would
(:mod:`confide.cas.self_check`): evidence that does not verify stops the CAS at startup and is
not published on a refresh.

With ``--witness-quorum N`` (:mod:`confide.cas.witness_quorum`, docs/cas.md "Witness quorum")
the CAS binds its witnesses' keys and N into that evidence, does not listen before N witnesses
cosigned its log as it is (a witness's rollback or fork answer: :class:`LogRollbackError`, exit
67), and halts releases and changes on such an answer while it runs (:class:`Checkpointer`).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import hashlib
import ipaddress
import json
import logging
import math
import os
import shlex
import signal
import socket
import ssl
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import uvicorn
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from confide.cas.admin import AdminChannel
from confide.cas.app import create_app
from confide.cas.core import Cas, spki_sha256
from confide.cas.crl import DEFAULT_CRL_VALIDITY
from confide.cas.db import Database, raw_connection
from confide.cas.dev_measurement import cas_dev_measurement
from confide.cas.gce_crl import GceCrlFetcher, GceCrlFile, RollbackMemory, gce_crl_source
from confide.cas.head_index import HeadIndexRefresher
from confide.cas.join import JoinResult, join_cas
from confide.cas.key_release import KeyReleaser, OwnEvidence, OwnTcbWatch, ReplicaMinTcb, min_tcb_text
from confide.cas.keyfiles import TLS_KEY_NAME, load_log_signer, load_tls_key, tls_key_password
from confide.cas.ledger_sink import LedgerEventSink
from confide.cas.master_key import PLAIN_NAME, install_master_key
from confide.cas.online_rotation import OnlineRotation, add_pending_key
from confide.cas.own_evidence import DEFAULT_REFRESH_SECONDS, CasEvidence, EvidenceRefresher
from confide.cas.own_vcek import with_kds_vcek
from confide.cas.pin import AttestedWitnesses, cas_binding
from confide.cas.policy_auth import EVENT_BOUND as POLICY_ROWS_BOUND
from confide.cas.policy_auth import bind_unbound as bind_policy_rows
from confide.cas.policy_rows import seal_clear_rows
from confide.cas.public_http import PublicApp
from confide.cas.refusal_delay import DEFAULT_REFUSAL_DELAY, RefusalDelay, check_refusal_delay
from confide.cas.renewal import DEFAULT_SWEEP_SECONDS, CertificateRenewer
from confide.cas.revocation import STAPLED, OcspCache
from confide.cas.revocation_auth import EVENT_BOUND, bind_unbound
from confide.cas.rotation import (
    _scrub,
    bind_master_key,
    open_master_key,
    stored_master_key_id,
    stored_next_key_id,
)
from confide.cas.runlock import RunLock, run_lock
from confide.cas.sealing import SealingKeyProvider
from confide.cas.secret_heads import EVENT_BOUND as SECRET_HEADS_BOUND
from confide.cas.secret_heads import bind_unbound as bind_secret_heads
from confide.cas.secrets import Sealer
from confide.cas.self_check import SelfCheck
from confide.cas.state_auth import AuthenticatedState, ledger_state, record_state
from confide.cas.successor import Successors
from confide.cas.successor_board import EVENT_BOARD, Board, store_board
from confide.cas.tcb_floor import FLOOR_FILE, TcbEvaluationFloor, ledger_floor, record_floor
from confide.cas.verifier import PlatformVerifier
from confide.cas.witness_quorum import (
    RECOSIGN_SECONDS,
    START_ATTEMPTS,
    START_DELAYS,
    Round,
    WitnessGuard,
    WitnessQuorum,
)
from confide.cas.witness_rounds import ANSWER_TIME, CONNECT_TIMEOUT, Tally, WitnessRounds
from confide.collateral import is_url, public_url
from confide.collateral import public_url as public_url_of
from confide.collateral.amd_kds import DEFAULT_KDS_URL, KdsHttpCollateral
from confide.collateral.dcap import DcapCollateralSource, check_pcs_update, source_for
from confide.collateral.nvidia_ocsp import HttpOcspSource
from confide.collateral.nvidia_ocsp import source_for as ocsp_source_for
from confide.collateral.nvidia_rim import source_for as rim_source_for
from confide.errors import ConfideError, LogRollbackError, NetworkError, StorageError, UsageError
from confide.fsutil import write_atomic
from confide.httpserve.certreload import CertificateReloader, FileReloader
from confide.httpserve.limits import HttpLimits
from confide.httpserve.metrics_listener import (
    METRICS_PATH,
    ClientCertScrapers,
    MetricsAuth,
    MetricsClientAllowList,
    MetricsListenerApp,
    MetricsTokenFile,
    client_allow_file,
    listener_limits,
    metrics_files,
    watch_handshakes,
)
from confide.httpserve.ratelimit import ATTEST_RATE, WRITE_RATE, Rate, RateLimiter, RefusalLog
from confide.httpserve.server import Companion, ServerWithCompanions, plain_server, reserve_descriptors
from confide.ledger.db import Conn, connect_postgres
from confide.ledger.db import connect as ledger_connect
from confide.ledger.note import NoteSigner, NoteVerifier
from confide.ledger.store import Ledger
from confide.platforms import AutoTcbEvaluation, TcbEvaluationMinimum
from confide.runtime.azure_vtpm import AzureVtpmQuoteProvider
from confide.runtime.quote import (
    ConfigfsTsmQuoteProvider,
    Evidence,
    GramineQuoteProvider,
    QuoteProvider,
    SimQuoteProvider,
)
from confide.sim.platform import SimPlatform
from confide.verify.ocsp import STAPLED_MAX_AGE
from confide.verify.result import Platform, VerifiedEvidence
from confide.verify.sev_snp import AmdRootStore

__all__ = [
    "SESSION_TICKETS",
    "TEE_CHOICES",
    "prepare",
    "public_http_server",
    "quote_provider_for",
    "serve",
    "tee_document",
    "tee_evidence",
    "uvicorn_server",
]


# TLS 1.3 session tickets (RFC 8446 §4.6.1) sent after each full handshake. No confide client
# resumes a session: CasClient (``confide run``, ``cas attest``, the policy commands) goes
# through httpx2's sync transport, which wraps every new connection without an SSL session, and
# reuses a kept-alive connection instead. Each ticket costs the CAS a session encryption and a
# TLS record, and every client the parsing of it, for nothing; ``--tls-session-tickets N``
# sends N again for clients that do resume (OpenSSL's default is 2).
SESSION_TICKETS = 0

GRACEFUL_SHUTDOWN = 5
"""Seconds uvicorn lets the requests in progress finish once the CAS is told to stop (SIGTERM)
before it cancels them; the CAS's own listener adds ``--refusal-delay`` (:func:`uvicorn_server`)."""


def _tls_identity(data_dir: Path, host: str, sealer: Sealer | None = None) -> tuple[Path, Path]:
    """The TLS key (:func:`confide.cas.keyfiles.load_tls_key`: protected by the master key when
    the CAS runs with a sealing provider) and its self-signed certificate, made when the key is."""
    key_path, cert_path = data_dir / TLS_KEY_NAME, data_dir / "cas-cert.pem"
    key, created = load_tls_key(key_path, sealer)
    if cert_path.exists() and not created:
        return key_path, cert_path
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "confide CAS")])
    sans: list[x509.GeneralName] = [
        x509.DNSName("localhost"),
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
    ]
    try:
        sans.append(x509.IPAddress(ipaddress.ip_address(host)))
    except ValueError:
        sans.append(x509.DNSName(host))
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=365))
        .add_extension(x509.SubjectAlternativeName(list(dict.fromkeys(sans))), critical=False)
        # Clients trust this certificate itself (CONFIDE_CAS_CERT as their only anchor): a
        # self-signed CA certificate that certifies no other (RFC 5280 §4.2.1.9 pathLen 0),
        # whose keyUsage (§4.2.1.3, critical) allows the TLS handshake signatures and the check
        # of its own signature (keyCertSign), and whose extendedKeyUsage (§4.2.1.12) is the TLS
        # server's; key identifiers (§4.2.1.1, §4.2.1.2) as strict verifiers (OpenSSL
        # X509_V_FLAG_X509_STRICT, Python 3.13's default context) expect of a CA certificate.
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(True, False, False, False, False, True, False, False, False), critical=True
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    write_atomic(cert_path, cert.public_bytes(serialization.Encoding.PEM))
    return key_path, cert_path


class Checkpointer:
    """Signs a checkpoint whenever the log grew: every acknowledged entry is covered by a signed
    checkpoint within ``interval`` seconds (default 0.5 s). With witnesses, each new checkpoint
    is then handed to :class:`~confide.cas.witness_rounds.WitnessRounds`, which asks them (C2SP
    tlog-witness) on threads of its own, concurrently, and stores their cosignatures with it,
    outside the CAS's write lock (a separate autocommit connection to the same database per
    thread): a slow or hanging witness never delays the next checkpoint.

    With a ``guard`` (``--witness-quorum``, :mod:`confide.cas.witness_quorum`) the witnesses are
    asked through it: :meth:`start` refuses to return until a quorum cosigned the checkpoint of
    the log as it is now (:meth:`start_with_quorum`; the others may still be answering), and while
    running a checkpoint not yet cosigned by a quorum is sent again. A log that does not grow has
    its checkpoint cosigned again every :data:`~confide.cas.witness_quorum.RECOSIGN_SECONDS` (with
    ``--witness-max-lag``, half that bound if sooner), with or without a guard: the witnesses' new
    timestamps keep it fresh for verifiers with ``ledger verify --max-age`` (docs/ledger.md
    "Freshness"). ``answer_time``: what each witness's answer may take
    (:data:`~confide.cas.witness_rounds.ANSWER_TIME`)."""

    def __init__(
        self,
        cas: Cas,
        signer: NoteSigner,
        interval: float = 0.5,
        witnesses: tuple[tuple[str, NoteVerifier], ...] = (),
        witness_tls: ssl.SSLContext | None = None,
        guard: WitnessGuard | None = None,
        sleep: Callable[[float], None] = time.sleep,
        monotonic: Callable[[], float] = time.monotonic,
        answer_time: float = ANSWER_TIME,
    ) -> None:
        self.cas, self.signer, self.interval = cas, signer, interval
        self.witnesses = witnesses if guard is None else guard.config.witnesses
        self.witness_tls = witness_tls  # trust for https:// witnesses (None: the system's CAs)
        self.guard, self.sleep, self.monotonic = guard, sleep, monotonic
        self.answer_time = answer_time
        self.asked_at: float | None = None  # the witnesses' last round without a guard (monotonic)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="checkpointer", daemon=True)
        self.signed_size = -1
        self.signed_note = b""
        self.rounds = (
            WitnessRounds(
                self.witnesses, self._ledger_conn, guard=guard, tls=witness_tls, answer_time=answer_time,
                on_round=self._log_failures, monotonic=monotonic,
            )
            if self.witnesses
            else None
        )  # fmt: skip

    def start(self) -> None:
        """Sign a checkpoint of the log as it is and have it cosigned before the CAS listens:
        with a guard by a quorum (:meth:`start_with_quorum`), without one by every witness (the
        first failure, a rollback or fork answer included, is raised: the CAS does not start);
        then sign on, on a thread of its own."""
        try:
            if self.guard is not None:
                self.start_with_quorum()
            else:
                tally = self.tick()
                if tally is not None:
                    tally.wait(self.answer_time + CONNECT_TIMEOUT + 1.0)  # bounded: each answer's time
                    failed = tally.first_error()
                    if failed is not None:
                        raise failed
                    if tally.open:
                        wait = self.answer_time + CONNECT_TIMEOUT + 1.0
                        raise NetworkError(f"{tally.open} of the witnesses did not answer within {wait:g} s")
        except BaseException:
            if self.rounds is not None:
                self.rounds.stop()
            raise
        self._thread.start()

    def stop(self) -> None:
        """The signer stops, then the witness rounds (connections in flight shut down, their
        threads joined)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
        if self.rounds is not None:
            self.rounds.stop()

    def start_with_quorum(self, attempts: int = START_ATTEMPTS) -> None:
        """Sign a checkpoint of the log as it is and have it cosigned by a quorum, in up to
        ``attempts`` rounds (1 s, then 2 s apart), before the CAS accepts a connection: each
        round is waited for until a quorum cosigned (the other witnesses may still be asked),
        or every witness answered. A witness's rollback or fork answer is a
        :class:`LogRollbackError` at once; no quorum after the last round, a
        :class:`NetworkError`; both say that the CAS does not start."""
        guard = self.guard
        assert guard is not None
        quorum, count = guard.config.quorum, len(guard.config.witnesses)
        tally = None
        for attempt in range(attempts):
            tally = self.tick(force=True)
            if tally is not None:
                # bounded: every witness's answer has answer_time (and the connection its timeout)
                tally.settle(self.answer_time + CONNECT_TIMEOUT + 1.0)
                if tally.halted is not None:
                    raise LogRollbackError(f"--witness-quorum {quorum}: not starting: {tally.halted.message}")
                if tally.cosigned >= quorum:
                    return
            if attempt + 1 < attempts:
                self.sleep(START_DELAYS[min(attempt, len(START_DELAYS) - 1)])
        got = 0 if tally is None else tally.cosigned
        failures = () if tally is None else tuple(tally.failures)
        reasons = "; ".join(f"{name}: {detail}" for name, _, detail in failures)
        raise NetworkError(
            f"--witness-quorum {quorum}: {got} of {count} witnesses cosigned checkpoint"
            f" {self.signed_size} after {attempts} attempts, {quorum} needed, not starting"
            + (f" ({reasons[:600]})" if reasons else "")
            + f"; the witnesses must know this log: {self.signer.verifier.vkey}"
        )

    def tick(self, *, force: bool = False) -> Tally | None:
        """Sign a checkpoint if the log grew, and hand it to the witnesses (with a guard: when
        :meth:`WitnessGuard.due`, or ``force``; without: when it grew, or the witnesses were last
        asked :data:`RECOSIGN_SECONDS` ago, so that a quiet log's cosignatures stay fresh). The
        round handed over, if one was (:meth:`Tally.wait` for its end); never waits for it."""
        with self.cas.db.read() as conn:
            size = Ledger.size(raw_connection(conn))
        grown = size != self.signed_size
        if grown:
            with self.cas.db.write() as conn:
                raw = raw_connection(conn)
                self.signed_note = Ledger().sign_checkpoint(raw, self.signer)
                self.signed_size = Ledger.size(raw)
        if self.rounds is None:
            return None
        if self.guard is not None:
            if force or self.guard.due(self.signed_size):
                return self.rounds.submit(self.signed_note, self.signed_size)
        elif grown or force or self.asked_at is None or self.monotonic() - self.asked_at >= RECOSIGN_SECONDS:
            self.asked_at = self.monotonic()  # a failed round is tried again after as long
            return self.rounds.submit(self.signed_note, self.signed_size)
        return None

    def _ledger_conn(self) -> Conn:
        """A ledger connection of its own to the CAS's database (autocommit: each witness thread's)."""
        url = self.cas.db.url
        if self.cas.db.is_sqlite:
            return ledger_connect(url.split("sqlite:///", 1)[1])
        return connect_postgres(url.replace("postgresql+psycopg://", "postgresql://", 1))

    def _run(self) -> None:
        log = logging.getLogger("confide.cas")
        while not self._stop.wait(self.interval):
            try:
                self.tick()
            except Exception as exc:  # keep signing; report once per failure
                if isinstance(exc, LogRollbackError) and self.guard is not None:
                    continue  # the guard halted releases and logged it (witness-rollback)
                # (without a guard a witness's rollback or fork answer is logged by the witness
                # rounds, as checkpoint-failed: now that a quiet log is cosigned again every
                # RECOSIGN_SECONDS, once a minute)
                log.error(
                    json.dumps(
                        {"event": "checkpoint-failed", "error": type(exc).__name__, "detail": str(exc)[:200]}
                    )
                )

    def _log_failures(self, outcome: Round) -> None:
        """One line for a round in which a witness failed: ``witness-quorum-missed`` without a
        quorum, ``witness-failed`` when the others made one."""
        guard = self.guard
        if guard is None or not outcome.failures:
            return
        missed = outcome.cosigned < guard.config.quorum
        logging.getLogger("confide.cas").warning(
            json.dumps(
                {
                    "event": "witness-quorum-missed" if missed else "witness-failed",
                    "size": outcome.size,
                    "cosigned": outcome.cosigned,
                    "quorum": guard.config.quorum,
                    "failures": [
                        {"witness": name, "error": kind, "detail": detail}
                        for name, kind, detail in outcome.failures
                    ],
                }
            )
        )


def _parse_listen(listen: str, option: str = "--listen", example: str = "127.0.0.1:8443") -> tuple[str, int]:
    host, sep, port = listen.rpartition(":")
    if not sep or not (port.isascii() and port.isdigit()) or len(port) > 5 or not host or int(port) > 65535:
        raise UsageError(f"{option}: got {listen[:80]!r}, expected HOST:PORT (e.g. {example})")
    return host.strip("[]"), int(port)


def _bind(host: str, port: int, option: str) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise UsageError(f"{option}: cannot bind {host}:{port}: {exc.strerror}") from None
    sock.listen(1024)
    return sock


def _url(scheme: str, host: str, sock: socket.socket) -> str:
    shown_host = f"[{host}]" if ":" in host else host
    return f"{scheme}://{shown_host}:{sock.getsockname()[1]}"


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()  # request lines are pre-formatted JSON
        if message.startswith("{"):
            return message
        return json.dumps(
            {"event": "log", "level": record.levelname, "logger": record.name, "message": message}
        )


class _LoopBatchedHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """A ``StreamHandler`` that writes the lines logged on a running event loop together: the
    first one schedules a callback (``call_soon``), which writes every line logged until it runs
    in one ``write`` at the end of that loop iteration, where each line was a system call of its
    own (two per attestation flow: the request lines). The lines, their order on the loop, and
    the records the handler is given are the same; a line is out at most one loop iteration
    later. Lines logged off the loop (another thread, no loop running) are written at once,
    after those pending; so are the pending ones on :meth:`flush` (``logging.shutdown``, at
    exit) and :meth:`setStream`."""

    def __init__(self, stream: Any) -> None:
        super().__init__(stream)
        self._pending: list[str] = []
        self._loop: asyncio.AbstractEventLoop | None = None  # the loop whose callback will write
        self._loop_thread = 0  # the thread that scheduled that callback, on that loop

    def accepts_lines(self) -> bool:
        """Whether :meth:`emit_line` writes what :meth:`handle` writes for a record whose message
        is that JSON line (``confide.cas.app`` then hands its request lines over without a
        record): the JSON formatter, which writes such a message as it is, and no filter."""
        return type(self.formatter) is _JsonFormatter and not self.filters

    def emit_line(self, line: str) -> None:
        """:meth:`handle` of a record whose message is ``line``, a JSON object's text, when
        :meth:`accepts_lines`: the same line, written as :meth:`emit` writes it."""
        with self.lock:  # type: ignore[union-attr]
            self._emit(line + self.terminator, None)

    def emit(self, record: logging.LogRecord) -> None:
        # Handler.handle holds self.lock
        try:
            line = self.format(record) + self.terminator
        except RecursionError:  # as StreamHandler.emit
            raise
        except Exception:
            self.handleError(record)
            return
        self._emit(line, record)

    def _emit(self, line: str, record: logging.LogRecord | None) -> None:
        try:
            if self._loop is not None and threading.get_ident() == self._loop_thread:
                # on the loop whose callback is pending (asked once per loop iteration: on
                # Python 3.11, asking for the running loop is a getpid system call)
                self._pending.append(line)
                return
            loop = asyncio._get_running_loop()
            if loop is None or self._loop is not None:  # off a loop, or another one's turn
                self._pending.append(line)
                self._write_pending()
                return
            loop.call_soon(self._on_loop)
            self._loop, self._loop_thread = loop, threading.get_ident()
            self._pending.append(line)
        except RecursionError:  # as StreamHandler.emit
            raise
        except Exception:
            self.handleError(record if record is not None else logging.makeLogRecord({"msg": line}))

    def _on_loop(self) -> None:
        with self.lock:  # type: ignore[union-attr]
            self._write_pending()

    def _write_pending(self) -> None:
        self._loop = None
        if self._pending:
            text = "".join(self._pending)
            self._pending.clear()
            self.stream.write(text)
            super().flush()

    def flush(self) -> None:
        with self.lock:  # type: ignore[union-attr]
            if self._pending:
                self._write_pending()
            else:
                super().flush()


def _configure_logging() -> None:
    # The JSON lines name no source file, line, thread or process: the records need not look
    # them up (a stack walk and three calls per request line; the logging HOWTO's
    # "Optimization" settings).
    logging._srcfile = None
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    handler = _LoopBatchedHandler(sys.stderr)
    handler.setFormatter(_JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = name != "uvicorn.access"


TEE_CHOICES = ("tdx", "sev-snp", "sgx-gramine", "az-vtpm")
"""``confide cas serve --tee``: the TEE the CAS runs in, which provides its own evidence."""
_TEE_PLATFORMS: dict[str, frozenset[Platform]] = {
    "tdx": frozenset({Platform.TDX}),
    "sev-snp": frozenset({Platform.SEV_SNP}),
    "sgx-gramine": frozenset({Platform.SGX}),
    "az-vtpm": frozenset({Platform.AZURE_SNP_VTPM, Platform.AZURE_TDX_VTPM}),
}
CAS_BINDING_TEXT = "SHA-512('confide-cas/v1' || 0 || TLS certificate DER || log verifier key)"
CAS_BINDING_TEXT_V2 = (
    "SHA-512('confide-cas/v2' || 0 || TLS certificate DER || log verifier key || 0 || 'quorum N\\n'"
    " || 'witness VKEY\\n' for each witness key, sorted)"
)
"""The binding of a CAS with ``--witness-quorum`` (:func:`confide.cas.pin.cas_binding`)."""


def quote_provider_for(tee: str) -> QuoteProvider:
    """The runtime's quote provider for ``--tee`` (its device at the standard path)."""
    if tee in ("tdx", "sev-snp"):
        return ConfigfsTsmQuoteProvider(expect=Platform(tee))
    if tee == "sgx-gramine":
        return GramineQuoteProvider()
    if tee == "az-vtpm":
        return AzureVtpmQuoteProvider()
    raise UsageError(f"--tee: got {tee!r}, expected one of {', '.join(TEE_CHOICES)}")


def tee_document(tee: str, provider: QuoteProvider, report_data: bytes) -> dict[str, Any]:
    """The CAS's own evidence document from ``provider`` (``GET /v1/cas/evidence``, without
    ``log_key`` and ``obtained_at``), with its aux blobs (SEV-SNP: configfs-tsm's ``auxblob``,
    the certificate table with the VCEK/VLEK). The provider's errors pass unchanged; evidence of
    another TEE than ``tee`` is a :class:`UsageError`."""
    expected = _TEE_PLATFORMS.get(tee)
    if expected is None:
        raise UsageError(f"--tee: got {tee!r}, expected one of {', '.join(TEE_CHOICES)}")
    evidence = provider.get_evidence(report_data)
    if evidence.platform not in expected:
        wanted = " or ".join(sorted(p.value for p in expected))
        raise UsageError(f"got {evidence.platform} evidence from {evidence.provider}, expected {wanted}")
    return {
        "platform": evidence.platform.value,
        "evidence": base64.b64encode(evidence.raw).decode(),
        "aux": {k: base64.b64encode(v).decode() for k, v in sorted(evidence.aux.items())},
        "provider": evidence.provider,
        "binding": CAS_BINDING_TEXT,
    }


def tee_evidence(tee: str, provider: QuoteProvider, report_data: bytes) -> dict[str, Any]:
    """:func:`tee_document` at startup: any failure keeps its error class (exit code) and says
    that the CAS cannot start."""
    try:
        return tee_document(tee, provider, report_data)
    except ConfideError as exc:
        raise _not_starting(tee, exc) from None


def _not_starting(tee: str, exc: ConfideError) -> ConfideError:
    return type(exc)(f"--tee {tee}: cannot obtain the CAS's own evidence, not starting: {exc.message}")


def prepare(
    data_dir: Path,
    *,
    host: str,
    dev: bool,
    db_url: str | None,
    collateral: str | None,
    seal: SealingKeyProvider | None = None,
    tee: str | None = None,
    quote_provider: QuoteProvider | None = None,
    clock: Callable[[], datetime] | None = None,
    amd_roots: AmdRootStore | None = None,
    kds: str | None = None,
    nvidia_ocsp: str | None = None,
    crl_validity: float = DEFAULT_CRL_VALIDITY,
    nvidia_rim: str | None = None,
    nvidia_ocsp_max_age: timedelta | None = None,
    join: str | None = None,
    join_as_successor: bool = False,
    successor_board: Board | None = None,
    min_tcb_evaluation_data_number: TcbEvaluationMinimum | None = None,
    pcs_update: str | None = None,
    pcs_tcb_eval_number: int | None = None,
    witnesses: AttestedWitnesses | None = None,
    replica_min_tcb: ReplicaMinTcb | None = None,
    gce_crl: str | None = None,
) -> tuple[Cas, CasEvidence | None, Path, Path, dict[str, str], NoteSigner]:
    """Create or open the CAS state in ``data_dir``; returns the CAS, its own evidence (``dev``:
    simulated; ``tee``: from the TEE's quote provider, ``quote_provider`` or the one at the
    standard device path; a :class:`CasEvidence` that re-obtains it from the same source on
    ``refresh()``), TLS files and the client environment (without the URL). ``seal``: the TEE
    sealing key that protects the master key (``None``: a plain ``master.key``, development
    only). ``clock``: the time of ``obtained_at`` (default: now). Without evidence of its own
    the CAS refuses to start with ``tee``, and so it does when its evidence does not verify: every
    document is checked before it is published (:class:`~confide.cas.self_check.SelfCheck`) with
    the CAS's verifier configuration, the DCAP collateral source of ``collateral`` and the pinned
    AMD roots (``amd_roots`` replaces them, also for the evidence clients present: test PKIs
    only). DCAP evidence without ``collateral`` is published unchecked, which is logged once.
    A URL as ``collateral`` (Intel PCS or a PCCS): clients' quotes have their platform's
    collateral fetched before phase 1 and kept in memory (:mod:`confide.cas.pcs`).
    ``min_tcb_evaluation_data_number`` (``--min-tcb-eval-number``): clients' DCAP evidence
    verified with a TCB Info or QE Identity of an older TCB evaluation is refused
    (``CollateralOutdatedError``, :meth:`PlatformVerifier._recent_enough`), and a URL source
    neither keeps nor serves such collateral (it asks again). :class:`AutoTcbEvaluation`
    (``--min-tcb-eval-number auto``): the collateral source also brings Intel's TCB evaluation
    data numbers (verified with the collateral), and the minimum is the one they set at the
    attestation's time with the grace period (docs/dcap.md, "Automatic minimum").
    ``pcs_update`` (``--pcs-update``): the ``update`` a URL source asks Intel PCS for;
    ``pcs_tcb_eval_number`` (``--pcs-tcb-eval-number``): the one TCB evaluation it asks for
    instead (:func:`~confide.collateral.dcap.check_pcs_update`: a URL, not both, not below a
    fixed minimum; checked before anything is opened).
    ``kds``: the AMD KDS base URL (``--kds``) the CAS fetches the VCEKs of SEV-SNP evidence sent
    without one from, cached in ``data_dir/kds-cache``; with ``tee`` ``sev-snp``, also the VCEK
    of its own report when configfs-tsm's certificate table has none, published in its document
    (:func:`~confide.cas.own_vcek.with_kds_vcek`) before the self-check.

    ``nvidia_ocsp``: an OCSP responder URL or a directory of stored responses; NVIDIA GPU chains
    are then checked for revocation (``confide.cas.verifier``, ``confide.cas.revocation``); a
    responder's good responses are also kept in ``data_dir/ocsp-cache``, verified again whenever
    they are read back. Stapled responses sent with GPU evidence are used instead when current;
    ``stapled`` (:data:`~confide.cas.revocation.STAPLED`): no source, stapled responses
    required. ``nvidia_ocsp_max_age``: how old a stapled response may be (``None``: the default,
    :data:`~confide.verify.ocsp.STAPLED_MAX_AGE`).

    ``nvidia_rim``: NVIDIA's RIM service URL or a directory of RIM files: NVIDIA reports sent
    without RIMs are compared with the driver and VBIOS RIMs from there (``confide.cas.rims``);
    a service's verified RIMs are also kept in ``data_dir/rim-cache``, verified again when read.

    ``join``: the URL of a running CAS to obtain the master key from by attestation
    (:mod:`confide.cas.join`, docs/cas.md "Joining a running CAS"), for a data directory that
    holds none; with ``seal`` the key is then sealed into it, otherwise it is held in memory
    only (``cas.master_key_in_memory``) and the TLS and log keys are protected by it.
    ``join_as_successor``: this CAS is another version of the one at ``join`` (its identity
    claims differ; the running CAS releases its key only with its successor board's
    authorisation, and this one accepts only the key the database names).

    ``successor_board``: the successor board (:mod:`confide.cas.successor`, docs/cas.md "Handing
    over to a successor version"), stored authenticated under the master key; only on the start
    that initialises the CAS (creates its master key), else :class:`UsageError`.

    ``witnesses``: the witness keys and quorum of ``--witness-quorum``
    (:mod:`confide.cas.witness_quorum`), bound into the report data (the v2 binding), published in
    the evidence document and recorded in the ``cas-start`` entry; ``None``: the v1 binding.

    ``replica_min_tcb`` (``--replica-min-tcb``, ``tee`` ``sev-snp`` only): the minimum
    ``REPORTED_TCB`` of an SEV-SNP CAS the master key is released to, and, with ``join``, of the
    CAS it is obtained from (:func:`~confide.cas.key_release.appraise_peer`); recorded in the
    ``cas-start`` entry. Without it, an SEV-SNP CAS logs once that replicas' TCB is not judged.

    ``gce_crl`` (``--gce-crl FILE|fetch``): Google's CRLs, against which ``gce-tpm`` evidence's
    AK certificate and intermediates are checked (:mod:`confide.cas.gce_crl`): a file, read once
    here (a file that cannot be read or parsed: the CAS does not start), then before every such
    attestation when it changed; ``fetch``: from the verified chain's distribution points, kept in
    ``data_dir/gce-crl-cache`` with the rollback memory in ``data_dir/gce-crl-newest.json`` (one
    that cannot be read or parsed: the CAS does not start; authenticated under the master key
    and against the ledger in the start transaction, :class:`~confide.cas.gce_crl.RollbackMemory`).
    These, and the other options that can be checked without a key, are checked before any key
    or database state is made: a start refused for them leaves a fresh data directory as it
    found it."""
    check_pcs_update(collateral, pcs_update, pcs_tcb_eval_number, min_tcb_evaluation_data_number)
    if dev and tee is not None:
        raise UsageError(
            f"--dev and --tee {tee} exclude each other: a CAS in a TEE does not accept simulated evidence"
        )
    key_release_clock = _key_release_clock(dev)
    if replica_min_tcb is not None and tee != "sev-snp":
        raise UsageError(
            "--replica-min-tcb is only for --tee sev-snp: it judges the REPORTED_TCB of SEV-SNP"
            " replicas (SGX and TDX replicas need TCB status UpToDate)"
        )
    if tee == "sev-snp" and replica_min_tcb is None:  # once, at start (docs/limitations.md)
        logging.getLogger("confide.cas").warning(
            json.dumps(
                {
                    "event": "replica-tcb-not-judged",
                    "reason": "SEV-SNP has no TCB status and no --replica-min-tcb was given: the master key"
                    " is released to (and with --join obtained from) a CAS of the same image whatever"
                    " the firmware and microcode of its host",
                }
            )
        )
    if join is not None:
        _join_preconditions(join, data_dir, dev=dev, tee=tee)
    elif join_as_successor:
        raise UsageError("--join-as-successor needs --join URL")
    # The options that can be checked without a key, checked before any key or database state
    # is created (a start refused for them leaves a fresh data directory as it found it): the
    # sources and the files they read. The highest TCB evaluation numbers verified so far
    # (docs/cas.md "No going back"): read before anything is verified; a file that does not parse
    # stops the CAS (authenticated once the master key is open, below). It and the rollback
    # memory of --gce-crl fetch are not touched by a rotation an open_master_key below finishes.
    tcb_floor = TcbEvaluationFloor(data_dir / FLOOR_FILE)
    dcap_source = (
        source_for(
            collateral,
            min_tcb_evaluation_data_number=(
                min_tcb_evaluation_data_number if isinstance(min_tcb_evaluation_data_number, int) else None
            ),
            floor=tcb_floor.minimum,
            # --min-tcb-eval-number auto: Intel's TCB evaluation data numbers come with the
            # collateral (the same fetches, caches and prefetch), and what is below the minimum
            # they set is not kept on disk
            tcb_evaluation_numbers=isinstance(min_tcb_evaluation_data_number, AutoTcbEvaluation),
            tcb_recovery_grace=(
                min_tcb_evaluation_data_number.grace
                if isinstance(min_tcb_evaluation_data_number, AutoTcbEvaluation)
                else None
            ),
            pcs_update=pcs_update,  # --pcs-update: a URL source's update= (docs/dcap.md)
            pcs_tcb_eval_number=pcs_tcb_eval_number,  # --pcs-tcb-eval-number: tcbEvaluationDataNumber=
        )
        if collateral
        else None
    )
    ocsp_cache = None
    if nvidia_ocsp and nvidia_ocsp != STAPLED:
        ocsp_source = ocsp_source_for(nvidia_ocsp, "--nvidia-ocsp")
        # A responder's good responses are kept on disk too (re-verified when read back), so a
        # restarted CAS does not need the responder for them; a directory of stored responses
        # is read as it is now (confide.cas.revocation).
        ocsp_dir = data_dir / "ocsp-cache" if isinstance(ocsp_source, HttpOcspSource) else None
        ocsp_cache = OcspCache(ocsp_source, directory=ocsp_dir)
    rim_source, rim_where, rim_cache = None, "NVIDIA RIM service", None
    if nvidia_rim:  # verified and cached by confide.cas.rims
        rim_source = rim_source_for(nvidia_rim, "--nvidia-rim")
        rim_where = (
            f"NVIDIA RIM service {public_url(nvidia_rim)}" if is_url(nvidia_rim) else "the RIM directory"
        )
        # A service's RIMs are kept on disk too (re-verified when read back); a directory of
        # RIM files is read as it is.
        rim_cache = data_dir / "rim-cache" if is_url(nvidia_rim) else None
    kds_source = None
    if kds is not None:
        if not is_url(kds):
            raise UsageError(f"--kds: got {kds[:80]!r}, expected an http(s) URL (e.g. {DEFAULT_KDS_URL})")
        # No cache of its own: confide.cas.kds keeps the verified one, in kds-cache. The CRL is
        # checked when the KDS serves one (a mirror may not).
        kds_source = KdsHttpCollateral(None, base_url=kds, crl_required=False)
    gce_crl_file = None
    if gce_crl is not None:
        # fetch: its CRLs and rollback memory in the data directory (read now: a rollback memory
        # that cannot be parsed stops the start; cached CRLs are checked when used)
        gce_crl_file = gce_crl_source(gce_crl, data_dir)
        if isinstance(gce_crl_file, GceCrlFile):
            gce_crl_file.load()  # a file that cannot be read or parsed: refused at startup
    rollback_memory = gce_crl_file.newest if isinstance(gce_crl_file, GceCrlFetcher) else None
    data_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(data_dir, 0o700)
    database = Database(db_url or f"sqlite:///{(data_dir / 'cas.db').resolve()}")
    if successor_board is not None:
        _initialising(data_dir, database, join)
    master = b""
    if join is None:
        # Before any other key or the database is read or written: finish an interrupted
        # master-key rotation, and refuse a key that is not the one the database names
        # (confide.cas.rotation).
        master = open_master_key(data_dir, seal, database)
    sim_dir = data_dir / "sim"
    sim_platform = SimPlatform.load_or_create(sim_dir) if dev else None
    sim_key = sim_platform.public_key if sim_platform is not None else None
    # Built before the CAS's own evidence: with --kds, its KDS cache also supplies the CAS's own
    # VCEK when configfs-tsm's certificate table has none (confide.cas.own_vcek).
    verifier = PlatformVerifier(
        sim_key=sim_key, dcap_source=dcap_source, amd_roots=amd_roots,
        kds=kds_source, kds_cache=data_dir / "kds-cache", kds_where=f"AMD KDS {public_url(kds or '')}",
        nvidia_ocsp=ocsp_cache, nvidia_ocsp_stapled_only=nvidia_ocsp == STAPLED,
        nvidia_ocsp_max_age=nvidia_ocsp_max_age or STAPLED_MAX_AGE,
        nvidia_rim=rim_source, nvidia_rim_where=rim_where, nvidia_rim_cache=rim_cache,
        min_tcb_evaluation_data_number=min_tcb_evaluation_data_number, tcb_floor=tcb_floor,
        gce_crl=gce_crl_file,
    )  # fmt: skip
    joined: JoinResult | None = None
    if join is not None:
        # docs/cas.md "Joining a running CAS": the key from an attested CAS, never from a file
        # (the verifier first: it checks the running CAS's evidence and this CAS's own).
        joined = _join(
            join, data_dir, database, tee=tee, quote_provider=quote_provider,
            sim_platform=sim_platform, verifier=verifier, collateral=dcap_source, amd_roots=amd_roots,
            successor=join_as_successor, min_tcb=replica_min_tcb,
        )  # fmt: skip
        master = joined.master_key
        if seal is not None:
            install_master_key(data_dir, master, seal)
    sealer = Sealer(master)
    if joined is None:
        add_pending_key(sealer, data_dir, seal, database)  # an online rotation in progress: both keys
    in_memory = joined is not None and seal is None
    master_key = describe_key_holding(seal, in_memory)
    # The TLS and log keys are protected by the master key whenever it is not a plain file.
    protect = sealer if seal is not None or in_memory else None
    key_path, cert_path = _tls_identity(data_dir, host, protect)
    env = {"CONFIDE_CAS_CERT": str(cert_path.resolve())}
    signer = load_log_signer(data_dir, f"confide-cas/{_cert_sha256(cert_path)[:16]}", protect)
    env["CONFIDE_LOG_KEY"] = signer.verifier.vkey
    cas_evidence = None
    log_key = env["CONFIDE_LOG_KEY"]
    cert_der = x509.load_pem_x509_certificate(cert_path.read_bytes()).public_bytes(serialization.Encoding.DER)
    # The same for every evidence the CAS obtains; with witnesses, the v2 binding covers them.
    report_data = cas_binding(cert_der, log_key, witnesses)
    bound: dict[str, Any] = {}
    if witnesses is not None:
        bound = {"binding": CAS_BINDING_TEXT_V2, "witnesses": witnesses.to_json()}
    if sim_platform is not None:
        platform = sim_platform
        env["CONFIDE_SIM_DIR"] = str(sim_dir.resolve())
        measurement = cas_dev_measurement()  # the CAS's code (confide.cas.dev_measurement)

        def simulated(now: datetime) -> dict[str, Any]:
            evidence = platform.issue(
                report_data=report_data, measurement=measurement, timestamp=int(now.timestamp())
            )
            return {
                "platform": "sim",
                "evidence": base64.b64encode(evidence.to_bytes()).decode(),
                "binding": CAS_BINDING_TEXT,
                "log_key": log_key,
                **bound,
            }

        sim_pem = platform.public_key.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        check = SelfCheck(cert_der, sim_key_pem=sim_pem)
        cas_evidence = CasEvidence(simulated, check=check, clock=clock)
    elif tee is not None:
        provider = quote_provider if quote_provider is not None else quote_provider_for(tee)
        own_kds = verifier.kds

        def from_tee(now: datetime) -> dict[str, Any]:
            document = tee_document(tee, provider, report_data)
            if own_kds is not None:  # blocking: at startup, or in the refresher's thread
                document = with_kds_vcek(document, own_kds, now)
            return {**document, "log_key": log_key, **bound}

        check = SelfCheck(
            cert_der, collateral=dcap_source, amd_roots=amd_roots,
            min_tcb_evaluation_data_number=min_tcb_evaluation_data_number,
        )  # fmt: skip
        try:
            cas_evidence = CasEvidence(from_tee, check=check, clock=clock)
        except ConfideError as exc:
            raise _not_starting(tee, exc) from None
        summary = cas_evidence.check
        if summary is not None and not summary["verified"]:  # logged once, not on every refresh
            logging.getLogger("confide.cas").warning(
                json.dumps({"event": "cas-evidence-unchecked", "tee": tee, "reason": summary["reason"]})
            )
    database.migrate()
    # The TLS key is made once per data directory and kept by every master-key rotation (only
    # re-protected), so the key a read request names (``cas``) is this CAS's for its life.
    cas = Cas(
        database, sealer, verifier, events=LedgerEventSink(), crl_validity=crl_validity,
        tls_spki_sha256=spki_sha256(x509.load_der_x509_certificate(cert_der)),
    )  # fmt: skip
    cas.master_key_in_memory = in_memory
    # docs/cas.md "Joining a running CAS": this CAS releases its key to attested CAS that are
    # the same as its own current evidence says it is (none without evidence of its own).
    own: OwnEvidence | None = None
    if cas_evidence is not None:
        published, own_check = cas_evidence, check

        def own_evidence(at: datetime) -> VerifiedEvidence:
            return own_check.verified(published.body, at)

        own = own_evidence
    successors = Successors(cas, own=own, clock=key_release_clock)
    cas.key_release = KeyReleaser(
        cas, own, successors=successors, min_tcb=replica_min_tcb, clock=key_release_clock
    )
    if own is not None and replica_min_tcb is not None and cas_evidence is not None:
        # Judged now and after every refresh of the own evidence; logged on a change of state.
        watch = OwnTcbWatch(own, replica_min_tcb, clock)
        watch.judge()
        cas.key_release.own_tcb = watch
        cas_evidence.on_refresh = watch.judge
    if own is not None:  # docs/cas.md "Retiring the old version": a retired version does not start
        successors.refuse_retired_start(own, ledger=False)  # on the rows; the ledger's entries below
    with database.write() as conn:
        master_key_id = bind_master_key(conn, master)
        # Policy rows stored before schema 14, sealed as found, once (confide.cas.policy_rows).
        policies_sealed = seal_clear_rows(conn, sealer)
        # Revocations recorded before schema 13, MAC'd as found, once (confide.cas.revocation_auth).
        first_bound = bind_unbound(conn, sealer)
        if first_bound is not None:
            cas.events.record(conn, EVENT_BOUND, None, first_bound)
        # Policy heads, versions and approvals stored before schema 15, MAC'd as found, once
        # (confide.cas.policy_auth): the upgrade trusts them as they are now.
        heads_bound = bind_policy_rows(conn, sealer)
        if heads_bound is not None:
            cas.events.record(conn, POLICY_ROWS_BOUND, None, heads_bound)
        # Each secret's current version, for a database from before schema 19: its newest row as
        # found, once (confide.cas.secret_heads; trust on first migration).
        secrets_bound = bind_secret_heads(conn, sealer, time.time())
        if secrets_bound is not None:
            cas.events.record(conn, SECRET_HEADS_BOUND, None, secrets_bound)
        # The DCAP TCB evaluation floor file checked under the master key and against the
        # ledger's latest floor; a failure is recorded and the floor restored (confide.cas.tcb_floor).
        floor_event = tcb_floor.authenticate(sealer, ledger_floor(conn, store=True))
        if floor_event is not None:
            record_floor(conn, cas.events, *floor_event)
        if rollback_memory is not None:
            # The rollback memory of Google's CRLs, likewise (confide.cas.gce_crl, state_auth).
            memory_event = rollback_memory.authenticate(
                sealer, ledger_state(conn, RollbackMemory, store=True)
            )
            if memory_event is not None:
                record_state(conn, cas.events, RollbackMemory, *memory_event)
        cas.events.record(
            conn, "cas-start", None,
            {"dev": dev, "tls_cert_sha256": _cert_sha256(cert_path), "log_key": env["CONFIDE_LOG_KEY"],
             "master_key": master_key, "master_key_id": master_key_id, **({"tee": tee} if tee else {}),
             **({"joined": joined.summary()} if joined is not None else {}),
             **({"witnesses": witnesses.to_json()} if witnesses is not None else {}),
             **({"replica_min_tcb": min_tcb_text(replica_min_tcb)} if replica_min_tcb is not None else {})},
        )  # fmt: skip
        if successor_board is not None:
            # docs/cas.md "Handing over to a successor version": set now; changed only by its quorum.
            record = store_board(conn, sealer, master_key_id, successor_board, time.time())
            cas.events.record(
                conn, EVENT_BOARD, None,
                {"board": record["board"], "board_sha256": successor_board.sha256,
                 "master_key_id": master_key_id},
            )  # fmt: skip
    if policies_sealed:
        _scrub(database)  # the clear contents out of the database files (as after a rotation)
    # Each policy's latest head entry, from the ledger's entries (confide.cas.head_index): the
    # stored snapshot verified and the entries after it scanned now, a newer snapshot stored.
    # An altered snapshot or entry is refused here: the CAS does not start on it.
    index = cas.policy_auth.index
    try:
        with database.read() as conn:
            index.refresh(conn)
        with database.write() as conn:
            index.store(conn, time.time())
        if own is not None:
            # the retirement check again, the board's rows judged against the ledger's board
            # entries (confide.cas.board_ledger): rows rolled back to before a retirement refused
            successors.refuse_retired_start(own)
    except ConfideError:
        database.dispose()  # not starting: the pool's connections closed
        raise
    tcb_floor.on_raise = _state_recorder(cas, tcb_floor)
    if rollback_memory is not None:
        rollback_memory.on_raise = _state_recorder(cas, rollback_memory)
    if joined is not None:
        logging.getLogger("confide.cas").info(
            json.dumps({"event": "cas-joined", "master_key_id": master_key_id, "master_key": master_key,
                        **joined.summary()})
        )  # fmt: skip
    return cas, cas_evidence, key_path, cert_path, env, signer


def _state_recorder(cas: Cas, state: AuthenticatedState[Any]) -> Callable[[dict[str, Any]], None]:
    """What a raise of an authenticated state (the DCAP TCB evaluation floor, the rollback memory
    of Google's CRLs) calls with what its entry says besides the state: a ledger entry (its
    ``…-raised``, :func:`~confide.cas.state_auth.record_state`) of the state as it is when the
    entry is written, merged with the ledger's, in a thread of its own: the raise happens while
    evidence is verified, possibly inside another write transaction. A failure is logged
    (``…-not-recorded``); the next start records a state the ledger lacks
    (:meth:`~confide.cas.state_auth.AuthenticatedState.authenticate`)."""
    lock = threading.Lock()
    kind = type(state)

    def write(extra: dict[str, Any]) -> None:
        try:
            with lock, cas.db.write() as conn:
                record_state(conn, cas.events, kind, kind.EVENT_RAISED, {**extra, **state.payload()})
        except Exception as exc:  # logged, never raised into a daemon thread's void
            logging.getLogger("confide.cas").warning(
                json.dumps({"event": kind.EVENT_NOT_RECORDED, "error": type(exc).__name__})
            )

    def record(extra: dict[str, Any]) -> None:
        threading.Thread(target=write, args=(extra,), name=f"{kind.EVENT_RAISED}-entry", daemon=True).start()

    return record


def describe_key_holding(seal: SealingKeyProvider | None, in_memory: bool) -> str:
    """How the master key is held, as the ``cas-start`` entry and the ``listening`` line say."""
    if seal is not None:
        return f"sealed: {seal.name} ({seal.binding})"
    return "in memory (released by an attested CAS)" if in_memory else "plain file"


DEV_KEY_RELEASE_CLOCK_SKEW_ENV = "CONFIDE_DEV_KEY_RELEASE_CLOCK_SKEW_FILE"


def _key_release_clock(dev: bool) -> Callable[[], float]:
    """The clock of master-key releases to other CAS and of the successor board's documents
    (approvals, withdrawals, board changes and retirements: their ``expires`` and ``time``,
    judged at release; docs/cas.md "Handing over to a successor version"): the system clock.
    With ``--dev`` only, ``$CONFIDE_DEV_KEY_RELEASE_CLOCK_SKEW_FILE`` names a file of seconds
    added to it, read at each use (no file: none): the end-to-end tests move this clock past an
    approval's expiry instead of waiting for it (docs/cas.md "Test knobs"). Without ``--dev`` the
    variable is refused: a production CAS keeps the system clock.

    Only forward (0 or more seconds): the sweeps of spent nonces and evidence (in the attestation
    path) run on the system clock, so a key-release clock set back would find its nonces' and
    evidence's rows swept while they still verify (a replay). A file that cannot be read or does
    not hold such a number is a :class:`UsageError` (at start too: the file is read once there)."""
    path = os.environ.get(DEV_KEY_RELEASE_CLOCK_SKEW_ENV)
    if not path:
        return time.time
    if not dev:
        raise UsageError(f"${DEV_KEY_RELEASE_CLOCK_SKEW_ENV} is a development knob: it needs --dev")
    skew_file = Path(path)

    def clock() -> float:
        try:
            with skew_file.open("rb") as f:
                raw = f.read(_MAX_SKEW_TEXT + 1)
        except FileNotFoundError:
            return time.time()
        except OSError as exc:  # a directory, no permission...: not a crash of the route (500)
            raise UsageError(
                f"${DEV_KEY_RELEASE_CLOCK_SKEW_ENV}: cannot read {str(skew_file)!r}: {exc.strerror or exc}"
            ) from None
        try:
            skew = float(raw.decode("ascii")) if len(raw) <= _MAX_SKEW_TEXT else math.nan
        except (UnicodeDecodeError, ValueError):
            skew = math.nan
        if not (math.isfinite(skew) and skew >= 0):
            raise UsageError(
                f"${DEV_KEY_RELEASE_CLOCK_SKEW_ENV}: {raw[:40]!r} is not a number of seconds (0 or more)"
            )
        return time.time() + skew

    clock()  # a bad file refuses the start (exit 2), not each key release later
    return clock


_MAX_SKEW_TEXT = 64  # bytes of $CONFIDE_DEV_KEY_RELEASE_CLOCK_SKEW_FILE read: a number, with room


def _join_preconditions(url: str, data_dir: Path, *, dev: bool, tee: str | None) -> None:
    """``--join``: what is refused before anything is read or written (docs/cas.md "Joining a
    running CAS")."""
    shown = public_url(url)
    if not url.startswith("https://"):
        raise UsageError(f"--join: got {shown!r}, expected the https:// URL of a running CAS")
    if tee is None and not dev:
        raise UsageError(
            "--join needs --tee or --dev: a CAS releases its master key only to evidence that it runs"
            " the same code on the same kind of TEE"
        )
    if tee == "az-vtpm":
        raise UsageError(
            "--join: not with --tee az-vtpm (the hardware measurement of an Azure confidential VM is the"
            " paravisor's, not the CAS's; see docs/limitations.md)"
        )
    present = sorted(p.name for p in data_dir.glob(f"{PLAIN_NAME}*"))
    if present:
        raise UsageError(
            f"--join: {data_dir} already holds {', '.join(present)}: start without --join (the key is"
            " there), or join with a data directory that holds no master key"
        )


def _initialising(data_dir: Path, database: Database, join: str | None) -> None:
    """``--successor-board``: only on the start that initialises the CAS, i.e. creates its master
    key (no key file, a database that names no key, no --join). The board is authenticated
    under that key; on any later start the operator could otherwise replace a board (or add
    one) after deleting the row, so it is fixed when the CAS is initialised."""
    if (
        join is not None
        or any(data_dir.glob(f"{PLAIN_NAME}*"))  # master.key, master.key.sealed, pending ones
        or stored_master_key_id(database) is not None
    ):
        raise UsageError(
            "--successor-board is set only when the CAS is initialised (the start that creates its "
            "master key); this CAS has a master key already: its board changes only with the "
            "board's quorum (confide cas successor board propose)"
        )


def _join(
    url: str,
    data_dir: Path,
    database: Database,
    *,
    tee: str | None,
    quote_provider: QuoteProvider | None,
    sim_platform: SimPlatform | None,
    verifier: PlatformVerifier,
    collateral: DcapCollateralSource | None,
    amd_roots: AmdRootStore | None,
    successor: bool = False,
    min_tcb: ReplicaMinTcb | None = None,
) -> JoinResult:
    """``--join URL``: the master key from the attested CAS at ``url`` (:func:`join_cas`), for a
    data directory without a master key, on a database without an online rotation in progress.
    Any failure keeps its error class (exit code) and says that the CAS does not start."""
    shown = public_url(url)
    if stored_next_key_id(database) is not None:
        raise UsageError(
            "--join: an online master-key rotation is in progress on this database; join after it"
        )
    sim_pem = None
    if sim_platform is not None:
        sim_pem = sim_platform.public_key_pem()
        simulator = SimQuoteProvider(sim_platform, cas_dev_measurement())
        obtain: Callable[[bytes], Evidence] = simulator.get_evidence
    else:
        assert tee is not None
        provider = quote_provider if quote_provider is not None else quote_provider_for(tee)
        wanted = _TEE_PLATFORMS[tee]

        def obtain(report_data: bytes) -> Evidence:
            evidence = provider.get_evidence(report_data)
            if evidence.platform not in wanted:
                expected = " or ".join(sorted(p.value for p in wanted))
                raise UsageError(
                    f"got {evidence.platform} evidence from {evidence.provider}, expected {expected}"
                )
            return evidence

    try:
        return join_cas(
            url, obtain=obtain, verifier=verifier, sim_key_pem=sim_pem, collateral=collateral,
            amd_roots=amd_roots, expected_key_id=stored_master_key_id(database), successor=successor,
            min_tcb=min_tcb,
        )  # fmt: skip
    except ConfideError as exc:
        message = f"--join {shown}: cannot obtain the master key, not starting: {exc.message}"
        raise type(exc)(message) from None


def _cert_sha256(cert_path: Path) -> str:
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


def parse_witnesses(specs: tuple[str, ...]) -> tuple[tuple[str, NoteVerifier], ...]:
    out = []
    for spec in specs:
        url, sep, vkey = spec.partition("=")
        if not sep or not url.startswith(("http://", "https://")):
            raise UsageError(
                f"--witness: got {spec[:80]!r}, expected URL=VKEY (http://host:port=name+hash+key)"
            )
        out.append((url, NoteVerifier.from_vkey(vkey)))
    return tuple(out)


def serve(
    data_dir: Path,
    listen: str,
    *,
    dev: bool,
    db_url: str | None,
    collateral: str | None,
    witnesses: tuple[tuple[str, NoteVerifier], ...] = (),
    witness_tls: ssl.SSLContext | None = None,
    seal: SealingKeyProvider | None = None,
    tee: str | None = None,
    evidence_refresh: float = DEFAULT_REFRESH_SECONDS,
    renewal_interval: float = DEFAULT_SWEEP_SECONDS,
    kds: str | None = None,
    nvidia_ocsp: str | None = None,
    crl_validity: float = DEFAULT_CRL_VALIDITY,
    nvidia_rim: str | None = None,
    nvidia_ocsp_max_age: timedelta | None = None,
    public_url: str | None = None,
    http_limits: HttpLimits | None = None,
    attest_rate: Rate | None = ATTEST_RATE,
    write_rate: Rate | None = WRITE_RATE,
    public_http_listen: str | None = None,
    join: str | None = None,
    session_tickets: int = SESSION_TICKETS,
    join_as_successor: bool = False,
    successor_board: Board | None = None,
    min_tcb_evaluation_data_number: TcbEvaluationMinimum | None = None,
    pcs_update: str | None = None,
    pcs_tcb_eval_number: int | None = None,
    witness_quorum: int | None = None,
    witness_max_lag: float | None = None,
    replica_min_tcb: ReplicaMinTcb | None = None,
    gce_crl: str | None = None,
    opaque_refusals: bool = False,
    refusal_delay: float | None = None,
    metrics_listen: str | None = None,
    metrics_token_file: Path | None = None,
    metrics_cert: Path | None = None,
    metrics_key: Path | None = None,
    metrics_reload_interval: float = 0.0,
    metrics_client_ca: Path | None = None,
    metrics_client_allow: Path | None = None,
    metrics_client_crl: Path | None = None,
) -> None:
    """Run the CAS until killed. ``evidence_refresh``: seconds between re-obtaining its own
    evidence (``--dev``/``--tee``; 0: obtained once, at startup). ``renewal_interval``: seconds
    between sweeps that renew due certificates (and re-issue due CRLs). ``crl_validity``: seconds
    from a CRL's thisUpdate to its nextUpdate. ``nvidia_ocsp``, ``nvidia_ocsp_max_age``,
    ``nvidia_rim``: see :func:`prepare`. ``public_url``: the base of CRL distribution points
    (``--public-url``, :func:`confide.cas.crl.parse_public_url`). ``http_limits``: connection
    limits and timeouts (default :class:`HttpLimits`' defaults); ``attest_rate``,
    ``write_rate``: per-client rate limits (``None``: off; docs/cas.md "HTTP API").
    ``public_http_listen``: ``HOST:PORT`` of the plain-HTTP listener for the public CRLs and CA
    certificates (``--public-http-listen``, :mod:`confide.cas.public_http`), with limits of its
    own of the same values as ``http_limits`` (its request heads: at most
    :data:`~confide.httpserve.limits.PUBLIC_MAX_HEAD` bytes).
    ``join``: obtain the master key from the running CAS at this URL (:func:`prepare`), as a
    successor version with ``join_as_successor``. ``successor_board``: see :func:`prepare`.
    ``session_tickets``: TLS 1.3 session tickets per handshake (:data:`SESSION_TICKETS`).
    ``min_tcb_evaluation_data_number``: see :func:`prepare`.
    ``witness_quorum``: how many of ``witnesses`` must cosign a checkpoint of the log before the
    CAS starts, and whose rollback or fork answer halts its releases (``--witness-quorum``,
    :mod:`confide.cas.witness_quorum`); ``witness_max_lag``: seconds without a quorum after
    which releases wait (``--witness-max-lag``; ``None``: no bound).
    ``replica_min_tcb``, ``gce_crl``: see :func:`prepare`. ``opaque_refusals``: answer every recorded
    attestation refusal, and every refused volume tag report, with one fixed message, logging
    the reason (``--opaque-refusals``, docs/cas.md "Opaque refusals"); ``refusal_delay``:
    seconds after its request's arrival before such an answer is sent (``--refusal-delay``;
    ``None``: :data:`~confide.cas.refusal_delay.DEFAULT_REFUSAL_DELAY`, 0: at once), only with
    ``opaque_refusals`` (a :class:`UsageError` otherwise). ``metrics_listen``: ``HOST:PORT`` of
    a plain-HTTP listener that serves ``/metrics`` only, which the API then does not
    (``--metrics-listen``, :mod:`confide.httpserve.metrics_listener`), with limits of its own
    of the values of ``http_limits``; ``metrics_token_file``: the bearer tokens ``/metrics``
    requires, wherever it is served (``--metrics-token-file``; read at once: a missing file, or
    a bad one, is a :class:`UsageError`); ``metrics_cert``, ``metrics_key``: the metrics
    listener serves HTTPS with them (``--metrics-cert``, ``--metrics-key``; read at once);
    ``metrics_client_ca``: its TLS handshake requires a client certificate chaining to this PEM
    bundle (``--metrics-client-ca``, only with ``metrics_cert``; read at once, and again with
    the certificate); ``metrics_client_allow``: only the client certificates it lists are served
    (``--metrics-client-allow``, only with ``metrics_client_ca``); ``metrics_client_crl``: the
    CRLs of the bundle's CAs the handshake checks a client certificate against
    (``--metrics-client-crl``, only with ``metrics_client_ca``; read with the certificate). The
    token file, the allow-list and the certificate are read again on ``SIGHUP`` and, every
    ``metrics_reload_interval`` seconds (``--metrics-reload-interval``; 0: on ``SIGHUP``
    only), when they changed (docs/cas.md "Metrics: a listener of its own, tokens")."""
    if refusal_delay is not None and not opaque_refusals:
        raise UsageError(
            "--refusal-delay needs --opaque-refusals: it delays the opaque refusals' answers, and"
            " without the option a refusal says why anyway"
        )
    delay = check_refusal_delay(DEFAULT_REFUSAL_DELAY if refusal_delay is None else refusal_delay)
    quorum = None
    if witness_quorum is not None:
        quorum = WitnessQuorum(witnesses, witness_quorum, witness_max_lag)
    elif witness_max_lag is not None:
        raise UsageError("--witness-max-lag needs --witness-quorum")
    host, port = _parse_listen(listen)
    public_addr = metrics_addr = None
    if public_http_listen is not None:
        public_addr = _parse_listen(public_http_listen, "--public-http-listen", "0.0.0.0:8080")
    if metrics_listen is not None:
        metrics_addr = _parse_listen(metrics_listen, "--metrics-listen", "0.0.0.0:9090")
    metrics_tokens, metrics_tls, metrics_allow = _metrics_files(
        metrics_addr,
        metrics_token_file,
        metrics_cert,
        metrics_key,
        metrics_reload_interval,
        metrics_client_ca,
        metrics_client_allow,
        metrics_client_crl,
    )
    _configure_logging()
    data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    # Before anything in the directory is read or written, held until the process exits: a
    # second `cas serve` on it, or `confide cas rotate-master-key`, is refused meanwhile.
    with run_lock(data_dir, db_url, exclusive=False) as lock:
        _forget_client_env(data_dir)
        _serve(data_dir, host, port, lock=lock, dev=dev, db_url=db_url, collateral=collateral,
               witnesses=witnesses, witness_tls=witness_tls, seal=seal, tee=tee,
               evidence_refresh=evidence_refresh,
               renewal_interval=renewal_interval, kds=kds, nvidia_ocsp=nvidia_ocsp,
               crl_validity=crl_validity, nvidia_rim=nvidia_rim,
               nvidia_ocsp_max_age=nvidia_ocsp_max_age, public_url=public_url,
               http_limits=http_limits if http_limits is not None else HttpLimits(),
               attest_rate=attest_rate, write_rate=write_rate, public_addr=public_addr,
               join=join, session_tickets=session_tickets, join_as_successor=join_as_successor,
               successor_board=successor_board,
               min_tcb_evaluation_data_number=min_tcb_evaluation_data_number, quorum=quorum,
               pcs_update=pcs_update, pcs_tcb_eval_number=pcs_tcb_eval_number,
               replica_min_tcb=replica_min_tcb, gce_crl=gce_crl, opaque_refusals=opaque_refusals,
               refusal_delay=delay if opaque_refusals else 0.0, metrics_addr=metrics_addr,
               metrics_tokens=metrics_tokens, metrics_tls=metrics_tls,
               metrics_allow=metrics_allow)  # fmt: skip


def _forget_client_env(data_dir: Path) -> None:
    """Remove the ``client.env`` an earlier run of the directory left (docs/cas.md "The data
    directory"), once this process holds the run lock: it names a CAS that does not listen (not
    yet, or no longer at that address), and ``until [ -e DIR/client.env ]`` would go on at once.
    The new one is written when this CAS listens; a start that fails leaves none."""
    path = data_dir / "client.env"
    try:
        path.unlink(missing_ok=True)
    except OSError as exc:
        raise StorageError(f"cannot remove the earlier {path}: {exc.strerror or exc}") from None


def _withdraw_client_env(path: Path) -> None:
    """A stopping CAS removes the ``client.env`` it wrote (it still holds the run lock: no other
    CAS wrote it meanwhile), so that ``until [ -e DIR/client.env ]`` right after a restart's
    ``cas serve &`` waits for the new CAS rather than going on with the stopped one's address
    before the new process has taken the lock (docs/cas.md "The data directory"). A CAS killed
    without a chance to clean up (SIGKILL) leaves it for the next start to remove."""
    try:
        path.unlink(missing_ok=True)
    except OSError as exc:
        logging.getLogger("confide.cas").warning(
            json.dumps(
                {"event": "client-env-not-removed", "path": str(path), "error": exc.strerror or str(exc)}
            )
        )


def _metrics_files(
    metrics_addr: tuple[str, int] | None,
    token_file: Path | None,
    cert: Path | None,
    key: Path | None,
    reload_interval: float,
    client_ca: Path | None = None,
    client_allow: Path | None = None,
    client_crl: Path | None = None,
) -> tuple[MetricsTokenFile | None, CertificateReloader | None, MetricsClientAllowList | None]:
    """The metrics listener's token file, certificate and client allow-list (docs/cas.md
    "Metrics: a listener of its own, tokens"), each read at once (a :class:`UsageError` before
    anything is written), reloaded on ``SIGHUP`` and polled every ``reload_interval`` seconds."""
    if reload_interval and token_file is None and cert is None:
        raise UsageError(
            "--metrics-reload-interval needs --metrics-token-file or --metrics-cert and --metrics-key"
        )
    tokens, tls = metrics_files(
        metrics_addr is not None,
        token_file,
        cert,
        key,
        poll_interval=reload_interval,
        logger="confide.cas",
        client_ca=client_ca,
        client_crl=client_crl,
    )
    allow = client_allow_file(client_allow, tls, poll_interval=reload_interval, logger="confide.cas")
    if tokens is not None or tls is not None:
        # Until the server handles it (once it listens), a SIGHUP is ignored rather than fatal.
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
    return tokens, tls, allow


def uvicorn_server(
    app: Any,
    key_path: Path,
    cert_path: Path,
    key_password: str | None,
    limits: HttpLimits,
    companions: Sequence[Companion] = (),
    *,
    session_tickets: int = SESSION_TICKETS,
    refusal_delay: float = 0.0,
    reloaders: Sequence[FileReloader[Any]] = (),
) -> uvicorn.Server:
    """The CAS's uvicorn server (uvloop, httptools) over TLS, with ``limits``: uvicorn builds
    the TLS context from the key and certificate as usual, then the loop's server is made plain
    TCP and the TLS layer is put under it by :meth:`HttpLimits.tls_protocol`, so that connections
    over a limit are closed before their handshake (``confide.httpserve.limits``). ``companions``:
    the second listeners' servers (:func:`public_http_server`, the metrics listener's) and
    sockets, served on the same event loop, started after this one and stopped before it
    finishes. ``session_tickets``: TLS
    1.3 session tickets sent after each handshake (:data:`SESSION_TICKETS`). ``refusal_delay``:
    ``cas serve --opaque-refusals --refusal-delay`` (0 without), added to the time a stopping
    CAS gives the requests in progress (:data:`GRACEFUL_SHUTDOWN`). ``reloaders``: the metrics
    listener's files, reloaded on ``SIGHUP`` and polled
    (:class:`~confide.httpserve.server.ServerWithCompanions`)."""
    config = uvicorn.Config(
        app,
        ssl_keyfile=str(key_path),
        ssl_keyfile_password=key_password,
        ssl_certfile=str(cert_path),
        ssl_version=ssl.PROTOCOL_TLS_SERVER,
        log_config=None,
        access_log=False,
        # httptools, with request heads bounded (MAX_HEAD) and timed, and bodies timed
        http=limits.http_protocol(),
        # A client is the address it connects from (the connection and rate limits): uvicorn's
        # default would take X-Forwarded-For from 127.0.0.1, or from FORWARDED_ALLOW_IPS.
        proxy_headers=False,
        loop="uvloop",
        # docs/cas.md "Opaque refusals": a refusal waiting for --refusal-delay when the CAS
        # stops is answered before it exits (uvicorn cancels what is still running after this
        # time: a 500 and a traceback instead of the refusal)
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN + math.ceil(refusal_delay),
    )
    config.load()
    context = config.ssl
    if context is None:  # pragma: no cover - the key and certificate are always given
        raise UsageError("the CAS serves TLS only")
    context.num_tickets = session_tickets
    config.ssl = None
    config.http_protocol_class = limits.tls_protocol(config.http_protocol_class, context)  # type: ignore[assignment]
    return _CasServer(config, companions, reloaders)


def public_http_server(app: PublicApp, limits: HttpLimits) -> uvicorn.Server:
    """The public listener's uvicorn server (:mod:`confide.cas.public_http`): plain HTTP/1.1
    (httptools), connections admitted by :meth:`HttpLimits.plain_protocol`, request heads
    bounded and timed as there; no lifespan, no proxy headers
    (:func:`confide.httpserve.server.plain_server`). It handles no signal: the TLS server it is
    given to (:func:`uvicorn_server`) stops it."""
    return plain_server(app, limits)


class _CasServer(ServerWithCompanions):
    """uvicorn's server, also running the second listeners' (``companions``: the public one,
    the metrics one) on its loop (:class:`~confide.httpserve.server.ServerWithCompanions`).
    ``on_stop``: called once the server has stopped serving, before the process ends (by the
    signal that stopped it, which uvicorn raises again: code after ``run()`` does not run then)."""

    on_stop: Callable[[], None] | None = None

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        # uvicorn re-raises the signal that stopped it when this block ends, still on the event
        # loop, and the process dies of it: the log lines of that last loop iteration (its
        # "Finished server process" included), which _LoopBatchedHandler holds until the end of
        # the iteration, are written first.
        with super().capture_signals():
            try:
                yield
            finally:
                if self.on_stop is not None:
                    self.on_stop()
                for handler in logging.getLogger().handlers:
                    handler.flush()


def _serve(
    data_dir: Path,
    host: str,
    port: int,
    *,
    lock: RunLock,
    dev: bool,
    db_url: str | None,
    collateral: str | None,
    witnesses: tuple[tuple[str, NoteVerifier], ...],
    witness_tls: ssl.SSLContext | None,
    seal: SealingKeyProvider | None,
    tee: str | None,
    evidence_refresh: float,
    renewal_interval: float,
    kds: str | None,
    nvidia_ocsp: str | None,
    crl_validity: float,
    nvidia_rim: str | None,
    nvidia_ocsp_max_age: timedelta | None,
    public_url: str | None = None,
    http_limits: HttpLimits,
    attest_rate: Rate | None,
    write_rate: Rate | None,
    public_addr: tuple[str, int] | None = None,
    join: str | None,
    session_tickets: int,
    join_as_successor: bool = False,
    successor_board: Board | None = None,
    min_tcb_evaluation_data_number: TcbEvaluationMinimum | None = None,
    pcs_update: str | None = None,
    pcs_tcb_eval_number: int | None = None,
    quorum: WitnessQuorum | None = None,
    replica_min_tcb: ReplicaMinTcb | None = None,
    gce_crl: str | None = None,
    opaque_refusals: bool = False,
    refusal_delay: float = 0.0,
    metrics_addr: tuple[str, int] | None = None,
    metrics_tokens: MetricsTokenFile | None = None,
    metrics_tls: CertificateReloader | None = None,
    metrics_allow: MetricsClientAllowList | None = None,
) -> None:
    public_limits = listener_limits(http_limits) if public_addr is not None else None
    metrics_limits = listener_limits(http_limits) if metrics_addr is not None else None
    reserve_descriptors(
        http_limits.max_connections,
        (public_limits.max_connections if public_limits else 0)
        + (metrics_limits.max_connections if metrics_limits else 0),
    )
    cas, cas_evidence, key_path, cert_path, env, signer = prepare(
        data_dir, host=host, dev=dev, db_url=db_url, collateral=collateral, seal=seal, tee=tee, kds=kds,
        nvidia_ocsp=nvidia_ocsp, crl_validity=crl_validity, nvidia_rim=nvidia_rim,
        nvidia_ocsp_max_age=nvidia_ocsp_max_age, join=join, join_as_successor=join_as_successor,
        successor_board=successor_board, min_tcb_evaluation_data_number=min_tcb_evaluation_data_number,
        pcs_update=pcs_update, pcs_tcb_eval_number=pcs_tcb_eval_number,
        witnesses=quorum.attested() if quorum is not None else None,
        replica_min_tcb=replica_min_tcb, gce_crl=gce_crl,
    )  # fmt: skip
    cas.public_url = public_url  # docs/cas.md "CRL distribution points"
    cas.opaque_refusals = opaque_refusals  # docs/cas.md "Opaque refusals"
    # docs/cas.md "Witness quorum": with --witness-quorum, a quorum cosigns the log as it is
    # before anything else starts (a rollback or fork answer, or no quorum: not starting).
    guard = WitnessGuard(quorum) if quorum is not None else None
    checkpointer = Checkpointer(cas, signer, witnesses=witnesses, witness_tls=witness_tls, guard=guard)
    checkpointer.start()
    # docs/cas.md "Online rotation": the admin channel, and a rotation a crash interrupted resumes.
    gce_crls = getattr(cas.verifier, "gce_crl", None)
    rotation = OnlineRotation(
        data_dir, cas.db, cas.sealer, seal, cas.events, lock, floor=getattr(cas.verifier, "tcb_floor", None),
        rollback_memory=gce_crls.newest if isinstance(gce_crls, GceCrlFetcher) else None,
    )  # fmt: skip
    admin = AdminChannel(data_dir, rotation)
    if not cas.master_key_in_memory:
        # A key held in memory only has no file an online rotation could replace (it would
        # write the new key in plain): such a CAS takes no admin requests; it joins again.
        admin.start(required=False)
    if rotation.in_progress():
        rotation.start()
    renewer = CertificateRenewer(cas, renewal_interval)  # docs/cas.md "Certificate renewal"
    renewer.start()
    # docs/cas.md "What a policy's current version rests on": the ledger entries appended since
    # (other replicas' too) scanned every few seconds, off the attestation path
    head_scanner = HeadIndexRefresher(cas.policy_auth.index, cas.db)
    head_scanner.start()
    refresher = None
    if cas_evidence is not None and evidence_refresh > 0:
        refresher = EvidenceRefresher(cas_evidence, evidence_refresh)
        refresher.start()
    sock = _bind(host, port, "--listen")
    url = _url("https", host, sock)
    public = public_app = None
    if public_addr is not None and public_limits is not None:
        public_sock = _bind(*public_addr, "--public-http-listen")
        public_url_bound = _url("http", public_addr[0], public_sock)
        public_app = PublicApp(cas, public_limits)
        public = (public_http_server(public_app, public_limits), public_sock)
    metrics_sock = metrics_url = None
    if metrics_addr is not None:
        metrics_sock = _bind(*metrics_addr, "--metrics-listen")
        scheme = "http" if metrics_tls is None else "https"
        metrics_url = _url(scheme, metrics_addr[0], metrics_sock) + METRICS_PATH
    # docs/cas.md "Metrics: a listener of its own, tokens": a refused scrape is counted and
    # logged, at most 5 lines a second (the ledger servers' refusal log)
    metrics_auth = None
    reloaders: list[FileReloader[Any]] = []
    metrics_refusals = RefusalLog(logger="confide.cas")
    if metrics_tokens is not None:
        metrics_auth = MetricsAuth(metrics_tokens, metrics_refusals, logger="confide.cas")
        reloaders.append(metrics_tokens)
    env = {"CONFIDE_CAS_URL": url, **env, "CONFIDE_LOG_URL": f"{url}/v1/log"}
    lines = "".join(f"export {k}={shlex.quote(v)}\n" for k, v in env.items())
    write_atomic(data_dir / "client.env", lines.encode())
    app = create_app(
        cas,
        cas_evidence=cas_evidence,
        http_limits=http_limits,
        attest_limiter=RateLimiter(attest_rate) if attest_rate is not None else None,
        write_limiter=RateLimiter(write_rate) if write_rate is not None else None,
        public_http=public_app,
        witness_guard=guard,
        # docs/cas.md "Opaque refusals": each opaque refusal answered --refusal-delay after its
        # request arrived (0: at once)
        refusal_delay=RefusalDelay(refusal_delay) if opaque_refusals and refusal_delay > 0 else None,
        metrics_on_api=metrics_sock is None,
        metrics_auth=metrics_auth,
    )
    companions: list[Companion] = [public] if public is not None else []
    if metrics_sock is not None and metrics_limits is not None:
        client_certs = None
        if metrics_tls is not None and metrics_tls.client_ca is not None:
            client_certs = ClientCertScrapers(logger="confide.cas", tls=metrics_tls)  # named by certificate
        if metrics_tls is not None:
            # docs/cas.md "Metrics": a failed handshake counted by reason and logged
            watch_handshakes(metrics_limits, metrics_refusals)
        metrics_app = MetricsListenerApp(
            app.render_metrics, auth=metrics_auth, limits=metrics_limits, logger="confide.cas",
            client_certs=client_certs, allow=metrics_allow, refusals=metrics_refusals,
        )  # fmt: skip
        if metrics_allow is not None:
            reloaders.append(metrics_allow)
        if app.metrics_registry is not None:
            app.metrics_registry.register(metrics_app)
            if metrics_tls is not None:
                app.metrics_registry.register(metrics_tls)  # confide_metrics_tls_certificate_...
        if metrics_tls is not None:
            reloaders.append(metrics_tls)
        companions.append((plain_server(metrics_app, metrics_limits, metrics_tls), metrics_sock))
    protected = seal is not None or cas.master_key_in_memory  # as prepare() protects the TLS key
    password = tls_key_password(cas.sealer).decode() if protected else None
    server = uvicorn_server(
        app, key_path, cert_path, password, http_limits, companions, session_tickets=session_tickets,
        refusal_delay=refusal_delay if opaque_refusals else 0.0,  # waiting refusals finish on a stop
        reloaders=reloaders,
    )  # fmt: skip
    if isinstance(server, _CasServer):
        server.on_stop = functools.partial(_withdraw_client_env, data_dir / "client.env")
    logging.getLogger("confide.cas").info(
        json.dumps(
            {
                "event": "listening",
                "url": env["CONFIDE_CAS_URL"],
                "public_http": public_url_bound if public is not None else None,
                "metrics_http": metrics_url,
                "metrics_token": metrics_tokens is not None,
                "metrics_scrapers": list(metrics_tokens().names) if metrics_tokens is not None else None,
                "metrics_tls": metrics_tls.loaded.sha256 if metrics_tls is not None else None,
                "metrics_client_ca": (
                    list(metrics_tls.loaded.client_ca.sha256)
                    if metrics_tls is not None and metrics_tls.loaded.client_ca is not None
                    else None
                ),
                "metrics_client_crl": (
                    list(metrics_tls.loaded.client_crl.issuers)
                    if metrics_tls is not None and metrics_tls.loaded.client_crl is not None
                    else None
                ),
                "metrics_client_allow": len(metrics_allow()) if metrics_allow is not None else None,
                "metrics_reload_interval": reloaders[0].poll_interval if reloaders else None,
                "public_url": public_url,
                "dev": dev,
                "tee": tee,
                "kds": kds,
                "evidence_refresh": evidence_refresh if cas_evidence is not None else None,
                "self_check": cas_evidence.check if cas_evidence is not None else None,
                "nvidia_ocsp": nvidia_ocsp is not None,
                "nvidia_ocsp_stapled_only": nvidia_ocsp == STAPLED,
                "nvidia_rim": nvidia_rim is not None,
                "gce_crl": gce_crl is not None,
                "opaque_refusals": opaque_refusals,
                "refusal_delay": refusal_delay if opaque_refusals else None,
                "max_connections": http_limits.max_connections,
                "max_connections_per_ip": http_limits.max_per_client,
                "body_timeout": http_limits.body_timeout,
                "attest_rate": list(attest_rate) if attest_rate is not None else None,
                "write_rate": list(write_rate) if write_rate is not None else None,
                "tls_session_tickets": session_tickets,
                "db": cas.db.redacted_url,
                "master_key": describe_key_holding(seal, cas.master_key_in_memory),
                "joined": public_url_of(join) if join is not None else None,
                "witnesses": len(witnesses),
                "witness_quorum": quorum.quorum if quorum is not None else None,
                "witness_max_lag": quorum.max_lag if quorum is not None else None,
            }
        )
    )
    try:
        server.run(sockets=[sock])
    finally:
        if refresher is not None:
            refresher.stop()
        renewer.stop()
        head_scanner.stop()
        checkpointer.stop()
        admin.stop()
