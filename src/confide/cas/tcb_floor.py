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
the ledger recorded (so neither a file nor a database rolled back alone lowers it): a verified
file behind the ledger, or none, takes the ledger's numbers (logged,
``dcap-tcb-evaluation-floor-from-ledger``); a file whose MAC does not verify fails closed (the
larger numbers, written back MAC'd, a warning, ``dcap-tcb-evaluation-floor-altered``); a file of
version 1 (no MAC) is MAC'd as found, raised to the ledger's numbers
(``dcap-tcb-evaluation-floor-bound``). On a shared database a replica upgraded after another
finds the ledger's floor already there, so a version-1 file is bound whenever it is found: a MAC
stripped to pass a file off as an old one lowers nothing the ledger holds, and shows as a second
``bound`` entry. The MACs, the start's decisions, the ledger entries and the rotations are
:mod:`confide.cas.state_auth`'s, shared with the rollback memory of Google's CRLs.

The floor can no longer be lowered by editing the file: only a fresh data directory with a
fresh database starts from nothing.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from sqlalchemy import Connection

from confide import jsonstrict
from confide.cas.db import EventSink
from confide.cas.secrets import Sealer
from confide.cas.state_auth import (
    MACS_EXPECTED,
    AuthenticatedState,
    Found,
    ledger_state,
    parse_macs,
    rebind_state_file,
    record_state,
)
from confide.errors import CollateralOutdatedError, ParseError
from confide.fsutil import read_bounded
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


def _read_file(path: Path) -> Found[Tables] | None:
    """The parsed file: the tables, its version and its MACs (not yet checked)."""
    if not path.exists():
        return None
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
    tables = (
        _table(doc["tcb_info"], "tcb_info", _TCB_INFO_KEY),
        _table(doc["qe_identity"], "qe_identity", _QE_IDENTITY_KEY),
    )
    macs = parse_macs(doc.get("macs", {}))
    if macs is None:
        raise ParseError(f"{path}: {MACS_EXPECTED}", structure=_STRUCTURE)
    return Found(doc["v"], tables, macs)


class TcbEvaluationFloor(AuthenticatedState[Tables]):
    """The floor (module docstring), kept in ``path`` (``None``: in memory only). Thread-safe:
    phase 1 and prefetches run in several threads. Until :meth:`authenticate` the file's numbers
    are used unchecked (a joining CAS verifies its peer before it has the master key) and a
    raise is held in memory only."""

    VERSION = FLOOR_VERSION
    INFO = FLOOR_INFO
    META = LEDGER_META
    EVENT_RAISED = EVENT_RAISED
    EVENT_ALTERED = EVENT_ALTERED
    EVENT_BOUND = EVENT_BOUND
    EVENT_FROM_LEDGER = EVENT_FROM_LEDGER
    EVENT_NOT_WRITTEN = "dcap-tcb-evaluation-floor-not-written"
    EVENT_NOT_RECORDED = "dcap-tcb-evaluation-floor-not-recorded"
    ACTION = (
        "the floor is the larger of the file's and the ledger's numbers, written back MAC'd; "
        "restore the file from a backup of this CAS if it was not you"
    )

    read = staticmethod(_read_file)
    from_members = staticmethod(_tables)
    merge = staticmethod(_merge)
    below = staticmethod(_below)

    @staticmethod
    def members(state: Tables) -> dict[str, Any]:
        return {"tcb_info": dict(state[0]), "qe_identity": dict(state[1])}

    @staticmethod
    def empty() -> Tables:
        return {}, {}

    def tables(self) -> dict[str, Any]:
        """The floor now, as the ledger entries record it."""
        return self.payload()

    def floors(self, tee: str, fmspc: str) -> tuple[int, int]:
        """(TCB Info floor for ``tee``/``fmspc`` (lower-case hex), QE Identity floor for ``tee``);
        0 where nothing was verified yet."""
        with self._lock:
            return self._state[0].get(f"{tee}:{fmspc}", 0), self._state[1].get(tee, 0)

    def minimum(self, piece: str, tee: str, fmspc: str) -> int:
        """The floor of one piece (``tcbInfo`` or ``enclaveIdentity``), for sources that decide
        what to keep or serve by it (:class:`~confide.collateral.dcap.PcsHttpSource`)."""
        tcb_info, qe_identity = self.floors(tee, fmspc)
        return tcb_info if piece == "tcbInfo" else qe_identity

    def judge(self, verified: VerifiedEvidence, *, raise_floor: bool) -> VerifiedEvidence:
        """``verified`` (DCAP evidence) if neither number of its collateral is below the floor,
        else :class:`~confide.errors.CollateralOutdatedError`; with ``raise_floor`` (collateral
        from the CAS's own source), a higher number becomes the floor, persisted first: a write
        that fails (logged) leaves the floor as it is on disk (memory never runs ahead of the
        file), and the next verification with the newer collateral tries again; the attestation
        is not refused for it. Before :meth:`authenticate` (no key to MAC under) the raise is
        held in memory only."""
        numbers = verified.tcb_evaluation
        fmspc = verified.claims.get("fmspc")
        if numbers is None or not isinstance(fmspc, str):
            raise ParseError("DCAP evidence without TCB evaluation numbers or FMSPC", structure=_STRUCTURE)
        tee = floor_tee(verified.platform)
        tcb_key, fmspc = f"{tee}:{fmspc.lower()}", fmspc.lower()
        raised = False
        with self._lock:
            tcb_now, qe_now = self._state
            tcb_floor, qe_floor = tcb_now.get(tcb_key, 0), qe_now.get(tee, 0)
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
                tcb_info = {**tcb_now, tcb_key: max(tcb_floor, numbers.tcb_info)}
                qe_identity = {**qe_now, tee: max(qe_floor, numbers.qe_identity)}
                if self._write((tcb_info, qe_identity)):
                    self._state = tcb_info, qe_identity
                    _LOG.info(json.dumps({
                        "event": EVENT_RAISED, "tee": tee, "fmspc": fmspc,
                        "tcb_info": tcb_info[tcb_key], "qe_identity": qe_identity[tee],
                    }))  # fmt: skip
                    raised = True
        if raised and self.on_raise is not None:
            self.on_raise({})
        return verified


def floor_mac(
    sealer: Sealer, key_id: str, tcb_info: Mapping[str, int], qe_identity: Mapping[str, int]
) -> str:
    """HMAC-SHA256 of the tables under HKDF-SHA256 of the master key ``key_id`` (one ``sealer``
    holds; :class:`KeyError` otherwise), info :data:`FLOOR_INFO` (module docstring)."""
    return TcbEvaluationFloor.mac(sealer, key_id, (dict(tcb_info), dict(qe_identity)))


def ledger_floor(conn: Connection, *, store: bool = False) -> Tables | None:
    """The floor the ledger recorded (:func:`~confide.cas.state_auth.ledger_state`): the merge of
    every ``dcap-tcb-evaluation-floor-*`` entry, from the ``meta`` row :data:`LEDGER_META`;
    ``None`` when the ledger recorded none."""
    return ledger_state(conn, TcbEvaluationFloor, store=store)


def record_floor(conn: Connection, events: EventSink, type_: str, payload: dict[str, Any]) -> None:
    """Record the floor entry ``type_`` in the caller's write transaction, merged with the
    ledger's floor (:func:`~confide.cas.state_auth.record_state`)."""
    record_state(conn, events, TcbEvaluationFloor, type_, payload)


def rebind_floor_file(data_dir: Path, old_key: bytes, new_key: bytes) -> str | None:
    """For an offline master-key rotation: the floor file MAC'd under both keys
    (:func:`~confide.cas.state_auth.rebind_state_file`)."""
    return rebind_state_file(TcbEvaluationFloor, data_dir / FLOOR_FILE, old_key, new_key)
