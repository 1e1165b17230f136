"""C2SP signed notes and checkpoints, against Go's golang.org/x/mod/sumdb/note vectors."""

from __future__ import annotations

import base64
import contextlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from confide.errors import ParseError, SignatureError, UnknownKeyError, VerificationError
from confide.ledger.checkpoint import Checkpoint, open_checkpoint, sign_checkpoint
from confide.ledger.note import (
    SIG_TYPE_COSIGNATURE_V1,
    NoteSigner,
    NoteVerifier,
    key_id,
    open_note,
    parse_note,
    sign_note,
)

# golang.org/x/mod sumdb/note/note_test.go (BSD-3-Clause): TestSign, TestOpen, TestNewVerifier.
PETER_SKEY = "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz"
PETER_VKEY = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"
ENOCH_VKEY = "EnochRoot+af0cfe78+ATtqJ7zOtqQtYqOo0CpvDXNlMhV3HeJDpjrASKGLWdop"
TEXT = "If you think cryptography is the answer to your problem,\nthen you don't know what your problem is.\n"
PETER_B64 = "x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM="
PETER_SIG = f"— PeterNeumann {PETER_B64}\n"
ENOCH_B64 = "rwz+eBzmZa0SO3NbfRGzPCpDckykFXSdeX+MNtCOXm2/5n2tiOHp+vAF1aGrQ5ovTG01oOTGwnWLox33WWd1RvMc+QQ="
ENOCH_SIG = f"— EnochRoot {ENOCH_B64}\n"


def test_go_signer_reproduces_the_published_signed_note() -> None:
    signer = NoteSigner.from_skey(PETER_SKEY)
    assert signer.verifier.vkey == PETER_VKEY
    assert signer.key_id == 0xC74F20A3
    assert sign_note(TEXT, [signer]).decode() == TEXT + "\n" + PETER_SIG
    assert "AYEKF" not in repr(signer)


def test_key_id_is_sha256_of_name_newline_type_key() -> None:
    v = NoteVerifier.from_vkey(PETER_VKEY)
    assert key_id("PeterNeumann", 0x01, v.public_key) == 0xC74F20A3
    assert key_id("PeterNeumann", 0x04, v.public_key) != 0xC74F20A3


def test_open_verifies_known_and_ignores_unknown_keys() -> None:
    peter = NoteVerifier.from_vkey(PETER_VKEY)
    enoch = NoteVerifier.from_vkey(ENOCH_VKEY)
    msg = (TEXT + "\n" + PETER_SIG + ENOCH_SIG).encode()
    note, verified = open_note(msg, [peter])
    assert note.text == TEXT
    assert [s.name for s in verified] == ["PeterNeumann"]
    _, both = open_note(msg, [peter, enoch])
    assert [s.name for s in both] == ["PeterNeumann", "EnochRoot"]
    with pytest.raises(UnknownKeyError):
        open_note(msg, [])
    with pytest.raises(UnknownKeyError):
        open_note((TEXT + "\n" + ENOCH_SIG).encode(), [peter])


def test_invalid_signature_by_a_known_key_rejects_the_note() -> None:
    peter = NoteVerifier.from_vkey(PETER_VKEY)
    bad = TEXT + "\n" + PETER_SIG[:60] + "ABCD" + PETER_SIG[60:]
    with pytest.raises(SignatureError, match="PeterNeumann"):
        open_note(bad.encode(), [peter])
    with pytest.raises(SignatureError):
        open_note((TEXT.replace("answer", "answers") + "\n" + PETER_SIG).encode(), [peter])


@pytest.mark.parametrize(
    "msg",
    [
        TEXT,
        TEXT + "\n",
        TEXT + "\n" + PETER_SIG[:-1],
        "\x01" + TEXT + "\n" + PETER_SIG,
        TEXT + "\n" + "— Bad Name " + PETER_B64,
        TEXT + "\n" + PETER_SIG + "Unexpected line.\n",
        TEXT + "\n" + PETER_SIG * 101,
        TEXT + "\n— PeterNeumann AAAA\n",
        TEXT + "\n— PeterNeumann " + PETER_B64.rstrip("=") + "\n",
    ],
)
def test_malformed_notes_are_parse_errors(msg: str) -> None:
    with pytest.raises(ParseError):
        open_note(msg.encode(), [NoteVerifier.from_vkey(PETER_VKEY)])


def test_invalid_utf8_is_a_parse_error() -> None:
    with pytest.raises(ParseError, match="UTF-8"):
        parse_note(b"\xff" + (TEXT + "\n" + PETER_SIG).encode())


def test_mangled_verifier_keys_are_refused() -> None:
    NoteVerifier.from_vkey(PETER_VKEY)
    b = PETER_VKEY
    for i in range(len(b) + 1):
        for j in range(i + 1, len(b) + 1):
            if (i, j) != (0, len(b)):
                with pytest.raises(ParseError):
                    NoteVerifier.from_vkey(b[i:j])
    for i in range(len(b)):
        mangled = b[:i] + chr(ord(b[i]) + 1) + b[i + 1 :]
        with pytest.raises(ParseError):
            NoteVerifier.from_vkey(mangled)
    with pytest.raises(ParseError):  # wrong length key, with adjusted key hash
        NoteVerifier.from_vkey("PeterNeumann+cc469956+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TWBADKEY==")
    with pytest.raises(ParseError):  # unknown algorithm, with adjusted key hash
        NoteVerifier.from_vkey("PeterNeumann+173116ae+ZRpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW")


def test_mangled_signer_keys_are_refused() -> None:
    b = PETER_SKEY
    for i in range(len(b)):
        mangled = b[:i] + chr(ord(b[i]) + 1) + b[i + 1 :]
        with pytest.raises(ParseError):
            NoteSigner.from_skey(mangled)
    with pytest.raises(ParseError):
        NoteSigner.from_skey(b[:-1])


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400))
def test_arbitrary_bytes_only_raise_parse_error(data: bytes) -> None:
    with contextlib.suppress(ParseError, UnknownKeyError, SignatureError):
        open_note(data, [NoteVerifier.from_vkey(PETER_VKEY)])


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=200))
def test_arbitrary_text_notes_only_raise_parse_error(text: str) -> None:
    for candidate in (text, TEXT + "\n" + text, text + "\n\n" + PETER_SIG):
        with contextlib.suppress(ParseError):
            Checkpoint.from_text(parse_note(candidate.encode("utf-8", "surrogatepass")).text)


def test_cosignature_round_trip_and_tamper() -> None:
    witness = NoteSigner.generate("witness.example/w1", SIG_TYPE_COSIGNATURE_V1)
    note = sign_note(TEXT, [witness], timestamp=1_679_315_147)
    sig = parse_note(note).signatures[0]
    assert int.from_bytes(sig.signature[:8], "big") == 1_679_315_147
    assert len(sig.signature) == 72
    _, verified = open_note(note, [witness.verifier])
    assert verified == [sig]
    # Changing the timestamp breaks the signature (it is signed in "time <t>").
    forged = sig.signature[:7] + bytes([sig.signature[7] ^ 1]) + sig.signature[8:]
    bad = TEXT + "\n" + type(sig)(sig.name, sig.key_id, forged).line()
    with pytest.raises(SignatureError):
        open_note(bad.encode(), [witness.verifier])
    with pytest.raises(ValueError, match="timestamp"):
        witness.sign(TEXT)


# --- checkpoints -----------------------------------------------------------------------

ROOT = bytes(range(32))


def test_checkpoint_text_format() -> None:
    cp = Checkpoint("example.com/log", 20852163, ROOT, ("ext one",))
    text = cp.to_text()
    assert text == f"example.com/log\n20852163\n{base64.b64encode(ROOT).decode()}\next one\n"
    assert Checkpoint.from_text(text) == cp


@pytest.mark.parametrize(
    "text",
    [
        "example.com/log\n20\n",
        "\n20\n" + base64.b64encode(ROOT).decode() + "\n",
        "example.com/log\n020\n" + base64.b64encode(ROOT).decode() + "\n",
        "example.com/log\n-1\n" + base64.b64encode(ROOT).decode() + "\n",
        "example.com/log\n٣\n" + base64.b64encode(ROOT).decode() + "\n",
        "example.com/log\n99999999999999999999\n" + base64.b64encode(ROOT).decode() + "\n",
        "example.com/log\n20\n" + base64.b64encode(ROOT[:31]).decode() + "\n",
        "example.com/log\n20\n" + base64.b64encode(ROOT).decode(),
        "example.com/log\n20\n" + base64.b64encode(ROOT).decode() + "\n\n",
    ],
)
def test_malformed_checkpoints(text: str) -> None:
    with pytest.raises(ParseError):
        Checkpoint.from_text(text)


def test_signed_checkpoint_wrong_key_bad_signature_and_origin() -> None:
    log = NoteSigner.generate("example.com/log")
    other = NoteSigner.generate("example.com/log")  # same name, another key
    cp = Checkpoint("example.com/log", 5, ROOT)
    note = sign_checkpoint(cp, log)
    assert open_checkpoint(note, log.verifier).checkpoint == cp
    with pytest.raises(UnknownKeyError):
        open_checkpoint(sign_checkpoint(cp, other), log.verifier)
    tampered = note.replace(b"\n5\n", b"\n6\n")
    with pytest.raises(SignatureError):
        open_checkpoint(tampered, log.verifier)
    with pytest.raises(VerificationError, match="origin"):
        open_checkpoint(note, log.verifier, origin="example.com/other")
