"""Loading policy YAML into a validated :class:`~confide.policy.model.Policy`.

Hostile input is expected. The text is bounded (:data:`MAX_BYTES`), must be UTF-8, and is first
scanned as a stream of parser events: anchors, aliases and explicit tags are refused (no
"billion laughs", no constructor tricks), and so are merge keys (``<<``), ``%YAML`` directives
other than 1.2, plain integers longer than :data:`MAX_INT_DIGITS`, plain values that read as
an integer, number or timestamp but do not convert, nesting deeper than :data:`MAX_DEPTH` and
more than :data:`MAX_NODES` nodes (and, before that, more than :data:`MAX_LINES` lines). Only
then is it composed by ruamel.yaml's round-trip loader (YAML 1.2, duplicate keys are errors; a
number key and a text key of the same name are duplicates too), which keeps the line and column
of every node. Every
pydantic validation error is mapped back to the file, line and column of the offending node,
and all problems are raised together in one :class:`~confide.errors.PolicyError`. Nothing but
``PolicyError`` (or ``UsageError`` for an unreadable file) escapes.

Secret values are never echoed: the input of any error under ``secrets[*].value`` is redacted.
"""

from __future__ import annotations

import datetime
import os
import pathlib
import re
import types
import typing
from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel, ValidationError
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import MarkedYAMLError
from ruamel.yaml.events import (
    AliasEvent,
    CollectionEndEvent,
    CollectionStartEvent,
    DocumentStartEvent,
    MappingStartEvent,
    NodeEvent,
    ScalarEvent,
)
from ruamel.yaml.nodes import ScalarNode
from ruamel.yaml.reader import ReaderError

from confide.errors import PolicyError, UsageError
from confide.fsutil import read_regular
from confide.policy._types import short
from confide.policy.model import Policy
from confide.policy.problems import Path, Problem, policy_error

__all__ = [
    "MAX_BYTES",
    "MAX_DEPTH",
    "MAX_INT_DIGITS",
    "MAX_LINES",
    "MAX_NODES",
    "load_policy",
    "loads_policy",
]

MAX_BYTES = 1 << 20
"""Largest policy document accepted (1 MiB)."""
MAX_DEPTH = 64
"""Deepest nesting of mappings and sequences accepted."""
MAX_NODES = 20_000
"""Most YAML nodes accepted in one document."""
MAX_LINES = 50_000
"""Most lines accepted (a long policy has a few thousand): ruamel.yaml's round-trip scanner
joins runs of comment lines by repeated string concatenation, so 1 MiB of short comment lines
took 40 s to parse; 50 000 lines bound every 1 MiB input to a few seconds."""
MAX_INT_DIGITS = 100
"""Longest plain (unquoted) integer accepted, in digits: no policy value comes close (the
largest are 64-bit), and Python refuses to convert decimal integers of more than 4300 digits."""

# Implicitly typed scalars ruamel.yaml converts (and can fail to convert without a position).
_CONVERTED_TAGS = {
    "tag:yaml.org,2002:int": "an integer",
    "tag:yaml.org,2002:float": "a number",
    "tag:yaml.org,2002:timestamp": "a timestamp",
}

# YAML 1.2 core schema integers as ruamel.yaml resolves them (underscores included).
_INT_LIKE = re.compile(r"[-+]?(?:0x[0-9a-fA-F_]+|0o[0-7_]+|[0-9][0-9_]*)")


def load_policy(path: str | os.PathLike[str]) -> Policy:
    """Read and validate the policy file at ``path`` (a regular file, after symlinks: a FIFO or
    a device is refused, not waited on)."""
    try:
        data = read_regular(pathlib.Path(path), MAX_BYTES)
    except OSError as exc:
        raise UsageError(f"cannot read policy file {os.fspath(path)!r}: {exc.strerror or exc}") from None
    return loads_policy(data, source=os.fspath(path))


def loads_policy(text: str | bytes, *, source: str = "<policy>", stored: bool = False) -> Policy:
    """Validate a policy given as YAML text (or bytes, which must be UTF-8). ``stored``: a
    version the CAS accepted before, read back: checks added since versions could be stored
    without them are left out, so it still loads (and can be updated); what they refuse is
    refused at release instead (:func:`confide.policy.model._reference_problems`)."""
    document, tree = parse_yaml(text, source=source)
    try:
        return Policy.model_validate(document, context={"stored": stored})
    except ValidationError as exc:
        raise policy_error(_problems_from_validation(exc, tree, source), source=source) from None
    except PolicyError as exc:  # cross-reference problems, raised by Policy's model validator
        problems = [_locate(p, tree, source) for p in exc.problems if isinstance(p, Problem)]
        raise policy_error(problems or [Problem((), exc.message, source)], source=source) from None


def _fail(source: str, message: str, line: int | None = None, column: int | None = None) -> PolicyError:
    return policy_error([Problem((), message, source, line, column)], source=source)


def parse_yaml(text: str | bytes, *, source: str = "<policy>") -> tuple[Any, Any]:
    """Parse YAML safely; return (plain document of dict/list/str/int/..., ruamel node tree)."""
    if isinstance(text, bytes):
        if len(text) > MAX_BYTES:
            raise _fail(source, f"got more than {MAX_BYTES} bytes, expected a smaller policy")
        data = text
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            before = data[: exc.start]
            line = before.count(b"\n") + 1
            column = len(before.rpartition(b"\n")[2].decode("utf-8", "replace")) + 1
            raise _fail(
                source, f"got invalid UTF-8 at byte {exc.start}, expected UTF-8 text", line, column
            ) from None
    if len(text.encode("utf-8", "surrogatepass")) > MAX_BYTES:
        raise _fail(source, f"got more than {MAX_BYTES} bytes, expected a smaller policy")
    # A leading byte-order mark is allowed (YAML 1.2, 5.2) and not counted in columns.
    text = text.removeprefix("\ufeff")
    # Line breaks: LF, CR LF or a lone CR (YAML 1.2, 5.4).
    if text.count("\n") + text.count("\r") - text.count("\r\n") > MAX_LINES:
        raise _fail(source, f"got more than {MAX_LINES} lines, expected a shorter policy", MAX_LINES + 1, 1)
    for index, char in enumerate(text):
        if char == "\ufeff" or 0xD800 <= ord(char) <= 0xDFFF:
            raise _fail(
                source,
                "got a byte-order mark inside the text or a lone surrogate, expected plain UTF-8 text",
                *_line_column(text, index),
            )
    yaml = YAML(typ="rt", pure=True)
    yaml.allow_duplicate_keys = False
    try:
        _prescan(yaml, text, source)
        tree = yaml.load(text)
    except PolicyError:
        raise
    except MarkedYAMLError as exc:
        raise _yaml_error(exc, source) from None
    except ReaderError as exc:  # a character YAML does not allow (NUL, other C0/C1 controls)
        raise _fail(
            source,
            f"got the character U+{exc.character:04X}, which YAML does not allow, expected printable text",
            *_line_column(text, exc.position),
        ) from None
    except Exception as exc:
        raise _fail(source, f"got malformed YAML ({type(exc).__name__}), expected a YAML mapping") from None
    if tree is None:
        raise _fail(source, "got an empty document, expected a YAML mapping")
    if not isinstance(tree, CommentedMap):
        raise _fail(source, f"got a {_type_name(tree)} at the top level, expected a YAML mapping", 1, 1)
    problems: list[Problem] = []
    document = _plain(tree, (), problems, source)
    if problems:
        raise policy_error(problems, source=source)
    return document, tree


def _line_column(text: str, index: int) -> tuple[int, int]:
    """1-based line and column of the character at ``index`` of ``text``."""
    before = text[:index]
    return before.count("\n") + 1, index - (before.rfind("\n") + 1) + 1


def _unconvertible(yaml: YAML, value: str) -> str | None:
    """What a plain scalar reads as (integer, number, timestamp) when ruamel.yaml would fail to
    convert it (``2001-13-45``, ``0x_``): its loader raises a bare ``ValueError`` or
    ``IndexError`` then, with no position. None when it converts or is text."""
    tag = yaml.resolver.resolve(ScalarNode, value, (True, False))
    name = str(tag)  # a ruamel.yaml Tag, which does not hash like its text
    what = _CONVERTED_TAGS.get(name)
    if what is None:
        return None
    constructor = yaml.constructor
    try:
        constructor.yaml_constructors[name](constructor, ScalarNode(tag, value))
    except (ValueError, IndexError, OverflowError):
        return what
    return None


def _prescan(yaml: YAML, text: str, source: str) -> None:
    depth = nodes = 0
    # Per open collection: is it a mapping, and is its next node a key?
    stack: list[list[bool]] = []
    for event in yaml.parse(text):
        mark = event.start_mark
        where = (mark.line + 1, mark.column + 1) if mark is not None else (None, None)
        is_key = bool(stack) and stack[-1][0] and stack[-1][1]
        if isinstance(event, NodeEvent) and stack and stack[-1][0]:
            stack[-1][1] = not stack[-1][1]
        if isinstance(event, DocumentStartEvent) and event.version not in (None, (1, 2)):
            version = ".".join(str(v) for v in event.version)
            raise _fail(source, f"got a %YAML {version} directive, expected YAML 1.2", *where)
        if isinstance(event, ScalarEvent) and event.style is None:
            # YAML 1.1 merge keys (``<<: {...}``): ruamel.yaml merges them even in 1.2 mode,
            # which would add keys past the duplicate-key check.
            if is_key and event.value == "<<":
                raise _fail(source, "got a merge key (<<), expected no merge keys", *where)
            if len(event.value) > MAX_INT_DIGITS and _INT_LIKE.fullmatch(event.value):
                raise _fail(
                    source,
                    f"got an integer of {len(event.value)} characters, expected at most "
                    f"{MAX_INT_DIGITS} digits (quote it if it is text)",
                    *where,
                )
            what = _unconvertible(yaml, event.value)
            if what is not None:
                # The value is not shown: this pass does not know whether it is a secret's.
                raise _fail(
                    source,
                    f"got an unquoted value that reads as {what} but is not a valid one, "
                    "expected a valid one (quote it if it is text)",
                    *where,
                )
        if isinstance(event, AliasEvent):
            raise _fail(source, "got an alias (*name), expected no anchors or aliases", *where)
        if isinstance(event, NodeEvent):
            if event.anchor is not None:
                raise _fail(source, "got an anchor (&name), expected no anchors or aliases", *where)
            tag = getattr(event, "tag", None)
            if tag is not None:
                raise _fail(source, f"got the tag {short(tag)}, expected no explicit YAML tags", *where)
            nodes += 1
            if nodes > MAX_NODES:
                raise _fail(
                    source, f"got more than {MAX_NODES} YAML nodes, expected a smaller policy", *where
                )
        if isinstance(event, CollectionStartEvent):
            depth += 1
            if depth > MAX_DEPTH:
                raise _fail(
                    source, f"got nesting deeper than {MAX_DEPTH}, expected a shallower policy", *where
                )
            stack.append([isinstance(event, MappingStartEvent), True])
        elif isinstance(event, CollectionEndEvent):
            depth -= 1
            stack.pop()


_DUP_KEY = re.compile(r'found duplicate key "(.{0,80}?)" with value')


def _yaml_error(exc: MarkedYAMLError, source: str) -> PolicyError:
    mark = exc.problem_mark or exc.context_mark
    line = mark.line + 1 if mark is not None else None
    column = mark.column + 1 if mark is not None else None
    problem = str(exc.problem or exc.context or "malformed YAML")
    dup = _DUP_KEY.search(problem)
    if dup:
        first = exc.context_mark.line + 1 if exc.context_mark is not None else "?"
        # The key name only: ruamel's own message would echo both values (maybe secrets).
        message = (
            f"got duplicate key {dup.group(1)!r} (mapping starts at line {first}), expected each key once"
        )
    else:
        message = f"got malformed YAML: {problem[:120]}"
    return _fail(source, message, line, column)


def _type_name(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "float"
    if isinstance(value, str):
        return "string"
    if isinstance(value, dict):
        return "mapping"
    if isinstance(value, list | tuple):
        return "sequence"
    if isinstance(value, datetime.date):
        return "timestamp"
    return type(value).__name__


def _plain(node: Any, path: Path, problems: list[Problem], source: str) -> Any:
    """ruamel's tree -> plain dict/list/str/int/float/bool/None (keys: str; int keys -> str)."""
    if isinstance(node, CommentedMap):
        out: dict[str, Any] = {}
        for key, value in node.items():
            if isinstance(key, int) and not isinstance(key, bool):
                skey = str(int(key))
            elif isinstance(key, str):
                skey = str(key)
            else:
                line, col = node.lc.key(key) if key in node.lc.data else (node.lc.line, node.lc.col)
                problems.append(
                    Problem(
                        path, f"got a {_type_name(key)} key, expected a string key", source, line + 1, col + 1
                    )
                )
                continue
            if skey in out:
                # ``1`` and ``"1"`` are different YAML keys (ruamel's duplicate check passes)
                # but the same key here: the later one would silently replace the first.
                line, col = node.lc.key(key) if key in node.lc.data else (node.lc.line, node.lc.col)
                problems.append(
                    Problem(
                        path,
                        f"got duplicate key {skey!r} (as a number and as text), expected each key once",
                        source,
                        line + 1,
                        col + 1,
                    )
                )
                continue
            out[skey] = _plain(value, (*path, skey), problems, source)
        return out
    if isinstance(node, CommentedSeq | list):
        return [_plain(v, (*path, i), problems, source) for i, v in enumerate(node)]
    if isinstance(node, bool) or node is None:
        return node
    if isinstance(node, int):
        return int(node)
    if isinstance(node, float):
        return float(node)
    if isinstance(node, str):
        return str(node)
    return node  # timestamps and the like: pydantic reports the wrong type


# ---------------------------------------------------------------------------------------------
# Mapping validation errors to positions
# ---------------------------------------------------------------------------------------------


def _position(tree: Any, path: Sequence[str | int], *, key: bool = False) -> tuple[int, int]:
    """1-based line/column of the deepest node of ``path`` found in ``tree``. Segments that are
    not in the document (union tags, normalised forms, missing keys) are skipped."""
    node, pos = tree, (tree.lc.line, tree.lc.col)
    last = len(path) - 1
    for i, seg in enumerate(path):
        if isinstance(node, CommentedMap):
            k: Any = seg
            if k not in node and isinstance(seg, str) and seg.isdigit() and int(seg) in node:
                k = int(seg)
            if k in node:
                try:
                    pos = node.lc.key(k) if key and i == last else node.lc.value(k)
                except (KeyError, TypeError):
                    pos = (node.lc.line, node.lc.col)
                node = node[k]
        elif isinstance(node, CommentedSeq) and isinstance(seg, int) and 0 <= seg < len(node):
            try:
                pos = node.lc.item(seg)
            except (KeyError, TypeError):
                pos = (node.lc.line, node.lc.col)
            node = node[seg]
    return pos[0] + 1, pos[1] + 1


def _locate(problem: Problem, tree: Any, source: str) -> Problem:
    line, col = _position(tree, problem.path)
    return Problem(problem.path, problem.message, source, line, col)


def _redact(path: Sequence[str | int]) -> bool:
    return len(path) >= 3 and path[0] == "secrets" and path[2] in ("value", "application_secret")


def _got(value: Any, redact: bool) -> str:
    if redact:
        return f"a {_type_name(value)} (value not shown)"
    if isinstance(value, dict | list):
        return f"a {_type_name(value)}"
    return f"{_type_name(value)} {short(value)}"


_BOUNDS = {
    "greater_than_equal": (">=", "ge"),
    "less_than_equal": ("<=", "le"),
    "greater_than": (">", "gt"),
    "less_than": ("<", "lt"),
}
_EXPECTED_TYPE = {
    "string_type": "a string",
    "int_type": "an integer",
    "bool_type": "a boolean (true/false)",
    "dict_type": "a mapping",
    "model_type": "a mapping",
    "list_type": "a sequence",
    "tuple_type": "a sequence",
    "model_attributes_type": "a mapping",
    "enum": None,
    "literal_error": None,
}


def _message(err: Any, path: Sequence[str | int]) -> str:
    kind = err["type"]
    ctx = err.get("ctx") or {}
    value = err.get("input")
    redact = _redact(path)
    if kind == "missing":
        return f"missing required key {str(path[-1])!r}" if path else "missing required key"
    if kind == "extra_forbidden" and path:
        allowed = _allowed_keys(path[:-1])
        hint = f", expected one of: {', '.join(allowed)}" if allowed else ""
        return f"got unknown key {str(path[-1])!r}{hint}"
    if kind == "value_error":
        return str(ctx.get("error", err["msg"]))
    if kind in ("enum", "literal_error"):
        return f"got {_got(value, redact)}, expected {ctx.get('expected', 'another value')}"
    if kind in _EXPECTED_TYPE:
        hint = ""
        if kind == "string_type" and isinstance(value, int | float) and not isinstance(value, bool):
            hint = " (quote values that look like numbers)"
        return f"got {_got(value, redact)}, expected {_EXPECTED_TYPE[kind]}{hint}"
    if kind in ("too_short", "too_long"):
        return f"got {ctx.get('actual_length', '?')} items, expected {err['msg'].split('should have ')[-1]}"
    if kind in _BOUNDS:
        symbol, key = _BOUNDS[kind]
        return f"got {_got(value, redact)}, expected {symbol} {ctx.get(key, '?')}"
    if kind in ("string_too_short", "string_too_long"):
        size = len(value) if isinstance(value, str) else "?"
        return f"got a string of {size} characters, expected {err['msg'].removeprefix('String should have ')}"
    if kind in ("union_tag_invalid", "union_tag_not_found", "access_rule", "ocsp_declaration"):
        return f"got {_got(value, redact)}, {err['msg']}"
    return f"{err['msg']}: got {_got(value, redact)}"


def _problems_from_validation(exc: ValidationError, tree: Any, source: str) -> list[Problem]:
    problems: list[Problem] = []
    seen: set[tuple[Path, str]] = set()
    for err in exc.errors(include_url=False):
        loc = err["loc"]
        # The last segment of an unknown-key error is the document's own key, whatever it looks
        # like (a key such as "a[b" must not be taken for one of pydantic's internal segments).
        last = len(loc) - 1 if err["type"] == "extra_forbidden" else -1
        path: Path = tuple(
            seg for i, seg in enumerate(loc) if isinstance(seg, int) or i == last or _is_doc_key(seg)
        )
        message = _message(err, path)
        if (path, message) in seen:
            continue
        seen.add((path, message))
        line, col = _position(tree, path, key=err["type"] == "extra_forbidden")
        problems.append(Problem(path, message, source, line, col))
    return problems


_TAG_LIKE = re.compile(
    r"^(function-|tagged-union|union\[|json-or-python|lax-or-strict|literal\[|nullable|chain)"
)


def _is_doc_key(seg: object) -> bool:
    """Drop pydantic's internal location segments (``function-after[...]``, union tags)."""
    if not isinstance(seg, str):
        return False
    return not _TAG_LIKE.match(seg) and not seg.startswith("tuple[") and "[" not in seg


def _model_classes(annotation: Any) -> list[type[BaseModel]]:
    """The pydantic models an annotation can hold (through Optional, tuple, dict, Annotated)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    origin = typing.get_origin(annotation)
    out: list[type[BaseModel]] = []
    if origin is not None or isinstance(annotation, types.UnionType):
        for arg in typing.get_args(annotation):
            out += _model_classes(arg)
    return out


def _allowed_keys(path: Sequence[str | int]) -> list[str]:
    """The keys allowed in the mapping at ``path`` (for "unknown key" messages)."""
    classes: list[type[BaseModel]] = [Policy]
    for seg in path:
        if isinstance(seg, int) or (isinstance(seg, str) and seg.isdigit()):
            continue
        nxt: list[type[BaseModel]] = []
        for cls in classes:
            for name, field in cls.model_fields.items():
                if (field.alias or name) == seg:
                    nxt += _model_classes(field.annotation)
                    for meta in field.metadata:
                        nxt += _model_classes(meta)
        if not nxt:
            return []
        classes = nxt
    keys = {field.alias or name for cls in classes for name, field in cls.model_fields.items()}
    return sorted(keys)
