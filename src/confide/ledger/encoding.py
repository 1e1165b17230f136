"""The one canonical encoding of ledger entries: RFC 8785 (JCS) JSON over a typed model.

An entry is the JSON object ::

    {"v": 2, "type": <EntryType>, "time": "YYYY-MM-DDTHH:MM:SS.ffffffZ",
     "policy": <policy name or null>, "payload": {...}, "salt": <32 lower-case hex digits>}

The salt is 16 fresh random bytes per entry (``os.urandom``), written as lower-case hex (its
one canonical form): the leaf hash ``SHA-256(0x00 || entry)`` (RFC 9162 §2.1.1) sits in the
public level-0 tiles, and without the salt whoever could guess an entry's other members (the
caller of a refused request knows its signer, policy and, to a fraction of a second, its time)
could confirm the guess against the tile. Version 1 entries (no ``salt`` member), written
before, are read and verified as they are and never written; a version 2 entry without a
well-formed salt, or a version 1 entry with one, is a :class:`ParseError`.

serialised per RFC 8785: no whitespace; object members sorted by the UTF-16 code units of
their names (§3.2.3); strings with only ``"``, ``\\`` and U+0000..U+001F escaped, the
latter as ``\\b \\t \\n \\f \\r`` or ``\\u00xx`` lower-case (§3.2.2.2), everything else as
UTF-8; numbers as ECMAScript renders them (§3.2.2.3) — confide restricts numbers to
integers of magnitude below 2**53, for which that is plain decimal, and rejects floats, so
no float formatting ambiguity can arise. Lone surrogates are rejected (I-JSON, RFC 7493).

Parsing (:meth:`Entry.from_bytes`) is strict: duplicate names, floats, non-canonical
spacing/order/escapes are a :class:`ParseError`; ``from_bytes(b).to_bytes() == b`` always.

Payloads never carry secret values: names that denote secret material (``value``,
``plaintext``, ``private_key``, ``secret_value``, ``seed``, ``password``) are refused at any
depth, as defence in depth behind the CAS, which only records names, versions and digests.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from confide import jsonstrict
from confide.errors import ParseError
from confide.jsonencode import encoder

__all__ = [
    "ENTRY_VERSION",
    "ENTRY_VERSION_UNSALTED",
    "SALT_SIZE",
    "Entry",
    "EntryType",
    "canonical_json",
    "encode_entry",
    "new_salt",
    "parse_canonical_json",
]

ENTRY_VERSION = 2  # the version written: entries with a salt (encode_entry writes the digit)
ENTRY_VERSION_UNSALTED = 1  # entries of logs written before the salt: read and verified, never written
SALT_SIZE = 16  # bytes; in the entry as 2 * SALT_SIZE lower-case hex digits
MAX_SAFE_INTEGER = (1 << 53) - 1  # RFC 8785 §3.2.2.3 / I-JSON: exactly representable
FORBIDDEN_PAYLOAD_NAMES = frozenset({"value", "plaintext", "private_key", "secret_value", "seed", "password"})
MAX_DEPTH = 32
_STRUCTURE = "ledger entry"
_SALT_RE = re.compile(r"[0-9a-f]{32}")
_MEMBERS_V1 = frozenset({"v", "type", "time", "policy", "payload"})
_MEMBERS = _MEMBERS_V1 | {"salt"}
_TIME_RE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]{6}Z")

JSONValue = None | bool | int | str | list["JSONValue"] | dict[str, "JSONValue"]


class EntryType(StrEnum):
    POLICY_CREATED = "policy.created"
    POLICY_UPDATED = "policy.updated"
    POLICY_APPROVED = "policy.approved"
    ATTESTATION = "attestation"
    SECRET_RELEASED = "secret.released"  # noqa: S105 - an entry type name, not a secret
    EXPORT_RELEASED = "export.released"  # a release of an imported secret or volume, filed under its exporter
    VOLUME_TAG = "volume.tag"
    VOLUME_KEY = "volume.key"  # a volume's key, first or new version (names and versions, never the key)
    CAS_STARTED = "cas.started"
    KEY_ROTATED = "key.rotated"
    KEY_RELEASED = "key.released"  # the master key released to an attested CAS (never the key)
    KEY_RELEASE_REFUSED = "key.release-refused"
    SUCCESSOR_BOARD_SET = "successor.board-set"  # the successor board, when the CAS is initialised
    SUCCESSOR_APPROVED = "successor.approved"  # a board member's approval of a successor version
    SUCCESSOR_APPROVAL_REFUSED = "successor.approval-refused"
    SUCCESSOR_WITHDRAWN = "successor.withdrawn"  # a member's withdrawal of their own approval
    SUCCESSOR_WITHDRAWAL_REFUSED = "successor.withdrawal-refused"
    SUCCESSOR_BOARD_CHANGE_APPROVED = "successor.board-change-approved"  # a member's approval of a change
    SUCCESSOR_BOARD_CHANGE_REFUSED = "successor.board-change-refused"
    SUCCESSOR_BOARD_CHANGED = "successor.board-changed"  # the current board's quorum changed it
    SUCCESSOR_VERSION_RETIRED = "successor.version-retired"  # after a hand-over, or the board's retirement
    SUCCESSOR_RETIREMENT_APPROVED = "successor.retirement-approved"  # a member's approval of a retirement
    SUCCESSOR_RETIREMENT_REFUSED = "successor.retirement-refused"
    POLICY_SUBMITTED = "policy.submitted"  # awaiting board approval
    POLICY_STALE = "policy.stale"  # a pending version that can no longer apply
    POLICY_REFUSED = "policy.refused"  # an update by an identity without the right
    SECRETS_GENERATED = "secrets.generated"
    CERTIFICATES_RENEWED = "certificates.renewed"
    CERTIFICATES_REVOKED = "certificates.revoked"
    CRL_ISSUED = "crl.issued"
    REVOCATIONS_ALTERED = "revocations.altered"  # a CA's revocation records failed their MACs
    REVOCATIONS_BOUND = "revocations.bound"  # rows from before schema 13 MAC'd at a start
    POLICY_ROWS_BOUND = "policy.rows-bound"  # heads and versions from before schema 15 MAC'd at a start
    SECRET_HEADS_BOUND = "secrets.heads-bound"  # noqa: S105 - secrets' heads from before schema 19, at a start
    TCB_FLOOR_RAISED = "dcap.tcb-floor.raised"  # the CAS's DCAP TCB evaluation floor grew
    TCB_FLOOR_ALTERED = "dcap.tcb-floor.altered"  # its file failed its MAC or lay behind the ledger
    TCB_FLOOR_BOUND = "dcap.tcb-floor.bound"  # a file from before the MAC, MAC'd at a start
    GCE_CRL_NEWEST_RAISED = "gce.crl-newest.raised"  # the rollback memory of Google's CRLs took a newer CRL
    GCE_CRL_NEWEST_ALTERED = "gce.crl-newest.altered"  # its file failed its MAC
    GCE_CRL_NEWEST_BOUND = "gce.crl-newest.bound"  # a file from before the MAC, MAC'd at a start


_ESCAPES = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f", "\r": "\\r"}


# Characters RFC 8785 §3.2.2.2 escapes (control characters, quote, backslash), and lone
# surrogates, which are refused; a string without any is serialised as is.
_SPECIAL = re.compile(r'[\x00-\x1f"\\\ud800-\udfff]')


def _string(s: str) -> str:
    if _SPECIAL.search(s) is None:
        return '"' + s + '"'
    out = ['"']
    for ch in s:
        code = ord(ch)
        if ch in _ESCAPES:
            out.append(_ESCAPES[ch])
        elif code < 0x20:
            out.append(f"\\u{code:04x}")
        elif 0xD800 <= code <= 0xDFFF:
            raise ParseError(f"lone surrogate U+{code:04X} in a string", structure="canonical JSON")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def _utf16_key(name: str) -> bytes:
    return name.encode("utf-16-be", "surrogatepass")


def _serialise(value: object, depth: int) -> str:
    if depth > MAX_DEPTH:
        raise ParseError(f"nesting deeper than {MAX_DEPTH}", structure="canonical JSON")
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, int):
        if abs(value) > MAX_SAFE_INTEGER:
            raise ParseError(f"integer {value} outside ±(2**53-1)", structure="canonical JSON")
        return str(int(value))
    if isinstance(value, str):
        return _string(value)
    if isinstance(value, list | tuple):
        return "[" + ",".join(_serialise(v, depth + 1) for v in value) + "]"
    if isinstance(value, dict):
        for k in value:
            if not isinstance(k, str):
                raise ParseError(f"object member name {k!r} is not a string", structure="canonical JSON")
        # RFC 8785 §3.2.3: members sorted by their UTF-16 code units; for ASCII names that is
        # the order of the strings themselves.
        if all(k.isascii() for k in value):
            items = sorted(value.items())
        else:
            items = sorted(value.items(), key=lambda kv: _utf16_key(kv[0]))
        return "{" + ",".join(_string(k) + ":" + _serialise(v, depth + 1) for k, v in items) + "}"
    raise ParseError(
        f"got {type(value).__name__}, expected null, bool, int, str, list or dict (no floats)",
        structure="canonical JSON",
    )


_LONE_SURROGATE = re.compile(r"[\ud800-\udfff]")


def _plain(value: object, depth: int) -> bool:
    """Whether ``json.dumps(sort_keys=True, ensure_ascii=False)`` writes ``value`` exactly as
    RFC 8785 does: integers within ±(2**53-1) (§3.2.2.3), strings without lone surrogates (the
    escapes of §3.2.2.2 are the ones ``json`` writes, with lowercase hex), and ASCII member
    names, whose code-unit order (§3.2.3) is the order of the strings."""
    if depth > MAX_DEPTH:
        return False
    if value is None or value is True or value is False:
        return True
    if isinstance(value, str):
        return value.isascii() or _LONE_SURROGATE.search(value) is None
    if isinstance(value, int):
        return -MAX_SAFE_INTEGER <= value <= MAX_SAFE_INTEGER
    if isinstance(value, dict):
        # Entries are encoded in the CAS's write transactions, two per attestation: the
        # members of the exact types str, int, bool and None are judged here, without a call
        # (the same rules as above); anything else, subclasses included, by the call.
        if value and depth == MAX_DEPTH:
            return False  # its members would be deeper than MAX_DEPTH
        for k, v in value.items():
            if type(k) is not str or not k.isascii():
                return False
            kind = type(v)
            if kind is str:
                if not v.isascii() and _LONE_SURROGATE.search(v) is not None:
                    return False
            elif kind is int:
                if not -MAX_SAFE_INTEGER <= v <= MAX_SAFE_INTEGER:
                    return False
            elif v is not None and kind is not bool and not _plain(v, depth + 1):
                return False
        return True
    if isinstance(value, list | tuple):
        if value and depth == MAX_DEPTH:
            return False
        for v in value:  # as for a dict's members
            kind = type(v)
            if kind is str:
                if not v.isascii() and _LONE_SURROGATE.search(v) is not None:
                    return False
            elif kind is int:
                if not -MAX_SAFE_INTEGER <= v <= MAX_SAFE_INTEGER:
                    return False
            elif v is not None and kind is not bool and not _plain(v, depth + 1):
                return False
        return True
    return False


# json.dumps(sort_keys=True, separators=(",", ":"), ensure_ascii=False), its C encoder made once
# (confide.jsonencode; json.dumps makes an encoder per call when given any argument, and
# JSONEncoder.encode sets up its C encoder per call). Without the circular-reference check: it
# only ever encodes a string or a value that _plain or _clean has walked, and those walks stop
# at MAX_DEPTH (returning False), so a value with a cycle never reaches it.
_JSON_ENCODE = encoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False, check_circular=False)


def canonical_json(value: object, depth: int = 0) -> bytes:
    """RFC 8785 serialisation (integers only) as UTF-8 bytes. Values that ``json`` writes
    canonically take its C encoder; the rest (and every error) the serialiser above. ``depth``:
    how deep ``value`` sits in the document it is part of (for the nesting limit)."""
    if _plain(value, depth):
        return _JSON_ENCODE(value).encode("utf-8")
    return _serialise(value, depth).encode("utf-8")


def parse_canonical_json(data: bytes) -> JSONValue:
    """Parse JSON and require that it is exactly its own RFC 8785 serialisation."""
    # confide.jsonstrict: UTF-8, no duplicate names, no NaN/Infinity, integers only
    value = jsonstrict.loads(data, structure="canonical JSON", floats=False)
    if canonical_json(value) != data:
        raise ParseError("not in canonical (RFC 8785) form", structure="canonical JSON")
    return value  # type: ignore[no-any-return]


def _clean(value: dict[Any, Any], depth: int) -> bool:
    """Whether the payload ``value`` (a dict at ``depth``) passes :func:`_check_payload` and is
    :func:`_plain` (``json``'s C encoder writes it as RFC 8785 §3.2.2-§3.2.3 do), judged in one
    walk (:func:`encode_entry`'s fast path). ``False`` means "not judged here": anything unusual
    (a forbidden or non-ASCII member name, a lone surrogate, an integer out of range, a tuple, a
    subclass of a JSON type, the nesting limit) is left to those two, which then raise or
    serialise exactly as they do for any entry. Only exact ``dict`` and ``list`` members are
    descended into; every other member that is not a JSON scalar returns ``False``."""
    if value and depth >= MAX_DEPTH:
        return False
    for k, v in value.items():
        if type(k) is not str or not k.isascii() or k.lower() in FORBIDDEN_PAYLOAD_NAMES:
            return False
        kind = type(v)
        if kind is str:
            if not v.isascii() and _LONE_SURROGATE.search(v) is not None:
                return False
        elif kind is int:
            if not -MAX_SAFE_INTEGER <= v <= MAX_SAFE_INTEGER:
                return False
        elif kind is dict:
            if not _clean(v, depth + 1):
                return False
        elif kind is list:
            if not _clean_list(v, depth + 1):
                return False
        elif v is not None and kind is not bool:
            return False
    return True


def _clean_list(value: list[Any], depth: int) -> bool:
    # The loop body is _clean's, inlined on purpose: a shared per-member function measured
    # ~1 µs more per payload (3.3 -> 4.3 µs, timeit, a release's payload) on the group commit's path.
    if value and depth >= MAX_DEPTH:
        return False
    for v in value:
        kind = type(v)
        if kind is str:
            if not v.isascii() and _LONE_SURROGATE.search(v) is not None:
                return False
        elif kind is int:
            if not -MAX_SAFE_INTEGER <= v <= MAX_SAFE_INTEGER:
                return False
        elif kind is dict:
            if not _clean(v, depth + 1):
                return False
        elif kind is list:
            if not _clean_list(v, depth + 1):
                return False
        elif v is not None and kind is not bool:
            return False
    return True


def _check_payload(value: object, path: str) -> None:
    # The usual payload names nothing forbidden: one walk without paths says so; only a payload
    # that does is walked again, with paths, to name the first forbidden member (the same one,
    # in the same order, and the same exceptions for member names that are not strings).
    if _has_forbidden(value):
        _refuse_forbidden(value, path)


def _has_forbidden(value: object) -> bool:
    if isinstance(value, dict):
        for k, v in value.items():
            if k.lower() in FORBIDDEN_PAYLOAD_NAMES:
                return True
            if isinstance(v, _CONTAINERS) and _has_forbidden(v):
                return True
    elif isinstance(value, list):
        for v in value:
            if isinstance(v, _CONTAINERS) and _has_forbidden(v):
                return True
    return False


_CONTAINERS = (dict, list)


def _refuse_forbidden(value: object, path: str) -> None:
    # Only containers are descended into (and their paths formatted): scalars name nothing.
    if isinstance(value, dict):
        for k, v in value.items():
            if k.lower() in FORBIDDEN_PAYLOAD_NAMES:
                raise ParseError(
                    f"payload member {path}.{k} would record secret material; record names, "
                    "versions and digests only",
                    structure=_STRUCTURE,
                    field="payload",
                )
            if isinstance(v, _CONTAINERS):
                _refuse_forbidden(v, f"{path}.{k}")
    elif isinstance(value, list):
        for i, v in enumerate(value):
            if isinstance(v, _CONTAINERS):
                _refuse_forbidden(v, f"{path}[{i}]")


def format_time(at: datetime) -> str:
    if at.tzinfo is None:
        raise ValueError("entry time must be timezone-aware")
    utc = at.astimezone(UTC)
    if utc.year >= 1000:  # isoformat's four-digit year is strftime's %Y (~4x faster)
        return utc.isoformat(timespec="microseconds")[:26] + "Z"
    return utc.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def new_salt() -> bytes:
    """A fresh entry salt: SALT_SIZE bytes from the operating system's CSPRNG."""
    return os.urandom(SALT_SIZE)


def _bad_salt(salt: object) -> bool:
    return salt.__class__ is not bytes or len(salt) != SALT_SIZE


# The last entry time found valid: the entries of one change share their time string (one
# check for all of them). A str is immutable, so the same object stays valid.
_valid_time: str | None = None


def _check_time(time: object) -> None:
    global _valid_time  # noqa: PLW0603 - a one-entry cache (see _valid_time)
    if not isinstance(time, str) or not _TIME_RE.fullmatch(time):
        raise ParseError(
            f"time {time!r}, expected YYYY-MM-DDTHH:MM:SS.ffffffZ",
            structure=_STRUCTURE,
            field="time",
        )
    try:
        datetime.fromisoformat(time[:-1])  # the pattern matched; is it a real date?
    except ValueError:
        raise ParseError(f"time {time!r} is not a valid date", structure=_STRUCTURE, field="time") from None
    _valid_time = time


@dataclass(frozen=True)
class Entry:
    """One ledger entry; ``payload`` is type specific (see docs/ledger.md). ``salt``: SALT_SIZE
    bytes, fresh from :func:`new_salt` unless given (a version 2 entry); ``None`` only for the
    version 1 entries of logs written before the salt. It is left out of the ``repr``, so no
    log line or exception that shows an entry carries it."""

    type: EntryType
    time: str
    policy: str | None
    payload: dict[str, Any] = field(default_factory=dict)
    salt: bytes | None = field(default_factory=new_salt, repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.type, EntryType):
            raise ParseError(f"type {self.type!r} is not an entry type", structure=_STRUCTURE, field="type")
        if self.time is not _valid_time:
            self._check_time()
        if self.policy is not None and (not isinstance(self.policy, str) or not self.policy):
            raise ParseError(
                "policy must be a non-empty string or null", structure=_STRUCTURE, field="policy"
            )
        if not isinstance(self.payload, dict):
            raise ParseError("payload must be an object", structure=_STRUCTURE, field="payload")
        _check_payload(self.payload, "payload")
        if self.salt is not None and _bad_salt(self.salt):
            raise ParseError(
                f"salt must be {SALT_SIZE} bytes (or None: a version {ENTRY_VERSION_UNSALTED} entry)",
                structure=_STRUCTURE,
                field="salt",
            )

    @property
    def version(self) -> int:
        return ENTRY_VERSION_UNSALTED if self.salt is None else ENTRY_VERSION

    def _check_time(self) -> None:
        _check_time(self.time)

    @classmethod
    def create(
        cls, type: EntryType, at: datetime, payload: dict[str, Any], policy: str | None = None
    ) -> Entry:
        return cls(type=type, time=format_time(at), policy=policy, payload=payload)

    def to_json(self) -> dict[str, Any]:
        out = {
            "v": self.version,
            "type": self.type.value,
            "time": self.time,
            "policy": self.policy,
            "payload": self.payload,
        }
        if self.salt is not None:
            out["salt"] = self.salt.hex()
        return out

    def to_bytes(self) -> bytes:
        return canonical_json(self.to_json())

    def encoded(self) -> tuple[bytes, bytes]:
        """(:meth:`to_bytes`, the canonical JSON of the payload alone), the payload serialised
        once: RFC 8785 §3.2.3 sorts the members, so the entry is ``{"payload":`` the payload's
        bytes, then the other members (which sort after it) as their own object writes them."""
        payload = canonical_json(self.payload, 1)
        policy = self.policy
        salt = "" if self.salt is None else f'"salt":"{self.salt.hex()}",'
        if policy is None or policy.isascii():
            # What canonical_json writes for these members, without the walk: the time matched
            # its pattern (digits and separators), the type names and the salt's hex digits need
            # no escapes, and an ASCII policy name is written as json writes it, which is
            # RFC 8785's (see _plain). "salt" sorts between "policy" and "time" (§3.2.3).
            name = "null" if policy is None else _JSON_ENCODE(policy)
            rest = (
                f'"policy":{name},{salt}"time":"{self.time}","type":"{self.type.value}","v":{self.version}}}'
            )
            return b'{"payload":' + payload + b"," + rest.encode("utf-8"), payload
        members: dict[str, Any] = {
            "policy": policy,
            "time": self.time,
            "type": self.type.value,
            "v": self.version,
        }
        if self.salt is not None:
            members["salt"] = self.salt.hex()
        whole = canonical_json(members)
        return b'{"payload":' + payload + b"," + whole[1:], payload

    @classmethod
    def from_bytes(cls, data: bytes) -> Entry:
        value = parse_canonical_json(data)
        if not isinstance(value, dict):
            raise ParseError("expected a JSON object", structure=_STRUCTURE)
        # A version 2 entry has a salt; a version 1 entry (of a log written before) has none.
        version = value.get("v")
        expected = _MEMBERS if version == ENTRY_VERSION else _MEMBERS_V1
        if set(value) != expected:
            raise ParseError(
                f"members {sorted(value)}, expected {sorted(expected)} (a version {ENTRY_VERSION} "
                f"entry has a salt, a version {ENTRY_VERSION_UNSALTED} entry none)",
                structure=_STRUCTURE,
            )
        if version not in (ENTRY_VERSION, ENTRY_VERSION_UNSALTED) or isinstance(version, bool):
            raise ParseError(
                f"version {version!r}, expected {ENTRY_VERSION} (or {ENTRY_VERSION_UNSALTED})",
                structure=_STRUCTURE,
                field="v",
            )
        salt: bytes | None = None
        if version == ENTRY_VERSION:
            text = value["salt"]
            # the one canonical form: 2 * SALT_SIZE lower-case hex digits (the value is not
            # repeated in the message)
            if not isinstance(text, str) or _SALT_RE.fullmatch(text) is None:
                raise ParseError(
                    f"salt must be {2 * SALT_SIZE} lower-case hex digits", structure=_STRUCTURE, field="salt"
                )
            salt = bytes.fromhex(text)
        type_name = value["type"]
        try:
            if not isinstance(type_name, str):
                raise ValueError(type_name)
            etype = EntryType(type_name)
        except ValueError:
            raise ParseError(
                f"unknown entry type {value['type']!r}", structure=_STRUCTURE, field="type"
            ) from None
        payload = value["payload"]
        if not isinstance(payload, dict):
            raise ParseError("payload must be an object", structure=_STRUCTURE, field="payload")
        policy = value["policy"]
        if policy is not None and not isinstance(policy, str):
            raise ParseError("policy must be a string or null", structure=_STRUCTURE, field="policy")
        time = value["time"]
        if not isinstance(time, str):
            raise ParseError("time must be a string", structure=_STRUCTURE, field="time")
        return cls(type=etype, time=time, policy=policy, payload=payload, salt=salt)


def encode_entry(
    entry_type: EntryType, time: str, policy: str | None, payload: dict[str, Any], salt: bytes | None = None
) -> tuple[bytes, bytes]:
    """``Entry(entry_type, time, policy, payload, salt).encoded()`` without the frozen
    dataclass: the same checks, in the same order, the same errors and the same bytes (the
    CAS's writer encodes two entries per attestation). A payload that :func:`_clean` judges in
    one walk is written by ``json``'s C encoder; anything else takes the :class:`Entry` path
    itself. Always a version 2 entry: ``salt`` ``None`` means a fresh :func:`new_salt`."""
    if salt is None:
        salt = os.urandom(SALT_SIZE)
    if entry_type.__class__ is not EntryType:
        return Entry(entry_type, time, policy, payload, salt).encoded()  # raises
    if time is not _valid_time:
        _check_time(time)
    if (
        (policy is not None and (policy.__class__ is not str or not policy or not policy.isascii()))
        or payload.__class__ is not dict
        or not _clean(payload, 1)
        or _bad_salt(salt)
    ):
        return Entry(entry_type, time, policy, payload, salt).encoded()
    body = _JSON_ENCODE(payload).encode("utf-8")
    # as Entry.encoded writes the members after the payload (an ASCII policy name: json's form)
    name = "null" if policy is None else _JSON_ENCODE(policy)
    rest = f'"policy":{name},"salt":"{salt.hex()}","time":"{time}","type":"{entry_type.value}","v":2}}'
    return b'{"payload":' + body + b"," + rest.encode("utf-8"), body
