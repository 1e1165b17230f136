"""Coverage-guided fuzzing (atheris) of the OCSP request reader,
:func:`confide.cas.ocsp_der.parse_ocsp_request`, and the responder's wrapper around it.

atheris is not a project dependency: install it into a throwaway venv that sees the project's
(it ships manylinux wheels), seed the corpus, and run one CPU at a time::

    python3 -m venv /tmp/atheris-venv && /tmp/atheris-venv/bin/pip install atheris
    .venv/bin/python tests/fuzz/make_ocsp_seeds.py /tmp/ocsp-seeds
    PYTHONPATH=src:$(.venv/bin/python -c 'import site; print(site.getsitepackages()[0])') \
      flock -x /tmp/confide-cpu.lock /tmp/atheris-venv/bin/python tests/fuzz/ocsp_request_fuzz.py \
      /tmp/ocsp-corpus /tmp/ocsp-seeds -max_len=4096 -rss_limit_mb=1024 -timeout=5 -max_total_time=600

``--der`` (before the libFuzzer flags) mutates the DER element tree instead of bytes (drops,
duplicates, inserts known OIDs and elements, re-tags, wraps, swaps; lengths re-encoded), which
reaches far more of the reader than byte flips, which mostly break a length.

Invariants checked on every input (an AssertionError or any exception but ParseError is a
finding; atheris then writes the input as ``crash-*``):

1. only :class:`~confide.errors.ParseError` escapes the reader; ``parse_request`` (what the
   responder answers ``malformedRequest`` for) raises nothing;
2. what is accepted is DER: every element, re-encoded from its tag and content with minimal
   lengths, gives back the input byte for byte (X.690 §10.1);
3. re-encoding what was read (the CertIDs as echoed, the nonce extnValue, the preferred
   algorithms) into a fresh request reads back the same;
4. a single-entry request accepted here is accepted by ``cryptography`` with the same serial,
   issuer hashes, hash algorithm (where the reader computes it) and nonce.

4 leaves out what ``cryptography`` refuses only for an OBJECT IDENTIFIER over its 63 octets
(rust-asn1 ``OidTooLong``; X.690 sets no bound, and the reader ignores an OID it does not know)
or for the parameters of a CertID hash algorithm the reader does not compute (it does not read
them: the entry names no issuer; ``cryptography`` types the parameters of the algorithms it
knows, e.g. an IV for aes128-CBC).
2 and 4 look at the request without what the reader skips unread (the optionalSignature, whose
outer structure only is checked, and the requestorName).
"""

from __future__ import annotations

import random
import sys

import atheris

with atheris.instrument_imports():
    from confide.cas import ocsp_der
    from confide.cas.ocsp_responder import parse_request
    from confide.errors import ParseError
    from confide.evidence import _der as der

from cryptography import x509
from cryptography.x509 import ocsp

_NONCE = "1.3.6.1.5.5.7.48.1.2"


def _tlv(tag: int, content: bytes) -> bytes:
    n = len(content)
    if n < 0x80:
        return bytes([tag, n]) + content
    raw = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([tag, 0x80 | len(raw)]) + raw + content


def _lenient(data: bytes, start: int, end: int) -> list[tuple[int, int, int]] | None:
    """The elements of ``data[start:end]`` read independently of the reader and leniently (any
    definite length form, up to 8 length octets); ``None`` when they do not parse."""
    out = []
    pos = start
    while pos < end:
        if pos + 2 > end:
            return None
        tag, first = data[pos], data[pos + 1]
        pos += 2
        if first < 0x80:
            length = first
        else:
            n = first & 0x7F
            if n == 0 or n > 8 or pos + n > end:
                return None
            length = int.from_bytes(data[pos : pos + n], "big")
            pos += n
        if pos + length > end:
            return None
        out.append((tag, pos, pos + length))
        pos += length
    return out


def _reencode(data: bytes, start: int, end: int) -> bytes:
    """``data[start:end]`` re-encoded with minimal lengths, recursing into constructed elements
    whose content parses (what does not is someone's opaque content, copied)."""
    items = _lenient(data, start, end)
    if items is None:
        return data[start:end]
    out = b""
    for tag, vs, ve in items:
        out += _tlv(tag, _reencode(data, vs, ve) if tag & 0x20 else data[vs:ve])
    return out


def _read_part(data: bytes) -> bytes:
    """``data`` without what the reader skips unread: optionalSignature and requestorName."""
    _, start, end = der.tlv(data, 0, "fuzz")
    top = der.children(data, start, end, "fuzz")
    _, ts, te = top[0]
    fields = [f for f in der.children(data, ts, te, "fuzz") if f[0] != 0xA1]
    return _tlv(0x30, _tlv(0x30, b"".join(_tlv(t, data[s:e]) for t, s, e in fields)))


def _request(parsed: ocsp_der.ParsedRequest) -> bytes:
    """A request of the CertIDs, nonce extnValue and preferences ``parsed`` holds."""
    requests = b"".join(_tlv(0x30, e.der) for e in parsed.entries)
    exts = b""
    if parsed.nonce_value is not None:
        exts += _tlv(0x30, _tlv(0x06, bytes.fromhex("2b0601050507300102")) + _tlv(0x04, parsed.nonce_value))
    if parsed.preferred:
        prefs = b"".join(_tlv(0x30, _tlv(0x30, _tlv(0x06, oid))) for oid in parsed.preferred)
        exts += _tlv(0x30, _tlv(0x06, bytes.fromhex("2b0601050507300108")) + _tlv(0x04, _tlv(0x30, prefs)))
    tbs = _tlv(0x30, requests) + (_tlv(0xA2, _tlv(0x30, exts)) if exts else b"")
    return _tlv(0x30, _tlv(0x30, tbs))


def test_one(data: bytes) -> None:
    assert parse_request(data) is not None or True  # raises nothing (invariant 1)
    try:
        parsed = ocsp_der.parse_ocsp_request(data)
    except ParseError:
        return
    read = _read_part(data)
    assert _reencode(read, 0, len(read)) == read, "accepted a non-DER encoding"
    again = ocsp_der.parse_ocsp_request(_request(parsed))
    assert [e[1:] for e in again.entries] == [e[1:] for e in parsed.entries], "CertIDs differ on re-encoding"
    assert [type(e.algorithm) for e in again.entries] == [type(e.algorithm) for e in parsed.entries]
    assert (again.nonce, again.nonce_value, again.preferred) == (
        parsed.nonce,
        parsed.nonce_value,
        parsed.preferred,
    )
    if len(parsed.entries) != 1:
        return
    entry = parsed.entries[0]
    try:
        theirs = ocsp.load_der_ocsp_request(read)
    except ValueError as exc:
        if "OidTooLong" in str(exc):
            return  # rust-asn1's 63-octet OID bound: X.690 sets none, an unknown OID is ignored
        if entry.algorithm is None and "CertID::hash_algorithm" in str(exc):
            return  # parameters of an algorithm the reader does not compute: not read here
        raise AssertionError(f"accepted here, refused by cryptography: {exc}") from None
    assert theirs.serial_number == entry.serial, "serial"
    assert theirs.issuer_name_hash == entry.name_hash, "issuerNameHash"
    assert theirs.issuer_key_hash == entry.key_hash, "issuerKeyHash"
    if entry.algorithm is not None:
        assert theirs.hash_algorithm.name == entry.algorithm.name, "hashAlgorithm"
    try:
        extensions = theirs.extensions
    except ValueError as exc:
        if "OidTooLong" in str(exc):
            return
        raise AssertionError(f"cryptography refuses the extensions read here: {exc}") from None
    try:
        nonce = extensions.get_extension_for_oid(x509.ObjectIdentifier(_NONCE)).value
    except x509.ExtensionNotFound:
        assert parsed.nonce is None, "nonce read here only"
        return
    assert isinstance(nonce, x509.OCSPNonce)
    assert nonce.nonce == parsed.nonce, "nonce"


# -- a structure-aware mutator (``--der``): byte-level mutations rarely keep the nested
# lengths of DER consistent, so these edit the element tree and re-encode it.

_Tree = list[tuple[int, "bytes | _Tree"]]
_PIECES = [
    bytes.fromhex("06092b0601050507300102"),  # id-pkix-ocsp-nonce
    bytes.fromhex("06092b0601050507300108"),  # preferred signature algorithms
    bytes.fromhex("06092b0601050507300104"),  # acceptable responses
    bytes.fromhex("06052b0e03021a"),  # sha1
    bytes.fromhex("0609608648016503040201"),  # sha256
    bytes.fromhex("06082a8648ce3d040302"),  # ecdsa-with-SHA256
    b"\x05\x00", b"\x01\x01\xff", b"\x01\x01\x00", b"\x02\x01\x00", b"\x02\x01\x80", b"\x04\x00",
    b"\x30\x00", b"\xa0\x00", b"\xa1\x00", b"\xa2\x00", b"\x03\x01\x00", b"\x82\x01a",
]  # fmt: skip


def _tree(data: bytes, start: int, end: int) -> _Tree | None:
    items = _lenient(data, start, end)
    if items is None:
        return None
    out: _Tree = []
    for tag, vs, ve in items:
        sub = _tree(data, vs, ve) if tag & 0x20 else None
        out.append((tag, data[vs:ve] if sub is None else sub))
    return out


def _encode(tree: _Tree) -> bytes:
    return b"".join(_tlv(tag, body if isinstance(body, bytes) else _encode(body)) for tag, body in tree)


def _nodes(tree: _Tree, out: list[_Tree]) -> list[_Tree]:
    out.append(tree)
    for _, body in tree:
        if not isinstance(body, bytes):
            _nodes(body, out)
    return out


def _mutate_tree(tree: _Tree, rng: random.Random) -> None:
    lists = _nodes(tree, [])
    target = lists[rng.randint(0, len(lists) - 1)]
    choice = rng.randint(0, 6)
    if choice == 0 and target:  # drop an element
        del target[rng.randint(0, len(target) - 1)]
    elif choice == 1 and target:  # duplicate one (counts, duplicate extensions)
        i = rng.randint(0, len(target) - 1)
        for _ in range(rng.randint(1, 20)):
            target.insert(i, target[i])
    elif choice == 2:  # insert a known piece
        piece = _tree(p := _PIECES[rng.randint(0, len(_PIECES) - 1)], 0, len(p))
        assert piece is not None
        target.insert(rng.randint(0, len(target)), piece[0])
    elif choice == 3 and target:  # change a tag
        i = rng.randint(0, len(target) - 1)
        target[i] = (rng.randint(0, 255), target[i][1])
    elif choice == 4 and target:  # replace a primitive's content
        i = rng.randint(0, len(target) - 1)
        target[i] = (target[i][0] & 0xDF, rng.randbytes(rng.randint(0, 300)))
    elif choice == 5 and target:  # wrap an element
        i = rng.randint(0, len(target) - 1)
        target[i] = (rng.choice([0x30, 0x04, 0xA0, 0xA1, 0xA2]), [target[i]])
    elif target:  # swap two
        i, j = rng.randint(0, len(target) - 1), rng.randint(0, len(target) - 1)
        target[i], target[j] = target[j], target[i]


def der_mutator(data: bytes, max_size: int, seed: int) -> bytes:
    tree = _tree(data, 0, len(data))
    if tree is None or not tree:
        return atheris.Mutate(data, max_size)
    rng = random.Random(seed)
    for _ in range(rng.randint(1, 3)):
        _mutate_tree(tree, rng)
    out = _encode(tree)
    if rng.random() < 0.2:  # now and then a byte-level change on top (non-minimal forms, truncation)
        out = atheris.Mutate(out, max_size)
    return out[:max_size]


if __name__ == "__main__":
    if "--der" in sys.argv:
        sys.argv.remove("--der")
        atheris.Setup(sys.argv, test_one, custom_mutator=der_mutator)
    else:
        atheris.Setup(sys.argv, test_one)
    atheris.Fuzz()
