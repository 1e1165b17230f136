"""A policy problem: where (path in the document, and file/line/column when known) and what."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from confide.errors import PolicyError

__all__ = ["Path", "Problem", "format_path", "policy_error"]

Path = tuple[str | int, ...]


def format_path(path: Path) -> str:
    """``("services", 0, "attestation")`` -> ``services[0].attestation``. A key that ``repr``
    would escape (a newline, U+2028, a bidirectional override, a tab, a backslash) or that is
    empty is shown as ``[repr]``: ``environment['a\\nb']``. It is the document's own text,
    which would otherwise forge a problem line of its own or reorder the line as displayed."""
    out = ""
    for seg in path:
        if isinstance(seg, int):
            out += f"[{seg}]"
        elif not seg or repr(seg)[1:-1] != seg:
            out += f"[{seg!r}]"
        else:
            out += f".{seg}" if out else seg
    return out or "(document)"


@dataclass(frozen=True, slots=True)
class Problem:
    """One problem of a policy document. ``line`` and ``column`` are 1-based."""

    path: Path
    message: str
    source: str | None = None
    line: int | None = None
    column: int | None = None

    def __str__(self) -> str:
        where = ""
        if self.line is not None:
            where = f"{self.source or '<policy>'}:{self.line}:{self.column}: "
        elif self.source is not None:
            where = f"{self.source}: "
        return f"{where}{format_path(self.path)}: {self.message}"


def policy_error(problems: Sequence[Problem], *, source: str | None = None) -> PolicyError:
    """A :class:`PolicyError` listing every problem, one per line."""
    count = len(problems)
    head = f"{source or 'policy'}: {count} problem{'s' if count != 1 else ''}"
    return PolicyError(head + "\n" + "\n".join(f"  {p}" for p in problems), problems=problems)
