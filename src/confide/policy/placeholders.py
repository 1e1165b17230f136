"""Secret placeholders: ``$$SCONE::name$$`` and ``$$SCONE::name:format$$``.

Syntax (SCONE session language v0.3, "Secret Injection"): a placeholder starts with
``$$SCONE::``, names a secret, optionally a format suffix introduced by ``:`` (or one of SCONE's
deprecated ``.hex``/``.crt``/``.key``/``.chain`` suffixes), and ends with ``$$``. SCONE documents
no escape for a literal ``$$SCONE::``; confide therefore treats every ``$$SCONE::`` as the start
of a placeholder and rejects one that is malformed, names an unknown secret or a format the
secret's kind does not have. A ``$$`` not followed by ``SCONE::`` is literal text.

Which formats each kind has (SCONE v0.3.5+ names; "binary" output may contain any byte and is
therefore allowed only in injected files, never in the command or the environment):

=============  ===============================================  ===========================
kind           suffix                                           encoding
=============  ===============================================  ===========================
ascii          (none)                                           TEXT
binary         (none), ``bin``                                  BINARY (binary)
binary         ``hex`` (``.hex``), ``base64``, ``base64url``,   text encodings of the bytes
               ``base32``, ``base32nopad``
private-key    (none), ``pem``, ``pkcs8:pem``                   PEM_PKCS8
private-key    ``der``, ``pkcs8:der``                           DER_PKCS8 (binary)
public-key     (none), ``pem``                                  PEM_SPKI
public-key     ``der``                                          DER_SPKI (binary)
x509, x509-ca  (none), ``crt``, ``crt:pem`` (``.crt``)          CERT_PEM
x509, x509-ca  ``crt:der``                                      CERT_DER (binary)
x509, x509-ca  ``privatekey``, ``privatekey:pem``,              PEM_PKCS8
               ``privatekey:pkcs8:pem`` (``.key``)
x509, x509-ca  ``privatekey:der``, ``privatekey:pkcs8:der``     DER_PKCS8 (binary)
x509, x509-ca  ``chain``                                        CHAIN_PEM (the issuers only:
                                                                first intermediate to root,
                                                                without the certificate)
x509, x509-ca  ``.chain`` (deprecated)                          LEGACY_CHAIN_PEM (root first,
                                                                certificate itself last)
x509, x509-ca  ``pkcs12-with-private-key``                      PKCS12 (binary: DER PKCS#12
                                                                of the certificate, its key
                                                                and chain; empty password)
x509-ca        ``crl``, ``crl:pem`` (confide)                   CRL_PEM (the CA's current CRL)
x509-ca        ``crl:der`` (confide)                            CRL_DER (binary)
=============  ===============================================  ===========================

``crl`` is a confide extension: the current RFC 5280 CRL of a CA the CAS generated
(docs/cas.md "Revocation"), rendered by the CAS at release (not in templates rendered at start).

Rendering keys and certificates is the secrets layer's job; this module renders the byte-string
encodings (:func:`encode_bytes`) and performs the substitution given a resolver.
"""

from __future__ import annotations

import base64
import enum
import functools
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from confide.errors import PolicyError

__all__ = [
    "RUNTIME_KEY_MARKER",
    "Context",
    "Encoding",
    "Placeholder",
    "PlaceholderSyntaxError",
    "RenderBudget",
    "encode_bytes",
    "encoding_for",
    "find_placeholders",
    "formats_for_kind",
    "render_command",
    "render_environment",
    "render_file",
    "split_command",
    "substitute_text",
]

PREFIX = "$$SCONE::"
SUFFIX = "$$"
MAX_PLACEHOLDER = 256
"""Longest placeholder body considered (name + format); a longer one is malformed."""
MAX_RENDERED = 16 << 20
"""Most bytes one release's command, environment and injected files may render to together
(16 MiB; :class:`RenderBudget`). A placeholder of a few bytes can stand for a value of up to
~128 KiB (a 64 KiB binary secret as ``:hex``), so a 1 MiB policy could otherwise render to
gigabytes at every attestation; the client reads a release of at most 64 MiB anyway."""
RUNTIME_KEY_MARKER = b"@@CONFIDE:RUNTIME-PRIVATE-KEY-PEM@@"
"""What a certificate issued to the runtime (``issue_to_runtime``) renders ``privatekey`` as;
``confide run`` replaces every occurrence with the runtime's own private key (PEM). A
substitution that forms it where no placeholder rendered it is refused (:func:`_substitute`)."""

_BODY_RE = re.compile(
    r"(?P<name>[A-Za-z0-9_\-]{1,128})"
    r"(?:(?::(?P<fmt>[a-z0-9]+(?:-[a-z0-9]+)*(?::[a-z0-9]+(?:-[a-z0-9]+)*)*))|(?:\.(?P<legacy>[a-z]+)))?"
)


class Encoding(enum.StrEnum):
    """What a placeholder is replaced with."""

    TEXT = "text"
    BINARY = "binary"
    HEX = "hex"
    BASE64 = "base64"
    BASE64URL = "base64url"
    BASE32 = "base32"
    BASE32_NOPAD = "base32nopad"
    PEM_PKCS8 = "pem-pkcs8"
    DER_PKCS8 = "der-pkcs8"
    PEM_SPKI = "pem-spki"
    DER_SPKI = "der-spki"
    CERT_PEM = "cert-pem"
    CERT_DER = "cert-der"
    CHAIN_PEM = "chain-pem"
    LEGACY_CHAIN_PEM = "legacy-chain-pem"
    CRL_PEM = "crl-pem"
    CRL_DER = "crl-der"
    PKCS12 = "pkcs12"

    @property
    def is_binary(self) -> bool:
        """True when the output may contain any byte (NUL included): files only."""
        return self in _BINARY_ENCODINGS


_BINARY_ENCODINGS = frozenset(
    {
        Encoding.BINARY,
        Encoding.DER_PKCS8,
        Encoding.DER_SPKI,
        Encoding.CERT_DER,
        Encoding.CRL_DER,
        Encoding.PKCS12,
    }
)

_KEY_FORMATS: dict[str | None, Encoding] = {
    None: Encoding.PEM_PKCS8,
    "pem": Encoding.PEM_PKCS8,
    "pkcs8:pem": Encoding.PEM_PKCS8,
    "der": Encoding.DER_PKCS8,
    "pkcs8:der": Encoding.DER_PKCS8,
}
_CERT_FORMATS: dict[str | None, Encoding] = {
    None: Encoding.CERT_PEM,
    "crt": Encoding.CERT_PEM,
    "crt:pem": Encoding.CERT_PEM,
    ".crt": Encoding.CERT_PEM,
    "crt:der": Encoding.CERT_DER,
    "privatekey": Encoding.PEM_PKCS8,
    "privatekey:pem": Encoding.PEM_PKCS8,
    "privatekey:pkcs8:pem": Encoding.PEM_PKCS8,
    ".key": Encoding.PEM_PKCS8,
    "privatekey:der": Encoding.DER_PKCS8,
    "privatekey:pkcs8:der": Encoding.DER_PKCS8,
    "chain": Encoding.CHAIN_PEM,
    ".chain": Encoding.LEGACY_CHAIN_PEM,
    "pkcs12-with-private-key": Encoding.PKCS12,
}
_FORMATS: dict[str, dict[str | None, Encoding]] = {
    "ascii": {None: Encoding.TEXT},
    "binary": {
        None: Encoding.BINARY,
        "bin": Encoding.BINARY,
        "hex": Encoding.HEX,
        ".hex": Encoding.HEX,
        "base64": Encoding.BASE64,
        "base64url": Encoding.BASE64URL,
        "base32": Encoding.BASE32,
        "base32nopad": Encoding.BASE32_NOPAD,
    },
    "private-key": _KEY_FORMATS,
    "public-key": {None: Encoding.PEM_SPKI, "pem": Encoding.PEM_SPKI, "der": Encoding.DER_SPKI},
    "x509": _CERT_FORMATS,
    "x509-ca": {
        **_CERT_FORMATS,
        "crl": Encoding.CRL_PEM,
        "crl:pem": Encoding.CRL_PEM,
        "crl:der": Encoding.CRL_DER,
    },
}
ALL_FORMATS = frozenset(f for table in _FORMATS.values() for f in table if f is not None)


class Context(enum.StrEnum):
    """Where a placeholder appears."""

    COMMAND = "command"
    ENVIRONMENT = "environment"
    FILE = "injection file"
    ACCESS_POLICY = "access policy"
    FSPF_KEY = "fspf_key"


@dataclass(frozen=True, slots=True)
class Placeholder:
    """One ``$$SCONE::name[:format]$$`` occurrence: ``text[start:end]``."""

    name: str
    format: str | None
    """The suffix as written: ``None``, ``"hex"``, ``"privatekey:pem"``, or ``".crt"``."""
    start: int
    end: int

    def __str__(self) -> str:
        if self.format is None:
            return f"{PREFIX}{self.name}{SUFFIX}"
        sep = "" if self.format.startswith(".") else ":"
        return f"{PREFIX}{self.name}{sep}{self.format}{SUFFIX}"


class PlaceholderSyntaxError(ValueError):
    """A malformed placeholder (a ``ValueError`` so that pydantic reports it with a location)."""


def find_placeholders(text: str) -> list[Placeholder]:
    """Every placeholder in ``text``, in order; raises :class:`PlaceholderSyntaxError` on a
    ``$$SCONE::`` that does not start a well-formed placeholder."""
    found: list[Placeholder] = []
    pos = 0
    while (start := text.find(PREFIX, pos)) != -1:
        body_start = start + len(PREFIX)
        close = text.find(SUFFIX, body_start, body_start + MAX_PLACEHOLDER + len(SUFFIX))
        if close == -1:
            raise PlaceholderSyntaxError(
                f"got an unterminated placeholder at character {start}, expected "
                f"'$$SCONE::name$$' or '$$SCONE::name:format$$'"
            )
        body = text[body_start:close]
        m = _BODY_RE.fullmatch(body)
        if m is None:
            shown = body if len(body) <= 40 else body[:37] + "..."
            raise PlaceholderSyntaxError(
                f"got placeholder body {shown!r} at character {start}, expected 'name' or "
                "'name:format' (name: A-Z a-z 0-9 _ -, format: e.g. hex, base64, crt, chain)"
            )
        fmt = m.group("fmt")
        if m.group("legacy") is not None:
            fmt = "." + m.group("legacy")
        found.append(Placeholder(m.group("name"), fmt, start, close + len(SUFFIX)))
        pos = close + len(SUFFIX)
    return found


def formats_for_kind(kind: str) -> tuple[str, ...]:
    """The format suffixes a secret kind supports (without the empty suffix)."""
    return tuple(sorted(f for f in _FORMATS.get(kind, {}) if f is not None))


def encoding_for(kind: str | None, fmt: str | None, context: Context) -> Encoding | None:
    """The encoding of ``$$SCONE::name:fmt$$`` for a secret of ``kind`` in ``context``.

    ``kind`` is ``None`` for an import that does not state its kind: then only the format's
    existence is checked and ``None`` is returned (the CAS checks again once the import is
    resolved). Raises ``ValueError`` with a "got X, expected Y" message otherwise.
    """
    if context in (Context.ACCESS_POLICY, Context.FSPF_KEY) and fmt is not None:
        raise ValueError(f"got format {fmt!r} in {context}, expected no format suffix")
    if kind is None:
        if fmt is not None and fmt not in ALL_FORMATS:
            raise ValueError(f"got unknown format {fmt!r}, expected one of: {', '.join(sorted(ALL_FORMATS))}")
        return None
    table = _FORMATS.get(kind)
    if table is None:
        raise ValueError(f"got secret kind {kind!r}, expected one of: {', '.join(_FORMATS)}")
    if fmt not in table:
        allowed = ", ".join(formats_for_kind(kind)) or "none (no format suffix)"
        raise ValueError(f"got format {fmt!r} for a {kind} secret, expected: {allowed}")
    encoding = table[fmt]
    if encoding.is_binary and context in (Context.COMMAND, Context.ENVIRONMENT):
        raise ValueError(
            f"got binary format {fmt or '(default)'!r} of a {kind} secret in the {context}, expected "
            "a text format (e.g. ':hex' or ':base64'); binary values only go into injected files"
        )
    if context is Context.FSPF_KEY and kind != "binary":
        raise ValueError(f"got a {kind} secret as fspf_key, expected a binary secret")
    return encoding


def encode_bytes(raw: bytes, encoding: Encoding) -> bytes:
    """Render a byte-string secret (ascii or binary kind) in ``encoding``."""
    match encoding:
        case Encoding.TEXT | Encoding.BINARY:
            return raw
        case Encoding.HEX:
            return raw.hex().encode()
        case Encoding.BASE64:
            return base64.b64encode(raw)
        case Encoding.BASE64URL:
            return base64.urlsafe_b64encode(raw)
        case Encoding.BASE32:
            return base64.b32encode(raw)
        case Encoding.BASE32_NOPAD:
            return base64.b32encode(raw).rstrip(b"=")
        case _:
            raise ValueError(f"got encoding {encoding}, expected a byte-string encoding")


Resolver = Callable[[Placeholder], bytes]
"""Returns the rendered value of a placeholder (the secrets layer knows kinds and values)."""


class RenderBudget:
    """The bytes left for rendering one release (:data:`MAX_RENDERED` at first): every text
    substituted with it takes its rendered size, and one that would go beyond is refused
    (``PolicyError``, naming where, never a value) as soon as it does, before it is whole."""

    __slots__ = ("left", "limit")

    def __init__(self, limit: int | None = None) -> None:
        self.limit = MAX_RENDERED if limit is None else limit
        self.left = self.limit

    def take(self, size: int, where: str) -> None:
        """Count ``size`` more bytes of the release (``where``: what they are)."""
        if size > self.left:
            raise self.exceeded(where)
        self.left -= size

    def exceeded(self, where: str) -> PolicyError:
        return PolicyError(
            f"{where}: got more than {self.limit} bytes to release (command, environment, injected"
            " files, template secrets) after substitution, expected a smaller release (placeholders"
            " repeat their values)"
        )


MAX_CACHED_TEXT = 64 * 1024
"""Longest text whose placeholders :func:`_placeholders_of` remembers (characters)."""


@functools.lru_cache(maxsize=1024)
def _cached_placeholders(text: str) -> tuple[Placeholder, ...]:
    return tuple(find_placeholders(text))


def _placeholders_of(text: str) -> tuple[Placeholder, ...]:
    """:func:`find_placeholders`, remembered for the texts a CAS renders on every attestation
    (a policy's command arguments, environment values and files; a syntax error is not), up
    to :data:`MAX_CACHED_TEXT` characters: a 1 MiB file of placeholders parses to ~10 MB of
    them, so 1024 such texts (policies with an explicit value may be 1 MiB, each attested once)
    would have held ~11 GB. A longer text is parsed at each rendering (linear in its size)."""
    if len(text) > MAX_CACHED_TEXT:
        return tuple(find_placeholders(text))
    return _cached_placeholders(text)


def _substitute(text: str, resolve: Resolver, budget: RenderBudget, where: str) -> bytes:
    if PREFIX not in text:
        raw = text.encode()
        budget.take(len(raw), where)
        return raw
    out = bytearray()
    pos = 0
    markers = 0
    for ph in _placeholders_of(text):
        out += text[pos : ph.start].encode()
        piece = resolve(ph)
        markers += piece.count(RUNTIME_KEY_MARKER)
        out += piece
        if len(out) > budget.left:
            raise budget.exceeded(where)
        pos = ph.end
    out += text[pos:].encode()
    budget.take(len(out), where)
    if out.count(RUNTIME_KEY_MARKER) > markers + text.encode().count(RUNTIME_KEY_MARKER):
        # Values side by side (or a value and the text around it) that spell the marker between
        # them: confide run would put the runtime's private key there.
        raise PolicyError("got values that together spell confide's runtime-key marker: refused")
    return bytes(out)


def substitute_text(text: str, resolve: Resolver, *, where: str, budget: RenderBudget | None = None) -> str:
    """Substitute into a command argument or environment value: the result must be UTF-8 text
    without NUL (SCONE: "C-String compatible"). The error never contains the value. ``budget``:
    the release's (:class:`RenderBudget`; a fresh one of :data:`MAX_RENDERED` when omitted)."""
    try:
        raw = _substitute(text, resolve, budget or RenderBudget(), where)
    except PlaceholderSyntaxError as exc:
        raise PolicyError(f"{where}: {exc}") from None
    if b"\x00" in raw:
        raise PolicyError(f"{where}: got a value containing NUL after substitution, expected C-string text")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise PolicyError(f"{where}: got non-UTF-8 bytes after substitution, expected text") from None


def render_file(content: str, resolve: Resolver, *, where: str, budget: RenderBudget | None = None) -> bytes:
    """Substitute into an injected file's content; binary encodings are allowed here. ``budget``:
    as for :func:`substitute_text`."""
    try:
        return _substitute(content, resolve, budget or RenderBudget(), where)
    except PlaceholderSyntaxError as exc:
        raise PolicyError(f"{where}: {exc}") from None


def split_command(command: str) -> list[str]:
    """Split a command string the way SCONE documents it: at whitespace, except inside single
    or double quotes (which are removed). No backslash escapes. Placeholders are substituted
    after splitting, so a secret value never splits an argument."""
    args: list[str] = []
    current: list[str] = []
    in_arg = False
    quote: str | None = None
    for ch in command:
        if quote is not None:
            if ch == quote:
                quote = None
            else:
                current.append(ch)
        elif ch in ("'", '"'):
            quote = ch
            in_arg = True
        elif ch.isspace():
            if in_arg:
                args.append("".join(current))
                current, in_arg = [], False
        else:
            current.append(ch)
            in_arg = True
    if quote is not None:
        raise ValueError(f"got an unterminated {quote} quote in the command, expected a closing {quote}")
    if in_arg:
        args.append("".join(current))
    return args


def render_command(argv: Sequence[str], resolve: Resolver, budget: RenderBudget | None = None) -> list[str]:
    """Substitute placeholders in each argument of an already split command (all of them within
    one ``budget``, a fresh one when omitted)."""
    budget = budget or RenderBudget()
    return [substitute_text(arg, resolve, where=f"command[{i}]", budget=budget) for i, arg in enumerate(argv)]


def render_environment(
    environment: Mapping[str, str], resolve: Resolver, budget: RenderBudget | None = None
) -> dict[str, str]:
    """Substitute placeholders in environment values (names never contain placeholders; they
    count against ``budget`` all the same, as the release carries them)."""
    budget = budget or RenderBudget()
    out: dict[str, str] = {}
    for k, v in environment.items():
        where = f"environment.{k}"
        budget.take(len(k.encode("utf-8", "surrogatepass")) + 1, where)
        out[k] = substitute_text(v, resolve, where=where, budget=budget)
    return out
