"""Google's CRLs for ``gce-tpm`` evidence: ``cas serve --gce-crl FILE|fetch`` (docs/gce-tpm.md,
"Revocation (CRLs)"). ``fetch``: :class:`GceCrlFetcher` (below); a file: :class:`GceCrlFile`.

The file holds the CRLs of the CAs above GCE AK certificates (DER, concatenated, or PEM ``X509
CRL`` blocks; at most :data:`MAX_FILE_SIZE` bytes and
:data:`~confide.verify.gce_crl.MAX_CRLS` CRLs), as Google publishes them at the CRL
Distribution Points its certificates name. It is read before phase 1 of every ``gce-tpm``
attestation (:meth:`confide.cas.verifier.PlatformVerifier.collateral_job`), parsed again only
when it changed (device, inode, size or modification time), so an operator replaces it
atomically (write, then rename) while the CAS runs. What it holds is verified at every use
(:mod:`confide.verify.gce_crl`: signed by the certificate's issuer, current at the attestation's
time, fail closed when a certificate's CRL is missing); a file that cannot be read or parsed
refuses every ``gce-tpm`` attestation with its error until it is fixed.

``fetch`` keeps what it fetched in the CAS's data directory (:func:`gce_crl_source`): the CRLs,
read back as hostile input (:class:`GceCrlFetcher`), so that a restarted CAS without egress
still verifies while they are current, and the rollback memory (:class:`RollbackMemory`, MAC'd
under the master key and mirrored in the ledger), so that a restarted CAS still refuses a CRL
older than one it saw. The data directory, not the
user's cache directory (``$XDG_CACHE_HOME/confide/pcs`` of the PCS source, which the CLI shares):
the rollback memory is state of this CAS, not a cache a cleaner may empty, the CAS's other
fetch caches (``kds-cache``, ``ocsp-cache``, ``rim-cache``) are there, and one ``cas serve``
holds a data directory at a time (its run lock), so no other process writes these files.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import os
import re
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import httpx2
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from confide.cas.cache_files import CacheFiles, Log
from confide.cas.fetch_cache import FetchCache
from confide.cas.state_auth import MACS_EXPECTED, AuthenticatedState, Found, parse_macs
from confide.errors import (
    CollateralError,
    CollateralMissingError,
    ConfideError,
    NetworkError,
    ParseError,
    StorageError,
)
from confide.fsutil import read_regular
from confide.httpbody import answer_client, fetch
from confide.verify.gce_crl import crl_dp_urls, crl_is_current, iso_z, load_crls
from confide.verify.x509util import check_crl, name_of

__all__ = [
    "CACHE_DIR_NAME",
    "CACHE_ENTRIES",
    "DISK_ENTRIES",
    "FAILURE_GRACE",
    "LEDGER_META",
    "MAX_CRL_SIZE",
    "MAX_FILE_SIZE",
    "MAX_STATE_SIZE",
    "NEWEST_ENTRIES",
    "STATE_INFO",
    "STATE_NAME",
    "CrlSource",
    "GceCrlFetcher",
    "GceCrlFile",
    "HttpCrlSource",
    "Newest",
    "RollbackMemory",
    "crl_scope",
    "gce_crl_source",
]

MAX_FILE_SIZE = 16 * 1024 * 1024
"""The largest ``--gce-crl`` file read (bytes)."""


class GceCrlFile:
    """The CRLs of ``path`` (module docstring), kept parsed while the file does not change."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._kept: tuple[tuple[int, int, int, int], tuple[x509.CertificateRevocationList, ...]] | None = None

    def load(self) -> tuple[x509.CertificateRevocationList, ...]:
        """The CRLs now in the file: :class:`StorageError` when it cannot be read,
        :class:`ParseError` when it is too large or not CRLs."""
        what = f"--gce-crl {str(self.path)!r}"
        try:
            with open(self.path, "rb") as f:
                st = os.fstat(f.fileno())
                stamp = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
                with self._lock:
                    kept = self._kept
                if kept is not None and kept[0] == stamp:
                    return kept[1]
                data = f.read(MAX_FILE_SIZE + 1)
        except OSError as exc:
            raise StorageError(f"{what}: {exc.strerror or exc}") from None
        if len(data) > MAX_FILE_SIZE:
            raise ParseError(f"more than {MAX_FILE_SIZE} bytes", structure=what)
        crls = load_crls(data, what)
        with self._lock:
            self._kept = (stamp, crls)
        return crls


MAX_CRL_SIZE = 1024 * 1024
"""The largest CRL fetched from a distribution point (bytes)."""
MAX_POINTS = 3
"""At most this many distribution point URLs of one certificate are asked."""
FETCH_TIME = 30.0
"""Seconds one CRL's answer may take in all."""
CACHE_ENTRIES = 64
"""CRLs kept in memory (by a certificate's points and issuer), each until its nextUpdate."""
DISK_ENTRIES = 256
"""CRL files kept in the disk cache directory; past that the oldest are removed."""
NEWEST_ENTRIES = 1024
"""CRL scopes (issuer and Issuing Distribution Point) whose newest CRL is remembered."""
MAX_STATE_SIZE = 512 * 1024
"""The largest rollback memory file read (bytes): :data:`NEWEST_ENTRIES` entries take < 200 KiB."""
STATE_VERSION = 2  # 1: before the MAC (bound once at the first start)
STATE_INFO = b"confide-gce-crl-newest/v1"
"""The HKDF info of the rollback memory's MAC key (RFC 5869 §2.3; :mod:`confide.cas.state_auth`)."""
LEDGER_META = "gce_crl_newest"
"""The ``meta`` row of the ledger's merged rollback memory (:func:`~confide.cas.state_auth.record_state`)."""
FAILURE_GRACE = 30.0
"""Seconds for which a failed fetch's error is given again without asking the points (as
AMD KDS's, :data:`confide.cas.kds.FAILURE_GRACE`)."""
CACHE_DIR_NAME = "gce-crl-cache"
"""The disk cache of ``--gce-crl fetch`` in the CAS's data directory."""
STATE_NAME = "gce-crl-newest.json"
"""The rollback memory of ``--gce-crl fetch`` in the CAS's data directory."""

log = logging.getLogger("confide.cas")

_Key = tuple[tuple[str, ...], bytes]
"""A certificate's distribution point URLs and its issuer's DER: a CRL fetched for one issuer is
never handed out for another's certificate naming the same URL."""


def _key(urls: Sequence[str], issuer: x509.Certificate) -> _Key:
    return tuple(urls), issuer.public_bytes(Encoding.DER)


def _digest(*parts: bytes) -> str:
    """SHA-256 of ``parts``, each length-prefixed (no two lists of parts give the same input)."""
    h = hashlib.sha256()
    for part in parts:
        h.update(len(part).to_bytes(8, "big"))
        h.update(part)
    return h.hexdigest()


class CrlSource(Protocol):
    """Where :class:`GceCrlFetcher` gets a CRL's bytes: :class:`HttpCrlSource`, or a test's."""

    def fetch(self, url: str) -> bytes:
        """The answer at ``url`` (unverified: hostile), or a :class:`ConfideError`."""
        ...


class HttpCrlSource:
    """GETs over ``httpx2`` (``transport``: any ``httpx2.BaseTransport``, for tests; no
    redirects; HTTP 200 only; at most :data:`MAX_CRL_SIZE` bytes within :data:`FETCH_TIME`
    seconds, head and body; no connection kept alive)."""

    def __init__(self, *, transport: httpx2.BaseTransport | None = None, timeout: float = 10.0) -> None:
        # No connection kept alive: each fetch's deadline must see its connection made.
        self._client = answer_client(transport=transport, timeout=timeout, follow_redirects=False)

    def close(self) -> None:
        self._client.close()

    def fetch(self, url: str) -> bytes:
        what = f"CRL at {url}"

        def status(response: httpx2.Response) -> None:
            if response.status_code != 200:
                raise NetworkError(f"GET {url}: got HTTP {response.status_code}, expected 200")

        try:
            # FETCH_TIME for the whole answer, its head too
            return fetch(
                self._client, "GET", url, limit=MAX_CRL_SIZE, within=FETCH_TIME, check=status,
                too_large=lambda how: ParseError(f"the answer {how}", structure=what),
            ).content  # fmt: skip
        except httpx2.HTTPError as exc:
            raise NetworkError(f"GET {url}: {type(exc).__name__}: {exc}") from None


@dataclass(frozen=True, slots=True)
class Newest:
    """What the newest CRL of a scope said: its thisUpdate and CRL number (``None``: it had none)."""

    this_update: datetime
    crl_number: int | None


_HEX64 = re.compile(r"[0-9a-f]{64}")
_NUMBER = re.compile(r"[0-9a-f]{1,40}")  # RFC 5280 §5.2.3: at most 20 octets
_TIME = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z")


def crl_scope(crl: x509.CertificateRevocationList, issuer: x509.Certificate) -> str:
    """The scope a CRL number counts in (RFC 5280 §5.2.3: per CRL issuer and scope): the
    issuer's name and public key, and the CRL's Issuing Distribution Point (its DER; none: one
    scope), hashed. A renewed issuer certificate with the same name and key keeps its scope."""
    try:
        idp = crl.extensions.get_extension_for_class(x509.IssuingDistributionPoint).value.public_bytes()
    except x509.ExtensionNotFound:
        idp = b""
    spki = issuer.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    return _digest(issuer.subject.public_bytes(), spki, idp)


def _crl_number(crl: x509.CertificateRevocationList) -> int | None:
    try:
        return crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    except x509.ExtensionNotFound:
        return None


State = dict[str, Newest]
"""The rollback memory: the newest CRL per scope (:func:`crl_scope`)."""


def _bounded(state: State) -> State:
    """At most :data:`NEWEST_ENTRIES` scopes: those whose newest CRL is oldest are forgotten."""
    if len(state) <= NEWEST_ENTRIES:
        return state
    kept = sorted(state.items(), key=lambda item: (item[1].this_update, item[0]))[-NEWEST_ENTRIES:]
    return dict(kept)


def _merge(a: State, b: State) -> State:
    """Per scope, the later thisUpdate and the higher CRL number of ``a`` and ``b``."""
    out = dict(a)
    for scope, theirs in b.items():
        ours = out.get(scope)
        if ours is None:
            out[scope] = theirs
            continue
        numbers = [n for n in (ours.crl_number, theirs.crl_number) if n is not None]
        out[scope] = Newest(max(ours.this_update, theirs.this_update), max(numbers) if numbers else None)
    return _bounded(out)


class RollbackMemory(AuthenticatedState[State]):
    """The newest CRL seen per scope (:func:`crl_scope`; at most :data:`NEWEST_ENTRIES`, those
    whose newest CRL is oldest forgotten first): an older one after it is refused (a network
    attacker's rollback to before a revocation). Kept in ``path`` (``None``: memory only), read
    when made and replaced atomically (:func:`~confide.fsutil.write_atomic`, mode 0600) whenever
    a scope's newest CRL changes, before that CRL is used, so a restarted CAS still refuses the
    older one. The file is hostile input: at most :data:`MAX_STATE_SIZE` bytes, parsed strictly;
    one that cannot be read or parsed is an error (:class:`StorageError` / :class:`ParseError`:
    the CAS does not start) rather than forgotten. A failed write is logged
    (``gce-crl-newest-not-written``), the memory kept. Thread-safe.

    **Authenticated** (docs/cas.md "Revocation of GCE AK certificates"), as the DCAP TCB
    evaluation floor is (:mod:`confide.cas.state_auth`): the file carries HMAC-SHA256 under
    HKDF-SHA256 of each master key held (info :data:`STATE_INFO`); each change is a ledger entry
    (``gce-crl-newest-raised``: the whole memory, and the issuer and scope that changed), the
    ledger's merged memory kept in the ``meta`` row :data:`LEDGER_META`. At each start
    (:meth:`authenticate`, in the start transaction) the memory is the merge of the file's and
    the ledger's: a deleted file, or one behind the ledger (a backup, a replica), takes the
    ledger's (logged ``gce-crl-newest-from-ledger``); one whose MAC fails is merged with the
    ledger's, written back MAC'd, logged as a warning and recorded (``gce-crl-newest-altered``);
    one of version 1 (before the MAC) is MAC'd as found (``gce-crl-newest-bound``). Until then
    (a CAS that has not opened its master key) the file is used unchecked and a change held in
    memory only."""

    VERSION = STATE_VERSION
    INFO = STATE_INFO
    META = LEDGER_META
    EVENT_RAISED = "gce-crl-newest-raised"
    EVENT_ALTERED = "gce-crl-newest-altered"
    EVENT_BOUND = "gce-crl-newest-bound"
    EVENT_FROM_LEDGER = "gce-crl-newest-from-ledger"
    EVENT_NOT_WRITTEN = "gce-crl-newest-not-written"
    EVENT_NOT_RECORDED = "gce-crl-newest-not-recorded"
    FILE_MODE = 0o600
    ACTION = (
        "the memory is the newer of the file's and the ledger's CRLs, written back MAC'd; "
        "restore the file from a backup of this CAS if it was not you"
    )
    merge = staticmethod(_merge)

    @staticmethod
    def read(path: Path) -> Found[State] | None:
        return _read_state(path)

    @staticmethod
    def members(state: State) -> dict[str, Any]:
        return {"crls": {scope: _entry(state[scope]) for scope in sorted(state)}}

    @staticmethod
    def from_members(payload: object) -> State | None:
        if not isinstance(payload, dict):
            return None
        try:
            return _crls(payload.get("crls"), ParseError)
        except ParseError:
            return None

    @staticmethod
    def below(a: State, b: State) -> bool:
        return _merge(a, b) != a

    @staticmethod
    def empty() -> State:
        return {}

    def __len__(self) -> int:
        return len(self._state)

    def get(self, scope: str) -> Newest | None:
        with self._lock:
            return self._state.get(scope)

    def admit(self, crl: x509.CertificateRevocationList, issuer: x509.Certificate, what: str) -> None:
        """Refuse ``crl`` (:class:`CollateralError`) when a newer one of its scope was seen:
        a later thisUpdate, or a higher CRL number (both having one); else remember it (the
        larger of each), persisted first when it changed, and then recorded (:attr:`on_raise`)."""
        scope = crl_scope(crl, issuer)
        this_update, number = crl.last_update_utc, _crl_number(crl)
        if number is not None and not 0 <= number < 1 << 160:
            # RFC 5280 §5.2.3: a non-negative integer of at most 20 octets (and what the file holds)
            expected = "expected a non-negative integer of at most 20 octets"
            raise ParseError(f"cRLNumber: {expected}", structure=what)
        with self._lock:
            newest = self._state.get(scope)
            if newest is not None:
                if this_update < newest.this_update:
                    raise CollateralError(
                        f"{what}: thisUpdate {iso_z(this_update)} is older than that of a CRL of this"
                        f" issuer seen before ({iso_z(newest.this_update)}): a rollback, refused"
                    )
                if number is not None and newest.crl_number is not None and number < newest.crl_number:
                    raise CollateralError(
                        f"{what}: CRL number {number:#x} is lower than that of a CRL of this issuer"
                        f" seen before ({newest.crl_number:#x}): a rollback, refused"
                    )
            # the file holds whole seconds: a thisUpdate with a fraction is remembered as its second
            merged = _merge(self._state, {scope: Newest(this_update.replace(microsecond=0), number)})
            changed = merged != self._state
            if changed:
                self._state = merged
                self._write(merged)  # a failure logged; the memory kept for the life of the process
        if changed and self.on_raise is not None:
            self.on_raise({"issuer": issuer.subject.rfc4514_string(), "scope": scope})


def _entry(newest: Newest) -> dict[str, str | None]:
    return {
        "this_update": iso_z(newest.this_update.replace(microsecond=0)),
        "crl_number": None if newest.crl_number is None else format(newest.crl_number, "x"),
    }


def _read_state(path: Path) -> Found[State] | None:
    """The file's memory, its version and MACs (not yet checked); absent: ``None``."""
    what = f"the --gce-crl fetch rollback memory {str(path)!r}"
    advice = " (deleting it makes the CAS take the newest CRLs its ledger recorded)"
    try:
        data = read_regular(path, MAX_STATE_SIZE)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise StorageError(f"{what}: {exc.strerror or exc}{advice}") from None
    if len(data) > MAX_STATE_SIZE:
        raise ParseError(f"more than {MAX_STATE_SIZE} bytes{advice}", structure=what)

    def bad(why: str) -> ParseError:
        return ParseError(f"{why}{advice}", structure=what)

    def object_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        out = dict(pairs)
        if len(out) != len(pairs):
            raise bad("a key given twice")
        return out

    try:
        doc = json.loads(data.decode("utf-8"), object_pairs_hook=object_pairs, parse_constant=_no_constant)
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise bad("not JSON") from None
    # "macs" only in version 2; there, missing or empty is a MAC that fails (authenticate)
    if (
        not isinstance(doc, dict)
        or type(doc.get("v")) is not int
        or doc["v"] not in (1, STATE_VERSION)
        or not {"v", "crls"} <= set(doc) <= {"v", "crls", *(["macs"] if doc["v"] == STATE_VERSION else [])}
    ):
        raise bad(
            f'expected {{"v": {STATE_VERSION}, "crls": {{...}}, "macs": {{...}}}} (or version 1 without macs)'
        )
    macs = parse_macs(doc.get("macs", {}))
    if macs is None:
        raise bad(MACS_EXPECTED)
    return Found(doc["v"], _crls(doc["crls"], bad), macs)


def _crls(crls: object, bad: Callable[[str], ParseError]) -> State:
    """The ``crls`` member (the file's, or a ledger entry's), parsed strictly."""
    if not isinstance(crls, dict) or len(crls) > NEWEST_ENTRIES:
        raise bad(f"crls: expected an object of at most {NEWEST_ENTRIES} entries")
    out: State = {}
    for scope, entry in crls.items():
        if not _HEX64.fullmatch(scope):
            raise bad(f"crls: key {scope[:80]!r} is not 64 lower-case hex digits")
        if not isinstance(entry, dict) or set(entry) != {"this_update", "crl_number"}:
            raise bad(f"crls[{scope[:16]}…]: expected this_update and crl_number")
        when, number = entry["this_update"], entry["crl_number"]
        if not isinstance(when, str) or not _TIME.fullmatch(when):
            raise bad(f"crls[{scope[:16]}…].this_update: expected YYYY-MM-DDTHH:MM:SSZ")
        try:
            this_update = datetime.strptime(when, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
        except ValueError:
            raise bad(f"crls[{scope[:16]}…].this_update: not a date") from None
        if number is not None and (not isinstance(number, str) or not _NUMBER.fullmatch(number)):
            raise bad(f"crls[{scope[:16]}…].crl_number: expected null or at most 40 lower-case hex digits")
        out[scope] = Newest(this_update, None if number is None else int(number, 16))
    return out


def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


class GceCrlFetcher:
    """``cas serve --gce-crl fetch``: the CRLs at the http(s) CRL Distribution Points of a
    *verified* AK chain's certificates (:func:`confide.verify.gce_tpm.verified_ak_chain`: the
    CAS asks nothing about certificates a request made up), fetched from ``source``
    (:class:`HttpCrlSource` by default, with ``transport`` and ``timeout``). A fetched CRL
    is kept (by the certificate's points and its issuer, at most :data:`CACHE_ENTRIES`) only
    when it is issued and signed by the certificate's issuer, and used while it is current
    (thisUpdate ≤ at ≤ nextUpdate): its nextUpdate bounds the cache. For each certificate the
    first point giving such a CRL wins; none: the last point's error (the reasons of all), a
    certificate naming no http(s) point: :class:`CollateralMissingError`. The verifier checks
    what it returns again.

    Rollback: a CRL older than the newest seen of its issuer and Issuing Distribution Point
    (:class:`RollbackMemory`, kept in ``state``; ``None``: memory only) is refused.

    On disk (``directory``; ``None``: memory only; the CAS gives ``DATA_DIR/gce-crl-cache``):
    each fetched CRL, as the point gave it, in ``<sha256 of points and issuer>.crl``
    (:class:`~confide.cas.cache_files.CacheFiles`: atomically, mode 0600, at most
    :data:`DISK_ENTRIES`, the oldest removed). A memory miss reads its file first, as hostile
    input, checked exactly as a fetched CRL (one CRL, issued and signed by the issuer, not a
    rollback) and current at the attestation's ``at``: one that is not current is left and the
    points asked (the file replaced); one that fails a check is removed, logged
    (``gce-crl-cache-rejected``, a warning) and the points asked. So a restarted CAS verifies
    with the CRLs it fetched before, its points unreachable.

    One fetch per certificate at a time (:class:`~confide.cas.fetch_cache.FetchCache`): the
    attestations that need it meanwhile wait for its outcome instead of asking the points
    again; a failed fetch's error is given again for :data:`FAILURE_GRACE` seconds
    (``monotonic``) without asking."""

    def __init__(
        self,
        *,
        transport: httpx2.BaseTransport | None = None,
        timeout: float = 10.0,
        source: CrlSource | None = None,
        directory: Path | None = None,
        state: Path | None = None,
        disk_entries: int = DISK_ENTRIES,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._http: HttpCrlSource | None = None
        if source is None:
            source = self._http = HttpCrlSource(transport=transport, timeout=timeout)
        self.source = source
        self.files = CacheFiles(directory, "*.crl", disk_entries, max_size=MAX_CRL_SIZE)
        self._memory: FetchCache[_Key, x509.CertificateRevocationList] = FetchCache(
            CACHE_ENTRIES, crl_is_current, grace=FAILURE_GRACE, monotonic=monotonic
        )
        self.stats = self._memory.stats
        # The newest CRL per issuer and IDP: an older one after it is refused, even once the kept
        # CRL has fallen due or was dropped, and (with ``state``) after a restart.
        self.newest = RollbackMemory(state)

    @property
    def requests_made(self) -> int:
        """GETs of distribution points so far."""
        return self._memory.fetches

    @property
    def rejected_files(self) -> int:
        """Files of the disk cache that did not pass the checks (removed)."""
        return self.files.rejected

    def close(self) -> None:
        if self._http is not None:
            self._http.close()

    def cached(
        self, chain: Sequence[x509.Certificate], at: datetime
    ) -> tuple[x509.CertificateRevocationList, ...] | None:
        """The current CRLs for every certificate of ``chain`` below its root, from memory
        alone (no I/O); ``None`` when one is missing."""
        out = []
        for cert, issuer in itertools.pairwise(chain):
            crl = self._memory.cached(_key(crl_dp_urls(cert)[:MAX_POINTS], issuer), at)
            if crl is None:
                return None
            out.append(crl)
        return tuple(out)

    def crls(
        self, chain: Sequence[x509.Certificate], at: datetime
    ) -> tuple[x509.CertificateRevocationList, ...]:
        """The current CRLs for every certificate of ``chain`` (verified, leaf first, root
        last) below its root, from memory, else the disk cache, else fetched (blocking)."""
        return tuple(self._crl_for(cert, issuer, at) for cert, issuer in itertools.pairwise(chain))

    def _crl_for(
        self, cert: x509.Certificate, issuer: x509.Certificate, at: datetime
    ) -> x509.CertificateRevocationList:
        urls = crl_dp_urls(cert)[:MAX_POINTS]
        if not urls:
            raise CollateralMissingError(
                f"certificate {name_of(cert)!r} names no http(s) CRL Distribution Point: its revocation"
                " cannot be checked (--gce-crl fetch)"
            )
        return self._memory.get(_key(urls, issuer), at, lambda: self._load(cert, urls, issuer, at))

    def _load(
        self, cert: x509.Certificate, urls: Sequence[str], issuer: x509.Certificate, at: datetime
    ) -> x509.CertificateRevocationList:
        key = _key(urls, issuer)
        name = f"{_digest(*(u.encode() for u in urls), key[1])}.crl"
        stored = self._from_disk(name, issuer, at)
        if stored is not None:
            return stored
        failures: list[ConfideError] = []
        for url in urls:
            try:
                data = self._memory.ask(lambda url=url: self.source.fetch(url))  # type: ignore[misc]
                crl = self._check(data, issuer, f"CRL at {url}")
                self.newest.admit(crl, issuer, f"CRL at {url}")
            except ConfideError as exc:
                failures.append(exc)
                continue
            self.files.store(name, data, _disk_log(name))
            return crl
        last = failures[-1]
        message = f"Google's CRL for {name_of(cert)!r}: " + "; ".join(f.message for f in failures)
        if isinstance(last, ParseError):
            raise ParseError(message)
        raise type(last)(message)

    def _from_disk(
        self, name: str, issuer: x509.Certificate, at: datetime
    ) -> x509.CertificateRevocationList | None:
        """The CRL of file ``name``, checked as a fetched one, if it is current at ``at``."""
        what = f"cached CRL {name}"

        def check(data: bytes, _mtime: float) -> x509.CertificateRevocationList | None:
            crl = self._check(data, issuer, what)
            if not crl_is_current(crl, at):
                return None  # fetched again, and the file replaced
            self.newest.admit(crl, issuer, what)
            return crl

        return self.files.load(name, check, _disk_log(name))

    def _fetch(self, url: str, issuer: x509.Certificate) -> x509.CertificateRevocationList:
        """The CRL at ``url``, checked (:meth:`_check`)."""
        return self._check(self.source.fetch(url), issuer, f"CRL at {url}")

    @staticmethod
    def _check(data: bytes, issuer: x509.Certificate, what: str) -> x509.CertificateRevocationList:
        """One CRL, issued and signed by ``issuer`` (not kept unless its issuer made it)."""
        if len(data) > MAX_CRL_SIZE:
            raise ParseError(f"more than {MAX_CRL_SIZE} bytes", structure=what)
        crls = load_crls(data, what)
        if len(crls) != 1:
            raise ParseError(f"got {len(crls)} CRLs, expected 1", structure=what)
        check_crl(crls[0], issuer, what, scope_checked=True)
        return crls[0]


def _disk_log(name: str) -> Log:
    def log_event(event: str, error: str) -> None:
        # a file that cannot be read or is refused (it is then fetched again), or not written
        log.warning(json.dumps({"event": f"gce-crl-cache-{event}", "file": name, "error": error}))

    return log_event


def gce_crl_source(value: str, data_dir: Path | None = None) -> GceCrlFile | GceCrlFetcher:
    """``--gce-crl``'s value: ``fetch``, else a file (``./fetch`` for a file of that name). With
    ``data_dir`` (the CAS's), ``fetch`` keeps its CRLs in :data:`CACHE_DIR_NAME` and its
    rollback memory in :data:`STATE_NAME` there (read now: a file that cannot be parsed raises)."""
    if value == "fetch":
        if data_dir is None:
            return GceCrlFetcher()
        return GceCrlFetcher(directory=data_dir / CACHE_DIR_NAME, state=data_dir / STATE_NAME)
    return GceCrlFile(Path(value))
