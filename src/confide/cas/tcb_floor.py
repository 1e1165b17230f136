"""No going back: the highest Intel TCB evaluation data numbers this CAS has verified.

Intel raises ``tcbEvaluationDataNumber`` (Intel PCS API v4, "TCB Info" and "Enclave Identity"
models) at each TCB recovery and never lowers it; collateral of an earlier evaluation stays
signed and within its ``nextUpdate`` for weeks. A stale or hostile PCCS (or a runtime replaying
an old bundle) could therefore serve collateral older than collateral the CAS has already
verified, and pass a platform the recovery made out of date, even without a configured minimum
(``cas serve --min-tcb-eval-number``). :class:`TcbEvaluationFloor` remembers, per

- TCB Info: the TEE type and FMSPC (``sgx:00a067110000``, ``tdx:b0c06f000000``),
- QE Identity: the TEE type (``sgx``: the SGX QE's identity, ``tdx``: the TD QE's),

the highest number of collateral from the CAS's own source (``--collateral``) that verified,
and refuses DCAP evidence verified with collateral below it, whatever its source
(:class:`~confide.errors.CollateralOutdatedError`, :meth:`TcbEvaluationFloor.judge`).
Collateral sent with a request is judged by the floor but never raises it: anyone can fetch
Intel's ``update=early`` collateral (a later evaluation, ahead of the ``standard`` one the CAS's
source serves), and a client that raised the floor with it would have every other attestation of
that platform refused until the standard update caught up. The CAS asks its source without
``update=`` (Intel's default, ``standard``) unless ``--pcs-update`` names one, or for the one
evaluation ``--pcs-tcb-eval-number`` names, so what raises the floor is one kind only and the
floor does not flap between two.

The floor is kept in ``DIR/dcap-tcb-evaluation.json`` (not secret: public numbers), replaced
atomically (:func:`~confide.fsutil.write_atomic`: temporary file, fsync, rename, fsync of the
directory) before the raised floor is used in memory, so a restart does not forget it. It is
written only when a number grows (once per TCB recovery per platform): no write per attestation.
A file that does not parse stops the CAS (:class:`~confide.errors.ParseError`) rather than being
forgotten.

**Authenticated** (docs/cas.md "What the floor rests on"). The operator owns the data directory:
a file edited down would let older collateral pass. So the file carries ``macs``: for each master
key the CAS holds, its id and HMAC-SHA256 (RFC 2104) of the tables under HKDF-SHA256 of that key
(RFC 5869 §2, no salt, info :data:`FLOOR_INFO`; the derivation of
:mod:`confide.cas.revocation_auth`, ``Sealer.only(id).derive_key``), compared in constant time
(:func:`hmac.compare_digest`). One MAC per held key, so that a master-key rotation, offline
(:func:`rebind_floor_file`, before its commit) or online (:meth:`TcbEvaluationFloor.rewrite` once
the sealer holds the new key, before the database names it), leaves a file that verifies whether
or not the rotation's commit happened. Each raise is also a ledger entry
(``dcap-tcb-evaluation-floor-raised``, :func:`record_floor`: the whole tables merged with the
ledger's, also kept in a ``meta`` row): the ledger's history, which a file replayed from a
backup (a valid MAC over older numbers) cannot roll back.

At each start, once the master key is open (:meth:`TcbEvaluationFloor.authenticate`, in the start
transaction), the floor is the larger, number by number, of the file's and of the latest floor
the ledger recorded (so neither a file nor a database rolled back alone lowers it):

- a file whose MAC verifies under a held key is used as it is; if the ledger's floor is higher
  (a backup of the file restored, or a replica on a shared database whose peers raised it), or
  there is no file (a new replica, a deleted file), the ledger's numbers are taken and written
  back, logged (``dcap-tcb-evaluation-floor-from-ledger``), no ledger entry (it holds them);
- a file whose MAC does not verify (edited, forged, the MAC removed, under a key the CAS does not
  hold) fails closed: the CAS keeps running with the larger numbers (an edit down is undone as
  far as the ledger knows, an edit up is kept), writes them back MAC'd, logs a warning that
  says what to do, and records ``dcap-tcb-evaluation-floor-altered`` (what failed; whether the
  ledger restored a number);
- a file of an earlier version (``v`` 1, no MAC) is MAC'd as found (raised to the ledger's
  numbers) at the first start, once (``dcap-tcb-evaluation-floor-bound``, saying whether the
  ledger raised a number). On a shared database a replica upgraded after another finds the
  ledger's floor already there, so a version-1 file is bound whenever it is found: a MAC
  stripped to pass a file off as an old one lowers nothing the ledger holds, and shows as a
  second ``bound`` entry;
- a verified file ahead of the ledger (a raise whose entry a crash lost) is recorded then.

The floor can no longer be lowered by editing the file: only a fresh data directory with a
fresh database starts from nothing.
"""

from __future__ import annotations

import hmac
import json
import logging
import re
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from sqlalchemy import Connection

from confide import jsonstrict
from confide.cas.db import EventSink, raw_execute
from confide.cas.secrets import Sealer
from confide.errors import CollateralOutdatedError, ConfideError, ParseError
from confide.fsutil import read_bounded, write_atomic
from confide.verify.result import Platform, VerifiedEvidence

__all__ = [
    "EVENT_ALTERED",
    "EVENT_BOUND",
    "EVENT_FROM_LEDGER",
    "EVENT_RAISED",
    "FLOOR_FILE",
    "FLOOR_INFO",
    "LEDGER_META",
    "TcbEvaluationFloor",
    "floor_mac",
    "floor_tee",
    "ledger_floor",
    "rebind_floor_file",
    "record_floor",
]

FLOOR_FILE = "dcap-tcb-evaluation.json"
FLOOR_VERSION = 2  # 1: before the MAC (bound once at the first start)
FLOOR_INFO = b"confide-dcap-tcb-floor/v1"  # the HKDF info of the MAC key (RFC 5869 §2.3)
EVENT_RAISED = "dcap-tcb-evaluation-floor-raised"
EVENT_ALTERED = "dcap-tcb-evaluation-floor-altered"
EVENT_BOUND = "dcap-tcb-evaluation-floor-bound"
EVENT_FROM_LEDGER = "dcap-tcb-evaluation-floor-from-ledger"  # a log line, not a ledger entry
LEDGER_META = "dcap_tcb_evaluation_floor"  # the meta row: the ledger's merged floor (record_floor)
_KEY_ID = re.compile(r"[0-9a-f]{32}")
_MAC = re.compile(r"[0-9a-f]{64}")
MAX_FILE_SIZE = 1 << 20  # ~20 000 platforms; a CAS sees a few
_STRUCTURE = "TCB evaluation floor"
_LOG = logging.getLogger("confide.cas")
_TEES = {Platform.SGX: "sgx", Platform.TDX: "tdx", Platform.AZURE_TDX_VTPM: "tdx"}
_TCB_INFO_KEY = re.compile(r"(sgx|tdx):[0-9a-f]{12}")  # <TEE type>:<FMSPC, 6 bytes in lower-case hex>
_QE_IDENTITY_KEY = re.compile(r"sgx|tdx")


def floor_tee(platform: Platform) -> str:
    """The TEE type of ``platform``'s Intel collateral: ``sgx`` or ``tdx``."""
    return _TEES[platform]


def _table(value: object, name: str, keys: re.Pattern[str] | None = None) -> dict[str, int]:
    """One table; ``keys``: the form of its keys (the file's, as :meth:`TcbEvaluationFloor.judge`
    writes them: an edited key would match no platform, and that platform's floor would be read
    as none)."""
    if not isinstance(value, dict):
        raise ParseError("not an object", structure=_STRUCTURE, field=name)
    for key, number in value.items():
        if keys is not None and not keys.fullmatch(key):
            raise ParseError(f"key {key[:40]!r}: expected {keys.pattern}", structure=_STRUCTURE, field=name)
        if not isinstance(number, int) or isinstance(number, bool) or not 0 <= number <= 0xFFFF_FFFF:
            raise ParseError(f"{key!r}: not a number 0..2^32-1", structure=_STRUCTURE, field=name)
    return dict(value)


Tables = tuple[dict[str, int], dict[str, int]]  # (TCB Info by "tee:fmspc", QE Identity by tee)


def floor_mac(
    sealer: Sealer, key_id: str, tcb_info: Mapping[str, int], qe_identity: Mapping[str, int]
) -> str:
    """HMAC-SHA256 of the tables under HKDF-SHA256 of the master key ``key_id`` (one ``sealer``
    holds; :class:`KeyError` otherwise), info :data:`FLOOR_INFO` (module docstring)."""
    key = sealer.only(key_id).derive_key(FLOOR_INFO)
    message = json.dumps([key_id, dict(tcb_info), dict(qe_identity)], sort_keys=True, separators=(",", ":"))
    return hmac.new(key, FLOOR_INFO + b"\x00" + message.encode(), "sha256").hexdigest()


def _encode(sealer: Sealer, tcb_info: Mapping[str, int], qe_identity: Mapping[str, int]) -> bytes:
    macs = {kid: floor_mac(sealer, kid, tcb_info, qe_identity) for kid in sorted(sealer.key_ids)}
    doc = {"v": FLOOR_VERSION, "tcb_info": dict(tcb_info), "qe_identity": dict(qe_identity), "macs": macs}
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


class _FloorFile:
    """The parsed file: the tables, its version and its MACs (not yet checked)."""

    def __init__(self, path: Path) -> None:
        raw = read_bounded(  # a regular file: a FIFO put in its place would block the start
            path,
            MAX_FILE_SIZE,
            label=_STRUCTURE,
            expected="a small JSON file",
            structure=_STRUCTURE,
            regular=True,
        )
        try:
            doc = jsonstrict.loads(raw, structure=_STRUCTURE)
        except ParseError as exc:
            raise ParseError(f"{path}: {exc.message}", structure=_STRUCTURE) from None
        if not isinstance(doc, dict) or type(doc.get("v")) is not int or doc["v"] not in (1, FLOOR_VERSION):
            got = f"version {doc.get('v')!r}" if isinstance(doc, dict) else "not an object"
            raise ParseError(
                f"{path}: {got}, expected an object of version 1 or {FLOOR_VERSION}", structure=_STRUCTURE
            )
        # "macs" only in version 2; there, missing or empty is a MAC that fails (authenticate).
        members = {"v", "tcb_info", "qe_identity"}
        if not members <= set(doc) <= members | ({"macs"} if doc["v"] == FLOOR_VERSION else set()):
            want = ", ".join(sorted(members)) + (" (and macs)" if doc["v"] == FLOOR_VERSION else "")
            raise ParseError(f"{path}: expected the members {want}", structure=_STRUCTURE)
        self.version: int = doc["v"]
        self.tcb_info = _table(doc["tcb_info"], "tcb_info", _TCB_INFO_KEY)
        self.qe_identity = _table(doc["qe_identity"], "qe_identity", _QE_IDENTITY_KEY)
        macs = doc.get("macs", {})
        if not isinstance(macs, dict) or not all(
            isinstance(k, str) and _KEY_ID.fullmatch(k) and isinstance(v, str) and _MAC.fullmatch(v)
            for k, v in macs.items()
        ):
            raise ParseError(f"{path}: macs: expected key id (32 hex) -> MAC (64 hex)", structure=_STRUCTURE)
        self.macs: dict[str, str] = dict(macs)

    def verifies(self, sealer: Sealer) -> bool:
        """Whether a MAC under a master key ``sealer`` holds verifies (constant-time compare)."""
        held = [kid for kid in sorted(self.macs) if kid in sealer.key_ids]
        return any(
            hmac.compare_digest(self.macs[kid], floor_mac(sealer, kid, self.tcb_info, self.qe_identity))
            for kid in held
        )


def _merge(a: Tables, b: Tables) -> Tables:
    """The larger number of each entry of ``a`` and ``b``."""
    return (
        {k: max(a[0].get(k, 0), b[0].get(k, 0)) for k in a[0].keys() | b[0].keys()},
        {k: max(a[1].get(k, 0), b[1].get(k, 0)) for k in a[1].keys() | b[1].keys()},
    )


def _below(a: Tables, b: Tables) -> bool:
    """Whether some number of ``a`` is lower than ``b``'s (missing: 0)."""
    return any(a[i].get(k, 0) < n for i in (0, 1) for k, n in b[i].items())


def _tables(payload: object) -> Tables | None:
    """The tables of a floor entry's payload (or of the meta row); ``None`` if they do not parse."""
    try:
        if not isinstance(payload, dict):
            return None
        return _table(payload["tcb_info"], "tcb_info"), _table(payload["qe_identity"], "qe_identity")
    except (KeyError, ParseError):
        return None


def ledger_floor(conn: Connection, *, store: bool = False) -> Tables | None:
    """The floor the ledger recorded: the merge of every ``dcap-tcb-evaluation-floor-*`` entry
    (each records the merged floor as it then was, so the latest is the merge of all), read from
    the ``meta`` row :data:`LEDGER_META` that :func:`record_floor` writes in the same transaction
    (one row, not a scan of the events at every start); without that row, from the entries
    themselves, and with ``store`` (in a write transaction: the start's) the row is written then,
    empty tables included, so the scan happens once. ``None`` when the ledger recorded none. A
    payload that does not parse counts for nothing (it cannot lower anything: the file's numbers
    still count)."""
    row = raw_execute(conn, "SELECT value FROM meta WHERE key = ?", (LEDGER_META,)).fetchone()
    merged: Tables | None = None
    if row is not None:
        try:
            merged = _tables(json.loads(row[0]))
        except ValueError:
            merged = None
    if merged is None:
        rows = raw_execute(
            conn,
            "SELECT payload FROM events WHERE type IN (?, ?, ?)",
            (EVENT_RAISED, EVENT_ALTERED, EVENT_BOUND),
        ).fetchall()
        merged = ({}, {})
        for (payload,) in rows:
            try:
                tables = _tables(json.loads(payload))
            except ValueError:
                tables = None
            if tables is not None:
                merged = _merge(merged, tables)
        if store:
            _store(conn, merged)
    return merged if merged[0] or merged[1] else None


def _store(conn: Connection, tables: Tables) -> None:
    value = json.dumps(
        {"tcb_info": tables[0], "qe_identity": tables[1]}, sort_keys=True, separators=(",", ":")
    )
    if raw_execute(conn, "SELECT 1 FROM meta WHERE key = ?", (LEDGER_META,)).fetchone() is None:
        raw_execute(conn, "INSERT INTO meta (key, value) VALUES (?, ?)", (LEDGER_META, value))
    else:
        raw_execute(conn, "UPDATE meta SET value = ? WHERE key = ?", (value, LEDGER_META))


def record_floor(conn: Connection, events: EventSink, type_: str, payload: dict[str, Any]) -> None:
    """Record the floor entry ``type_`` in the caller's write transaction: ``payload``'s tables
    merged with the ledger's floor (:func:`ledger_floor`; replicas on one database each record
    their own raises), its other members as they are; and the merged floor in the ``meta`` row
    :data:`LEDGER_META`."""
    tables = _tables(payload) or ({}, {})
    merged = _merge(tables, ledger_floor(conn) or ({}, {}))
    events.record(conn, type_, None, {**payload, "tcb_info": merged[0], "qe_identity": merged[1]})
    _store(conn, merged)


def rebind_floor_file(data_dir: Path, old_key: bytes, new_key: bytes) -> str | None:
    """For an offline master-key rotation (:func:`confide.cas.rotation.rotate_master_key`, before
    its commit): a floor file whose MAC verifies under ``old_key`` is written again with MACs under
    both keys, so it verifies whichever key the database ends up naming. A file that does not
    verify (or of version 1) is left as it is: the next start judges it. Returns what was done
    (``"re-authenticated"``, ``"unverified"``) or ``None`` without a file."""
    path = data_dir / FLOOR_FILE
    if not path.exists():
        return None
    found = _FloorFile(path)
    if found.version != FLOOR_VERSION or not found.verifies(Sealer(old_key)):
        return "unverified"
    both = Sealer(old_key)
    both.add_key(new_key)
    write_atomic(path, _encode(both, found.tcb_info, found.qe_identity))
    return "re-authenticated"


class TcbEvaluationFloor:
    """The floor (module docstring), kept in ``path`` (``None``: in memory only). Thread-safe:
    phase 1 and prefetches run in several threads. Until :meth:`authenticate` the file's numbers
    are used unchecked (a joining CAS verifies its peer before it has the master key) and a
    raise is held in memory only."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._tcb_info: dict[str, int] = {}
        self._qe_identity: dict[str, int] = {}
        self._file: _FloorFile | None = None
        self._sealer: Sealer | None = None
        # Called after each raise, outside the lock (cas serve records a ledger entry).
        self.on_raise: Callable[[], None] | None = None
        if path is not None and path.exists():
            self._file = _FloorFile(path)
            self._tcb_info, self._qe_identity = dict(self._file.tcb_info), dict(self._file.qe_identity)

    def authenticate(self, sealer: Sealer, recorded: Tables | None) -> tuple[str, dict[str, Any]] | None:
        """Check the file under ``sealer``'s keys against ``recorded`` (:func:`ledger_floor`),
        from now on MAC every write under them; returns the ledger event to record (type,
        payload) or ``None`` (module docstring). A write that fails is logged (the floor in
        memory is still the restored one)."""
        with self._lock:
            self._sealer = sealer
            found = self._file
            current: Tables = (self._tcb_info, self._qe_identity)
            check: str | None = None
            if found is None:
                check = "missing" if recorded is not None and (recorded[0] or recorded[1]) else None
            elif found.version != FLOOR_VERSION:
                check = "unbound"  # a file of before the MAC (module docstring)
            elif not found.verifies(sealer):
                check = "mac"
            elif recorded is not None and _below((found.tcb_info, found.qe_identity), recorded):
                check = "behind-ledger"
            if check is None:
                on_disk = (found.tcb_info, found.qe_identity, set(found.macs)) if found is not None else None
                if on_disk != (*current, set(sealer.key_ids)) and (found is not None or any(current)):
                    # MACs under exactly the keys now held (after a rotation), and a raise held in
                    # memory before the master key was open (a joining CAS verifying its peer)
                    self._write(current)
                if _below(recorded or ({}, {}), current):
                    # A raise whose ledger entry was not written (a crash): recorded now.
                    return EVENT_RAISED, {"tcb_info": dict(current[0]), "qe_identity": dict(current[1])}
                return None
            restored = _merge(current, recorded or ({}, {}))
            self._tcb_info, self._qe_identity = restored
            self._write(restored)
            payload: dict[str, Any] = {"tcb_info": restored[0], "qe_identity": restored[1]}
            lowered = recorded is not None and _below(current, recorded)
            if check == "unbound":
                _LOG.info(
                    json.dumps(
                        {"event": EVENT_BOUND, "file": str(self.path), "restored_from_ledger": lowered}
                    )
                )
                return EVENT_BOUND, {**payload, "restored_from_ledger": lowered}
            if check in ("missing", "behind-ledger"):
                # Nothing altered that the ledger does not already undo: a replica on a shared
                # database (a new one has no file; another raised the floor), a backup restored.
                _LOG.info(json.dumps({"event": EVENT_FROM_LEDGER, "check": check, "file": str(self.path)}))
                return None
            event = {"event": EVENT_ALTERED, "check": check, "restored_from_ledger": lowered}
            _LOG.warning(json.dumps({**event, "file": str(self.path), "action": (
                "the floor is the larger of the file's and the ledger's numbers, written back MAC'd; "
                "restore the file from a backup of this CAS if it was not you")}))  # fmt: skip
            return EVENT_ALTERED, {**payload, "check": check, "restored_from_ledger": lowered}

    def tables(self) -> dict[str, Any]:
        """The floor now, as the ledger entries record it."""
        with self._lock:
            return {"tcb_info": dict(self._tcb_info), "qe_identity": dict(self._qe_identity)}

    def rewrite(self) -> None:
        """Write the floor again with MACs under every key the sealer holds now: an online
        rotation calls it once the sealer holds the new key, before the database names it."""
        with self._lock:
            if self._sealer is not None and self.path is not None:
                write_atomic(self.path, _encode(self._sealer, self._tcb_info, self._qe_identity))

    def _write(self, tables: Tables) -> bool:
        if self.path is None or self._sealer is None:
            return self.path is None
        try:
            write_atomic(self.path, _encode(self._sealer, *tables))
        except (OSError, ConfideError) as exc:
            event = {"event": "dcap-tcb-evaluation-floor-not-written", "error": type(exc).__name__}
            _LOG.warning(json.dumps(event))
            return False
        return True

    def floors(self, tee: str, fmspc: str) -> tuple[int, int]:
        """(TCB Info floor for ``tee``/``fmspc`` (lower-case hex), QE Identity floor for ``tee``);
        0 where nothing was verified yet."""
        with self._lock:
            return self._tcb_info.get(f"{tee}:{fmspc}", 0), self._qe_identity.get(tee, 0)

    def minimum(self, piece: str, tee: str, fmspc: str) -> int:
        """The floor of one piece (``tcbInfo`` or ``enclaveIdentity``), for sources that decide
        what to keep or serve by it (:class:`~confide.collateral.dcap.PcsHttpSource`)."""
        tcb_info, qe_identity = self.floors(tee, fmspc)
        return tcb_info if piece == "tcbInfo" else qe_identity

    def judge(self, verified: VerifiedEvidence, *, raise_floor: bool) -> VerifiedEvidence:
        """``verified`` (DCAP evidence) if neither number of its collateral is below the floor,
        else :class:`~confide.errors.CollateralOutdatedError`; with ``raise_floor`` (collateral
        from the CAS's own source), a higher number becomes the floor, persisted first."""
        numbers = verified.tcb_evaluation
        fmspc = verified.claims.get("fmspc")
        if numbers is None or not isinstance(fmspc, str):
            raise ParseError("DCAP evidence without TCB evaluation numbers or FMSPC", structure=_STRUCTURE)
        tee = floor_tee(verified.platform)
        tcb_key, fmspc = f"{tee}:{fmspc.lower()}", fmspc.lower()
        raised = False
        with self._lock:
            tcb_floor, qe_floor = self._tcb_info.get(tcb_key, 0), self._qe_identity.get(tee, 0)
            low = [
                f"{name} tcbEvaluationDataNumber {number} (this CAS has verified {floor})"
                for name, number, floor in (
                    (f"TCB Info ({tee} FMSPC {fmspc})", numbers.tcb_info, tcb_floor),
                    (f"QE Identity ({tee})", numbers.qe_identity, qe_floor),
                )
                if number < floor
            ]
            if low:
                raise CollateralOutdatedError(
                    "the collateral is of an older TCB evaluation than collateral this CAS has already "
                    f"verified: {', '.join(low)}; TCB evaluation numbers only grow (a stale or hostile "
                    "PCCS, or collateral replayed): attest again with current collateral"
                )
            if raise_floor and (numbers.tcb_info > tcb_floor or numbers.qe_identity > qe_floor):
                tcb_info = {**self._tcb_info, tcb_key: max(tcb_floor, numbers.tcb_info)}
                qe_identity = {**self._qe_identity, tee: max(qe_floor, numbers.qe_identity)}
                if self._persist(tcb_info, qe_identity):
                    self._tcb_info, self._qe_identity = tcb_info, qe_identity
                    _LOG.info(json.dumps({
                        "event": EVENT_RAISED, "tee": tee, "fmspc": fmspc,
                        "tcb_info": tcb_info[tcb_key], "qe_identity": qe_identity[tee],
                    }))  # fmt: skip
                    raised = True
        if raised and self.on_raise is not None:
            self.on_raise()
        return verified

    def _persist(self, tcb_info: dict[str, int], qe_identity: dict[str, int]) -> bool:
        """Write the raised floor; ``False`` (logged) when it cannot be written: the floor stays
        as it is on disk (memory never runs ahead of the file), and the next verification with
        the newer collateral tries again. The attestation is not refused for it. Before
        :meth:`authenticate` (no key to MAC under) the raise is held in memory only."""
        if self._sealer is None:
            return True
        return self._write((tcb_info, qe_identity))
