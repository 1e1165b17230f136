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
``update=`` (Intel's default, ``standard``), so what raises the floor is one update type only
and the floor does not flap between the two.

The floor is kept in ``DIR/dcap-tcb-evaluation.json`` (not secret: public numbers), replaced
atomically (:func:`~confide.fsutil.write_atomic`) before the raised floor is used in memory, so
a restart does not forget it. It is written only when a number grows (once per TCB recovery per
platform): no write per attestation. A file that does not parse stops the CAS
(:class:`~confide.errors.ParseError`) rather than being forgotten. The operator rolls it back
by stopping the CAS and editing or deleting the file (docs/cas.md, "No going back").
"""

from __future__ import annotations

import json
import logging
import re
import threading
from pathlib import Path

from confide import jsonstrict
from confide.errors import CollateralOutdatedError, ConfideError, ParseError
from confide.fsutil import read_bounded, write_atomic
from confide.verify.result import Platform, VerifiedEvidence

__all__ = ["FLOOR_FILE", "TcbEvaluationFloor", "floor_tee"]

FLOOR_FILE = "dcap-tcb-evaluation.json"
FLOOR_VERSION = 1
MAX_FILE_SIZE = 1 << 20  # ~20 000 platforms; a CAS sees a few
_STRUCTURE = "TCB evaluation floor"
_LOG = logging.getLogger("confide.cas")
_TEES = {Platform.SGX: "sgx", Platform.TDX: "tdx", Platform.AZURE_TDX_VTPM: "tdx"}
_TCB_INFO_KEY = re.compile(r"(sgx|tdx):[0-9a-f]{12}")  # <TEE type>:<FMSPC, 6 bytes in lower-case hex>
_QE_IDENTITY_KEY = re.compile(r"sgx|tdx")


def floor_tee(platform: Platform) -> str:
    """The TEE type of ``platform``'s Intel collateral: ``sgx`` or ``tdx``."""
    return _TEES[platform]


def _table(value: object, name: str, keys: re.Pattern[str]) -> dict[str, int]:
    """One table of the floor file, its keys as :meth:`TcbEvaluationFloor.judge` writes them (an
    edited key would match no platform: that platform's floor would be dropped silently)."""
    if not isinstance(value, dict):
        raise ParseError("not an object", structure=_STRUCTURE, field=name)
    for key, number in value.items():
        if not keys.fullmatch(key):
            raise ParseError(f"key {key[:40]!r}: expected {keys.pattern}", structure=_STRUCTURE, field=name)
        if not isinstance(number, int) or isinstance(number, bool) or not 0 <= number <= 0xFFFF_FFFF:
            raise ParseError(f"{key!r}: not a number 0..2^32-1", structure=_STRUCTURE, field=name)
    return dict(value)


class TcbEvaluationFloor:
    """The floor (module docstring), kept in ``path`` (``None``: in memory only). Thread-safe:
    phase 1 and prefetches run in several threads."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._tcb_info: dict[str, int] = {}
        self._qe_identity: dict[str, int] = {}
        if path is not None and path.exists():
            raw = read_bounded(path, MAX_FILE_SIZE, label=_STRUCTURE, expected="a small JSON file",
                               structure=_STRUCTURE, regular=True)  # fmt: skip
            try:
                doc = jsonstrict.loads(raw, structure=_STRUCTURE)
            except ParseError as exc:
                raise ParseError(f"{path}: {exc.message}", structure=_STRUCTURE) from None
            if not isinstance(doc, dict) or set(doc) != {"v", "tcb_info", "qe_identity"}:
                want = "expected the members v, tcb_info, qe_identity"
                raise ParseError(f"{path}: {want}", structure=_STRUCTURE)
            if type(doc["v"]) is not int or doc["v"] != FLOOR_VERSION:  # true and 1.0 are == 1
                got = f"version {doc['v']!r}, expected {FLOOR_VERSION}"
                raise ParseError(f"{path}: {got}", structure=_STRUCTURE)
            self._tcb_info = _table(doc["tcb_info"], "tcb_info", _TCB_INFO_KEY)
            self._qe_identity = _table(doc["qe_identity"], "qe_identity", _QE_IDENTITY_KEY)

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
                        "event": "dcap-tcb-evaluation-floor-raised", "tee": tee, "fmspc": fmspc,
                        "tcb_info": tcb_info[tcb_key], "qe_identity": qe_identity[tee],
                    }))  # fmt: skip
        return verified

    def _persist(self, tcb_info: dict[str, int], qe_identity: dict[str, int]) -> bool:
        """Write the raised floor; ``False`` (logged) when it cannot be written: the floor stays
        as it is on disk (memory never runs ahead of the file), and the next verification with
        the newer collateral tries again. The attestation is not refused for it."""
        if self.path is None:
            return True
        doc = {"v": FLOOR_VERSION, "tcb_info": tcb_info, "qe_identity": qe_identity}
        try:
            write_atomic(self.path, json.dumps(doc, sort_keys=True, separators=(",", ":")).encode())
        except (OSError, ConfideError) as exc:
            event = {"event": "dcap-tcb-evaluation-floor-not-written", "error": type(exc).__name__}
            _LOG.warning(json.dumps(event))
            return False
        return True
