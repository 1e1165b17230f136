"""The one error hierarchy of confide.

Every error that confide raises on purpose is a :class:`ConfideError`. The CLI catches only
that class and maps each subclass to its own exit code (``exit_code``), so scripts can tell
*why* something failed without parsing messages. Messages say "got X, expected Y" and never
contain secret values.

::

    ConfideError (1)
    ├── UsageError (2)                      bad command-line input, unreadable files
    ├── ParseError (10)                     malformed evidence / collateral / documents
    ├── VerificationError (20)              evidence is not genuine, or cannot be shown to be
    │   ├── SignatureError (21)             a signature or MAC does not verify
    │   │   └── UnsealError (66)            sealed data does not open with this TEE's sealing key
    │   ├── CertificateChainError (22)      chain does not lead to the pinned root, bad dates
    │   ├── RevocationError (23)            a certificate of the chain is revoked
    │   ├── CollateralError (24)            collateral unusable (bad signature chain, mismatch)
    │   │   ├── CollateralMissingError (25) a needed piece of collateral is absent
    │   │   ├── CollateralExpiredError (26) collateral not valid at the verification time
    │   │   └── CollateralOutdatedError (62) valid collateral, but of an older TCB evaluation than
    │   │                                   required (Intel tcbEvaluationDataNumber below the minimum)
    │   ├── TcbLevelNotFoundError (27)      no TCB level of the TCB Info matches the platform
    │   ├── BindingError (28)               report data / nonce / key binding mismatch
    │   ├── MeasurementError (29)           event-log replay or reference-measurement mismatch
    │   └── RollbackError (60)              authentic, but older than the recorded version
    │       │                               (e.g. a protected volume presented with an old tag)
    │       └── LogRollbackError (67)       a witness cosigned a log state this log does not
    │                                       extend: its database was rolled back, or forked
    ├── PolicyError (30)                    a policy document is invalid
    │   ├── AppraisalError (31)             verified evidence does not satisfy the policy
    │   ├── ConflictError (32)              stale predecessor, duplicate or no-longer-applicable version
    │   └── AccessDeniedError (33)          the identity may not read/update, or a release is not allowed
    ├── NetworkError (40)                   a remote service could not be reached or answered badly
    └── StorageError (50)                   the database or a file store failed
        └── WaitStoppedError (68)           a stop signal ended a wait for a protected volume's
                                            lock (`confide run` and `volume mount` then end by
                                            that signal: 128 + N)

    Also VerificationError, with exit codes of their own:
    ├── ConsistencyError (61)               a log's tree does not extend the one seen before (fork)
    ├── EntryMismatchError (63)             a log entry does not hash to what the tree commits to
    │   └── EntryMissingError (64)          an entry the tree commits to is absent
    ├── UnknownKeyError (65)                a signed note carries no signature by the pinned key
    └── FreshnessError (69)                 a log's checkpoint is not shown current: no required
                                            witness cosigned it within --max-age of now, or one
                                            dated its cosignature in the future (a frozen log)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

__all__ = [
    "AccessDeniedError",
    "AppraisalError",
    "BindingError",
    "CertificateChainError",
    "CollateralError",
    "CollateralExpiredError",
    "CollateralMissingError",
    "CollateralOutdatedError",
    "ConfideError",
    "ConflictError",
    "ConsistencyError",
    "EntryMismatchError",
    "EntryMissingError",
    "FreshnessError",
    "LogRollbackError",
    "MeasurementError",
    "NetworkError",
    "ParseError",
    "PolicyError",
    "RevocationError",
    "RollbackError",
    "SignatureError",
    "StorageError",
    "TcbLevelNotFoundError",
    "UnknownKeyError",
    "UnsealError",
    "UsageError",
    "VerificationError",
    "WaitStoppedError",
]


class ConfideError(Exception):
    """Base class of every error confide raises on purpose."""

    exit_code: ClassVar[int] = 1

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    @property
    def kind(self) -> str:
        """Stable machine-readable name of the error class (used in JSON output)."""
        return type(self).__name__

    def diagnostics(self) -> str:
        """A human-readable explanation for the CLI."""
        return f"{self.kind}: {self.message}"


class UsageError(ConfideError):
    exit_code = 2


class ParseError(ConfideError):
    """Input bytes do not have the expected structure.

    ``structure`` names what was being parsed, ``field`` the field that failed and ``offset``
    the byte offset (within the parsed buffer) where it starts, when known.
    """

    exit_code = 10

    def __init__(
        self,
        message: str,
        *,
        structure: str | None = None,
        field: str | None = None,
        offset: int | None = None,
    ) -> None:
        where = []
        if structure:
            where.append(structure)
        if field:
            where.append(f"field {field}")
        if offset is not None:
            where.append(f"offset {offset:#x}")
        full = f"{', '.join(where)}: {message}" if where else message
        super().__init__(full)
        self.structure = structure
        self.field = field
        self.offset = offset


class VerificationError(ConfideError):
    exit_code = 20


class SignatureError(VerificationError):
    exit_code = 21


class UnsealError(SignatureError):
    """Sealed data (the CAS's ``master.key.sealed``) does not open with this TEE's sealing key:
    another TEE identity sealed it (enclave, measurement, policy, platform), or it was modified."""

    exit_code = 66


class CertificateChainError(VerificationError):
    exit_code = 22


class RevocationError(VerificationError):
    exit_code = 23


class CollateralError(VerificationError):
    exit_code = 24


class CollateralMissingError(CollateralError):
    exit_code = 25


class CollateralExpiredError(CollateralError):
    exit_code = 26


class CollateralOutdatedError(CollateralError):
    """Collateral that is signed and within its validity window, but made for an older TCB
    evaluation than required: Intel's ``tcbEvaluationDataNumber`` of a TCB Info or QE Identity
    below the minimum asked for (``--min-tcb-eval-number``; a stale PCCS, or replayed
    collateral, that would let a platform a TCB recovery made out of date pass)."""

    exit_code = 62


class TcbLevelNotFoundError(VerificationError):
    exit_code = 27


class BindingError(VerificationError):
    exit_code = 28


class MeasurementError(VerificationError):
    exit_code = 29


class PolicyError(ConfideError):
    """A policy document is invalid. ``problems`` lists every problem found (each one's ``str``
    is a self-contained "where: got X, expected Y" line); the message joins them."""

    exit_code = 30

    def __init__(self, message: str, *, problems: Sequence[object] = ()) -> None:
        super().__init__(message)
        self.problems: tuple[object, ...] = tuple(problems)


class AppraisalError(PolicyError):
    exit_code = 31


class ConflictError(PolicyError):
    exit_code = 32


class AccessDeniedError(PolicyError):
    exit_code = 33


class NetworkError(ConfideError):
    exit_code = 40


class StorageError(ConfideError):
    exit_code = 50


class WaitStoppedError(StorageError):
    """A stop signal (``signal``, its number) came while a command waited for a protected
    volume's lock (``--volume-wait``): nothing was mounted or changed. ``confide run`` and
    ``confide volume mount`` say so in one line, then end by that signal, as its default action
    would have ended them (a shell reports 128 + N); a command that does not end by the signal
    exits 68 (every error class has an exit code of its own)."""

    exit_code = 68

    def __init__(self, message: str, *, signal: int) -> None:
        super().__init__(message)
        self.signal = signal


class RollbackError(VerificationError):
    """Authentic data, but older than the version recorded as current: a protected volume
    presented with an old tag, or a log presenting a tree smaller than one it presented before."""

    exit_code = 60


class LogRollbackError(RollbackError):
    """A transparency-log witness cosigned a state of this log that the log does not extend: a
    larger tree than the log holds (its database was rolled back), or another tree of the same
    or a smaller size (a copy of the database forked). The witness's word, not a network failure
    (docs/adr/0005-witness-quorum.md)."""

    exit_code = 67


class ConsistencyError(VerificationError):
    """A tree does not extend a tree seen before (fork), or a consistency proof is invalid."""

    exit_code = 61


class EntryMismatchError(VerificationError):
    """An entry does not hash to what the tree commits to (or its inclusion proof fails)."""

    exit_code = 63


class EntryMissingError(EntryMismatchError):
    """An entry that the tree commits to is absent."""

    exit_code = 64


class UnknownKeyError(VerificationError):
    """A signed note (checkpoint) has no signature line by the pinned key: wrong key."""

    exit_code = 65


class FreshnessError(VerificationError):
    """A log's checkpoint is authentic and cosigned, but not shown to be current: no valid
    cosignature of a required witness has a timestamp within the maximum age (``ledger verify
    --max-age``) of the verifier's time, or one is dated further in the future than the allowed
    clock skew. A log frozen on an old, already cosigned checkpoint (hiding every later entry)
    fails so; tlog-cosignature: "as of the specified time", the witness saw no larger tree."""

    exit_code = 69
