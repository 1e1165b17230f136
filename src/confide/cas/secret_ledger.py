"""Each secret's newest version as the ledger's entries record it (docs/cas.md "What a secret's
current version rests on"): a secret's authenticated head checked against it whenever it is read.

A secret's head row (:mod:`confide.cas.secret_heads`) is MAC'd, so an edited or deleted head is
detected; but the operator, who writes the database, can write back the head row as it was
before a later version (its genuine MAC) and delete that version's row: a genuine earlier state.
Every write of a secret version appends a ledger entry naming the policy, the secret and the
version in the same transaction (schema 20; names and versions only, never a value):

- ``secrets.generated`` (member ``secrets``: a policy's activation, an update, an owner's
  revocation's re-issue), ``certificates.renewed`` (member ``certificates``: renewals, OCSP
  responder certificates) and ``volume.key`` (member ``keys``: a volume's key, first or new;
  schema 20), each item with its ``name`` and ``version``, are a :class:`SecretMark`.
  :class:`~confide.cas.head_index.HeadIndex` finds them in the same scan as the policies' head
  entries (each entry's bytes checked against its leaf hash) and keeps, per secret, the
  highest version an entry names (:class:`SecretVersions`), in the same MAC'd snapshot
  (``policy_head_anchor.secrets``, schema 20), so a process starts from it and scans only the
  entries appended since. A ``secrets.heads-bound`` entry (the heads of a database from before
  schema 19 written at a start) is kept too: its index (:attr:`SecretVersions.bound`).
- a read of a secret's current version (:meth:`confide.cas.core.Cas._latest_secret`: every
  release, import resolution, update, renewal and revocation) whose head is not the one the
  process verified last is judged against the versions below the ledger size its transaction
  sees: a head older than the newest version the ledger records is
  :class:`~confide.cas.secret_heads.SecretRowsAltered` (exit 50). Nothing is accepted on the
  ledger's word: the check only refuses. So a head may be *newer* than the entries (a write
  inserts its row, its head and its entry in one transaction, the entry last; an index that has
  not scanned that entry yet, or a reader whose transaction began before it, lacks it; a
  version written before schema 20 without an entry, a volume key's): never refused. And a
  well-formed entry appended by whoever writes the database can only make the CAS refuse that
  secret (as deleting its rows does), never take an older version as current.

What remains (docs/limitations.md): versions the ledger never recorded (a volume key's before
schema 20) are trusted as found (trust on first migration); a whole-database rollback (entries,
tiles, snapshot and rows together) is what ``--witness-quorum`` detects."""

from __future__ import annotations

import bisect
import json
import logging
from collections.abc import Callable, Iterable
from typing import NamedTuple

from confide.errors import ParseError, StorageError
from confide.ledger.encoding import Entry, EntryType

__all__ = ["SECRET_SUFFIXES", "SecretMark", "SecretVersions", "secret_marks"]

_LOG = logging.getLogger("confide.cas")
# the payload member listing the versions an entry writes, by entry type
_MEMBERS = {
    EntryType.SECRETS_GENERATED: "secrets",
    EntryType.CERTIFICATES_RENEWED: "certificates",
    EntryType.VOLUME_KEY: "keys",
}
_BOUND = EntryType.SECRET_HEADS_BOUND
# Canonical JSON sorts an entry's members, ``type`` and ``v`` last (confide.ledger.encoding): an
# entry of a secret's version is recognised by its last bytes (confide.cas.head_index.scan)
SECRET_SUFFIXES = tuple(
    f',"type":"{t.value}","v":{v}}}'.encode() for t in (*_MEMBERS, _BOUND) for v in (1, 2)
)
_MAX = 2**53


class SecretMark(NamedTuple):
    """A secret's version a ledger entry records: the entry's index (``at``), the policy, the
    secret's name and the version."""

    at: int
    policy: str
    name: str
    version: int


def _version(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 < value < _MAX


def secret_marks(index: int, data: bytes) -> tuple[list[SecretMark], bool]:
    """The versions the ledger entry ``data`` at ``index`` records, and whether it is a
    ``secrets.heads-bound`` entry (``[]``: not such an entry, or malformed: logged; a genuine
    entry never is; an item without a name or version is skipped, logged)."""
    try:
        entry = Entry.from_bytes(data)
    except ParseError:
        entry = None
    if entry is None or not (entry.type in _MEMBERS or entry.type is _BOUND):
        _ignored(index, "is not a well-formed entry of a secret's versions")
        return [], False
    if entry.type is _BOUND:
        return [], True
    items = entry.payload.get(_MEMBERS[entry.type])
    if entry.policy is None or not isinstance(items, list):
        _ignored(index, "names no policy or no versions")
        return [], False
    out: list[SecretMark] = []
    for item in items:
        name = item.get("name") if isinstance(item, dict) else None
        version = item.get("version") if isinstance(item, dict) else None
        if not (isinstance(name, str) and _version(version)):
            _ignored(index, "names a secret without a name or version")
            continue
        assert isinstance(version, int)
        out.append(SecretMark(index, entry.policy, name, version))
    return out, False


def _ignored(index: int, why: str) -> None:
    _LOG.warning(json.dumps({"event": "secret-version-entry-ignored", "index": index, "why": why}))


Key = tuple[str, str]


def _at(item: tuple[int, int]) -> int:
    return item[0]


class SecretVersions:
    """Per secret (policy, name): the entries that raised its newest recorded version, as
    ``(at, version)`` in ledger order (both increasing: an entry naming a version not above the
    one before raises nothing), and the index of the first ``secrets.heads-bound`` entry
    (``bound``; ``None``: none). Immutable (a scan makes a new one), so a view keeps the one it
    was given. A snapshot keeps only each secret's last."""

    __slots__ = ("bound", "versions")

    def __init__(self, versions: dict[Key, tuple[tuple[int, int], ...]] | None = None,
                 bound: int | None = None) -> None:  # fmt: skip
        self.versions = versions if versions is not None else {}
        self.bound = bound

    def extended(
        self, found: Iterable[SecretMark], bound: Iterable[int] = ()
    ) -> tuple[SecretVersions, set[Key]]:
        """These versions and ``found`` (in ledger order after them); the secrets whose newest
        recorded version rose."""
        versions: dict[Key, tuple[tuple[int, int], ...]] | None = None
        changed: set[Key] = set()
        for mark in found:
            key = (mark.policy, mark.name)
            current = (versions or self.versions).get(key, ())
            if current and current[-1][1] >= mark.version:
                continue
            if versions is None:
                versions = dict(self.versions)
            versions[key] = (*current, (mark.at, mark.version))
            changed.add(key)
        first = self.bound
        for at in bound:
            if first is None:
                first = at
        if versions is None and first == self.bound:
            return self, changed
        return SecretVersions(self.versions if versions is None else versions, first), changed

    def newest(self, policy: str, name: str, size: int) -> tuple[int, int] | None:
        """The newest version an entry below ledger size ``size`` records for the secret, with
        that entry's index (``None``: none)."""
        marks = self.versions.get((policy, name))
        if not marks:
            return None
        if marks[-1][0] < size:  # the usual case: visible to this reader
            return marks[-1][1], marks[-1][0]
        at = bisect.bisect_left(marks, size, key=_at) - 1
        return None if at < 0 else (marks[at][1], marks[at][0])

    def encode(self) -> str:
        """The snapshot's text: canonical JSON ``{"bound": index or null, "versions": [[policy,
        name, at, version], ...]}``, sorted."""
        rows = sorted([p, n, m[-1][0], m[-1][1]] for (p, n), m in self.versions.items() if m)
        return json.dumps({"bound": self.bound, "versions": rows}, separators=(",", ":"))

    @staticmethod
    def decode(text: str, malformed: Callable[[], StorageError]) -> SecretVersions:
        try:
            value = json.loads(text)
        except ValueError:
            raise malformed() from None
        if not (isinstance(value, dict) and set(value) == {"bound", "versions"}
                and isinstance(value["versions"], list)
                and (value["bound"] is None or type(value["bound"]) is int)):  # fmt: skip
            raise malformed()
        versions: dict[Key, tuple[tuple[int, int], ...]] = {}
        for item in value["versions"]:
            if not (isinstance(item, list) and len(item) == 4 and isinstance(item[0], str)
                    and isinstance(item[1], str) and type(item[2]) is int and _version(item[3])):  # fmt: skip
                raise malformed()
            versions[(item[0], item[1])] = ((item[2], item[3]),)
        return SecretVersions(versions, value["bound"])
