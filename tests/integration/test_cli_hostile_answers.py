"""Every command that reads a CAS's answer after its request reads it as hostile input: a CAS
answering with another shape (a member missing or of another type, a list or a string for the
object, no JSON at all) is one line on stderr and exit 10 (``ParseError``), nothing on stdout,
never a Python traceback (docs/limitations.md listed ~19 such places in ``confide.cas.cli``).

The CAS is a hostile one over real TLS on 127.0.0.1 (trusted as ``CONFIDE_CAS_CERT``): it
answers the requests a command makes before its submission honestly (read nonces, the
successor board, the retirements) and the command's own request with the answer under test.
Each command also runs against the honest answer (exit 0), so that every refusal below is the
answer's doing. The commands run in this process through ``confide``'s own ``main`` (an
exception other than a ``ConfideError`` escapes it and fails the test), and once each as a
child process, whose stderr must not hold a traceback.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import ssl
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from cli import run_confide
from confide.cas.board_change import change_id
from confide.cas.retirement import retirement_id
from confide.cas.successor_board import board_from_json
from confide.identity import Identity
from pki import tls_server_files

KEY_ID = "ab" * 32
MEMBER = Identity.generate("member")
BOARD = {"require-all": [MEMBER.fingerprint]}
NEW_BOARD = {"require-at-least-1": [MEMBER.fingerprint, Identity.generate("other").fingerprint]}
MEASUREMENT = "cd" * 48
CHANGE = change_id(KEY_ID, 3, board_from_json(NEW_BOARD, "test board"))
RETIREMENT = retirement_id(KEY_ID, 3, "sim", {"measurement": MEASUREMENT})
SUCCESSOR = {"master_key_id": KEY_ID, "generation": 3, "board": BOARD, "approvals": []}
HONEST: dict[tuple[str, str], object] = {
    ("POST", "/v1/read/nonce"): {"nonce": "00" * 16},
    ("GET", "/v1/cas/successor"): SUCCESSOR,
    ("GET", "/v1/cas/successor/board"): {
        **SUCCESSOR,
        "changes": [{"change": CHANGE, "board": NEW_BOARD, "generation": 3, "approvers": []}],
    },
    ("GET", "/v1/cas/successor/retirements"): {
        **SUCCESSOR,
        "retirements": [
            {
                "retirement": RETIREMENT,
                "platform": "sim",
                "code": {"measurement": MEASUREMENT},
                "generation": 3,
            }
        ],
        "retired": [],
    },
}


@dataclass
class HostileCas:
    """A CAS over TLS answering ``answers`` (method, path: a JSON value, or bytes sent as they
    are, with 200; or a tuple of another status and one of them) and 404 to anything else;
    records the requests (method, path)."""

    url: str
    ca: Path
    answers: dict[tuple[str, str], object] = field(default_factory=dict)
    requests: list[tuple[str, str]] = field(default_factory=list)


@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HostileCas]:
    directory = tmp_path_factory.mktemp("hostile-cas")
    ca, cert, key = tls_server_files(directory, "cas")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    cas: HostileCas

    class Handler(BaseHTTPRequestHandler):
        def _answer(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            if length:
                self.rfile.read(length)
            path = self.path.split("?", 1)[0]
            cas.requests.append((self.command, path))
            if (self.command, path) not in cas.answers:
                status, body = 404, b'{"error": {"class": "NotFoundError", "message": "no such route"}}'
            else:
                value = cas.answers[(self.command, path)]
                status, value = value if isinstance(value, tuple) else (200, value)
                body = value if isinstance(value, bytes) else json.dumps(value).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST = _answer

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    cas = HostileCas(f"https://127.0.0.1:{server.server_address[1]}", ca)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield cas
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@dataclass(frozen=True)
class Command:
    """A command, the request whose answer it reads (method, path), the honest answer and the
    members of it the command reads (each one, missing or of another type, is refused)."""

    args: tuple[str, ...]
    route: tuple[str, str]
    honest: dict[str, Any]
    read: tuple[str, ...]
    names: str  # what the one line names: the command

    @property
    def id(self) -> str:
        return " ".join(a for a in self.args[:4] if not a.startswith("-") and "/" not in a)


def _policy() -> str:
    return (
        'name: hostile\nversion: "0.3"\nservices:\n  - name: app\n    command: ./app.sh\n'
        f"    attestation:\n      sim:\n        measurement: {MEASUREMENT}\n"
        f"access_policy:\n  read: [{MEMBER.fingerprint}]\n  update:\n    - require-all: [{MEMBER.fingerprint}]\n"
        "security:\n  attestation:\n    tolerate: [simulation]\n"
    )


POLICY_ANSWER = {"name": "hostile", "hash": "ef" * 32, "state": "pending"}
PENDING = {"approvers": [MEMBER.fingerprint], "needed": 2, "authorised": False}
COMMANDS = (
    Command(("policy", "apply", "{dir}/p.yaml"), ("POST", "/v1/policies"), POLICY_ANSWER,
            ("name", "hash", "state"), "policy apply"),
    Command(("policy", "approve", "hostile", "--hash", "ef" * 32), ("POST", "/v1/policies/hostile/approvals"),
            POLICY_ANSWER, ("name", "hash", "state"), "policy approve"),
    Command(("policy", "events", "hostile"), ("GET", "/v1/policies/hostile/events"),
            {"events": [{"seq": 1, "type": "policy.created", "payload": {}}]}, ("events",), "policy events"),
    Command(("cas", "successor", "approve", "--platform", "sim", "--claim", f"measurement={MEASUREMENT}",
             "--expires", "1d"), ("POST", "/v1/cas/successor/approvals"),
            {"target": "01" * 32, "digest": "02" * 32, **PENDING, "retire": []},
            ("target", "digest", "approvers", "needed", "authorised"), "cas successor approve"),
    Command(("cas", "successor", "withdraw", "--approval", "02" * 32), ("POST", "/v1/cas/successor/withdrawals"),
            {"approval": "02" * 32, "target": "01" * 32, **PENDING},
            ("approval", "target", "approvers", "needed", "authorised"), "cas successor withdraw"),
    Command(("cas", "successor", "board", "propose", "--board", "{dir}/board.json", "--expires", "1d"),
            ("POST", "/v1/cas/successor/board/approvals"),
            {"change": CHANGE, "digest": "02" * 32, **PENDING, "generation": 3, "applied": False},
            ("change", "digest", "approvers", "needed", "applied"), "cas successor board propose"),
    Command(("cas", "successor", "board", "approve", "--change", CHANGE, "--expires", "1d"),
            ("POST", "/v1/cas/successor/board/approvals"),
            {"change": CHANGE, "digest": "02" * 32, **PENDING, "authorised": True, "generation": 4,
             "applied": True},
            ("change", "digest", "generation", "applied"), "cas successor board approve"),
    Command(("cas", "successor", "retire", "propose", "--platform", "sim", "--claim", f"measurement={MEASUREMENT}",
             "--expires", "1d"), ("POST", "/v1/cas/successor/retirements/approvals"),
            {"retirement": RETIREMENT, "digest": "02" * 32, **PENDING, "applied": False},
            ("retirement", "digest", "approvers", "needed", "applied"), "cas successor retire propose"),
    Command(("cas", "successor", "retire", "approve", "--retirement", RETIREMENT, "--expires", "1d"),
            ("POST", "/v1/cas/successor/retirements/approvals"),
            {"retirement": RETIREMENT, "digest": "02" * 32, **PENDING, "authorised": True, "applied": True,
             "identity": "03" * 32},
            ("retirement", "digest", "applied", "identity"), "cas successor retire approve"),
)  # fmt: skip
WRONG = {str: 5, int: "1", bool: "false", list: "x"}
"""A value of another type for a member of each type (``"1"`` for an integer: read as 1 before)."""


def _shapes(command: Command) -> Iterator[tuple[str, object]]:
    """The hostile answers to ``command``: each member it reads missing, then of another type,
    then the whole answer as a list, a string, null and bytes that are no JSON."""
    for name in command.read:
        yield f"{name} missing", {k: v for k, v in command.honest.items() if k != name}
    for name in command.read:
        value = command.honest[name]
        wrong: object = [5] if isinstance(value, list) and name == "events" else WRONG[type(value)]
        yield f"{name} {type(wrong).__name__}", {**command.honest, name: wrong}
    if "approvers" in command.read:
        yield "approvers of numbers", {**command.honest, "approvers": [1, 2]}
    yield "a list", [command.honest]
    yield "a string", "ok"
    yield "null", None
    yield "no JSON", b"<html>ok</html>"


CASES = [
    pytest.param(command, shape, id=f"{command.id}: {label}")
    for command in COMMANDS
    for label, shape in _shapes(command)
]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The member's identity, a policy, a board file."""
    directory = tmp_path_factory.mktemp("inputs")
    MEMBER.save(directory / "member.id")
    (directory / "p.yaml").write_text(_policy())
    (directory / "board.json").write_text(json.dumps(NEW_BOARD))
    return directory


def _args(command: Command, inputs: Path) -> list[str]:
    return [a.replace("{dir}", str(inputs)) for a in command.args] + ["--identity", str(inputs / "member.id")]


def _serve(hostile: HostileCas, command: Command, answer: object) -> None:
    hostile.answers = {**HONEST, command.route: answer}
    hostile.requests.clear()


def _main(args: list[str], monkeypatch: pytest.MonkeyPatch, hostile: HostileCas | None = None) -> int:
    """``confide ARGS`` in this process, as ``python -m confide`` runs it (with ``hostile``: its
    client.env): the exit code."""
    from confide.cli import main

    if hostile is not None:
        monkeypatch.setenv("CONFIDE_CAS_URL", hostile.url)
        monkeypatch.setenv("CONFIDE_CAS_CERT", str(hostile.ca))
    monkeypatch.setattr(sys, "argv", ["confide", *args])
    try:
        main()
    except SystemExit as exit:
        return int(exit.code or 0)
    return 0


@pytest.mark.parametrize("command", [pytest.param(c, id=c.id) for c in COMMANDS])
def test_the_honest_answer_is_read(
    command: Command, hostile: HostileCas, inputs: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    """The control: the same command, the honest answer, exit 0 and the request made."""
    _serve(hostile, command, command.honest)
    code = _main(_args(command, inputs), monkeypatch, hostile)
    out, err = capsys.readouterr()
    assert code == 0, err
    assert command.route in hostile.requests and out


@pytest.mark.parametrize(("command", "shape"), CASES)
def test_a_malformed_answer_is_one_line_and_exit_10(
    command: Command, shape: object, hostile: HostileCas, inputs: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    _serve(hostile, command, shape)
    code = _main(_args(command, inputs), monkeypatch, hostile)
    out, err = capsys.readouterr()
    assert command.route in hostile.requests  # refused on the answer, not before the request
    assert code == 10, err
    # the one line, last (what a command says before it signs, on stderr too, comes before it)
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and err.splitlines()[-1] == errors[0], err
    if not isinstance(shape, bytes):  # no JSON: the client's own ParseError, before any command reads it
        assert f"the CAS's answer to {command.names}" in errors[0], err
    assert out == ""  # nothing printed of an answer that is then refused
    assert "Traceback" not in err


@pytest.mark.parametrize("command", [pytest.param(c, id=c.id) for c in COMMANDS])
def test_a_list_for_the_answer_is_no_traceback_in_a_child_process(
    command: Command, hostile: HostileCas, inputs: Path
) -> None:
    _serve(hostile, command, [command.honest])
    env = {"CONFIDE_CAS_URL": hostile.url, "CONFIDE_CAS_CERT": str(hostile.ca)}
    r = run_confide(*_args(command, inputs), env=env, timeout=60)
    assert r.returncode == 10, r.stderr
    assert "Traceback" not in r.stderr
    shown = [line for line in r.stderr.splitlines() if line.startswith("error: ")]
    assert shown == [
        f"error: ParseError: the CAS's answer to {command.names}: got an array, expected an object"
    ], r.stderr
    assert r.stdout == ""


NONCES = (
    ("nonce", ("POST", "/v1/attest/nonce"), "the CAS's nonce answer"),
    ("key_release_nonce", ("POST", "/v1/cas/key-release/nonce"), "the CAS's key-release nonce answer"),
    ("read_nonce", ("POST", "/v1/read/nonce"), "the CAS's read nonce answer"),
)


@pytest.mark.parametrize(("method", "route", "what"), NONCES, ids=[n[0] for n in NONCES])
@pytest.mark.parametrize("shape", [{}, {"nonce": 5}, {"nonce": None}, ["00"], "00", None], ids=repr)
def test_a_malformed_nonce_answer_is_a_parse_error(
    hostile: HostileCas, method: str, route: tuple[str, str], what: str, shape: object
) -> None:
    """``confide run`` (``nonce``), ``cas serve --join`` (``key_release_nonce``: a list or a
    missing member was a TypeError or KeyError, a number was taken as its text) and every signed
    read (``read_nonce``)."""
    from confide.cas.client import CasClient
    from confide.errors import ParseError

    hostile.answers = {route: shape}
    with CasClient(hostile.url, hostile.ca) as client:
        call = getattr(client, method)
        with pytest.raises(ParseError, match=f"^{what}"):
            call("hostile", "show") if method == "read_nonce" else call()
        hostile.answers = {route: {"nonce": "00" * 16}}
        assert (call("hostile", "show") if method == "read_nonce" else call()) == "00" * 16


ROTATED = {
    "state": "done", "old_key_id": "01" * 16, "new_key_id": "02" * 16, "resealed": 3, "batches": 1,
    "policy_versions": 2, "event_seq": 9, "error": None, "wal_warning": None,
}  # fmt: skip


@contextlib.contextmanager
def _admin_channel(data_dir: Path, reply: object) -> Iterator[None]:
    """A CAS's admin socket in ``data_dir`` answering every request with ``{"ok": true, "status":
    reply}`` (``reply`` ``...``: without ``status``)."""
    from confide.cas.admin import SOCKET_NAME

    line = json.dumps({"ok": True} if reply is ... else {"ok": True, "status": reply}).encode() + b"\n"
    fd = os.open(data_dir, os.O_RDONLY | os.O_DIRECTORY)  # a path that fits sun_path
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            with conn:
                conn.settimeout(5)
                conn.recv(4096)
                conn.sendall(line)

    thread = threading.Thread(target=serve, daemon=True)
    try:
        listener.bind(f"/proc/self/fd/{fd}/{SOCKET_NAME}")
        listener.listen(4)
        listener.settimeout(0.1)
        thread.start()
        yield
    finally:
        stop.set()
        if thread.is_alive():
            thread.join(timeout=5)
        listener.close()
        os.close(fd)
        (data_dir / SOCKET_NAME).unlink(missing_ok=True)


ROTATION_REPLIES = {
    "no status": ...,
    "a list": [ROTATED],
    "state missing": {k: v for k, v in ROTATED.items() if k != "state"},
    "new_key_id missing": {k: v for k, v in ROTATED.items() if k != "new_key_id"},
    "old_key_id a number": {**ROTATED, "old_key_id": 1},
    "resealed a string": {**ROTATED, "resealed": "3"},
    "batches null": {**ROTATED, "batches": None},
    "event_seq missing": {k: v for k, v in ROTATED.items() if k != "event_seq"},
    "policy_versions a boolean": {**ROTATED, "policy_versions": True},
}


@pytest.mark.parametrize("reply", list(ROTATION_REPLIES.values()), ids=list(ROTATION_REPLIES))
def test_a_malformed_online_rotation_status_is_one_line_and_exit_10(
    tmp_path: Path, reply: object, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """``cas rotate-master-key --online`` read the running CAS's status unchecked (``["status"]``,
    ``status['old_key_id']``, ``status['event_seq'] - 1``): a traceback."""
    args = ["cas", "rotate-master-key", "--data-dir", str(tmp_path), "--online"]
    with _admin_channel(tmp_path, ROTATED):
        code = _main(args, monkeypatch)
    out, err = capsys.readouterr()
    assert code == 0 and out == "02" * 16 + "\n", err  # the control: the honest status
    with _admin_channel(tmp_path, reply):
        code = _main(args, monkeypatch)
    out, err = capsys.readouterr()
    assert code == 10, err
    assert out == "" and err.count("\n") == 1, err
    assert err.startswith("error: ParseError: the CAS's admin reply to rotate-master-key --online"), err


def test_sconify_reads_the_cas_answer_to_its_policy_as_hostile_input(
    hostile: HostileCas, tmp_path: Path
) -> None:
    """``sconify --cas``: the answer to the policy it sent was read unchecked after the image was
    written (``applied['name']``). Now one line, exit 10, after the warning an unreadable answer
    gives (the CAS may have taken the policy: the key was only in it)."""
    from image_builder import PYTHON_BASE, Image, M

    Image([[*PYTHON_BASE, M("app/", "d"), M("app/run.sh", data=b"#!/bin/sh\n", mode=0o755)]]).write_layout(
        tmp_path / "src"
    )
    MEMBER.save(tmp_path / "owner.id")
    hostile.answers = {("POST", "/v1/policies"): [POLICY_ANSWER]}
    r = run_confide(
        "sconify", "--from", f"oci:{tmp_path / 'src'}", "--to", f"oci:{tmp_path / 'out'}", "--protect", "/app",
        "--policy", "hostile", "--service", "s", "--cas", hostile.url, "--identity", tmp_path / "owner.id",
        env={"CONFIDE_CAS_CERT": str(hostile.ca)}, timeout=300,
    )  # fmt: skip
    assert r.returncode == 10, r.stderr
    assert "Traceback" not in r.stderr
    warning, error = r.stderr.splitlines()[-2:]
    assert warning.startswith("warning: unless the CAS took the policy before this stopped"), r.stderr
    assert error == "error: ParseError: the CAS's answer to sconify --cas: got an array, expected an object"
    assert ("POST", "/v1/policies") in hostile.requests


ESCAPES = "\x1b]52;c;cm0gLXJmIH4K\x07\x1b[2J\x1b]0;owned\x07\x9b31m\r\nforged line\t"
"""What a hostile CAS puts into the text it answers: OSC 52 (write the clipboard), clear the
screen, OSC 0 (the window title), a C1 CSI, a carriage return and a newline forging a line."""

TROJAN = "\u202eevil\u202c\u2066\u200b\ufeff\u00ad\u2028\U000e0041\ufe0f"
"""What a hostile CAS puts into its text so that it reads as something else (Trojan Source,
CVE-2021-42574): a right-to-left override and its pop, an isolate, a zero-width space, a byte
order mark, a soft hyphen, a line separator, a tag character, a variation selector."""

INVISIBLE = frozenset(TROJAN) - set("evil")


def _hostile_text(value: object) -> object:
    """``value`` (an honest answer) with every text in it (a member's, a list's) followed by
    ESCAPES and TROJAN."""
    if isinstance(value, str):
        return value + ESCAPES + TROJAN
    if isinstance(value, list):
        return [_hostile_text(v) for v in value]
    if isinstance(value, dict):
        return {k: _hostile_text(v) for k, v in value.items()}
    return value


def _no_control(text: str) -> bool:
    return not any((ord(c) < 0x20 and c != "\n") or 0x7F <= ord(c) <= 0x9F or c in INVISIBLE for c in text)


@pytest.mark.parametrize("command", [pytest.param(c, id=c.id) for c in COMMANDS])
def test_escape_sequences_in_the_answer_reach_no_terminal(
    command: Command, hostile: HostileCas, inputs: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    """Every text of the answer ends with escape sequences: whatever the command prints of it
    (or says of it when it refuses it) shows them as ``\\x1b``, ``\\x07``, ``\\x9b``, ``\\x0d``,
    ``\\x0a``, and the bidirectional and invisible characters as ``\\u202e``, ``\\u200b``...: no
    control character but the newlines that end the lines is printed, nor any character drawn as
    nothing or reordering others."""
    _serve(hostile, command, _hostile_text(command.honest))
    code = _main(_args(command, inputs), monkeypatch, hostile)
    out, err = capsys.readouterr()
    assert command.route in hostile.requests
    assert _no_control(out) and _no_control(err), (out, err)
    assert "forged line" not in (out + err).splitlines()
    if code == 0:  # the texts the command took: printed, escaped (policy events: as JSON escapes)
        shown = "\\x1b]52;c;cm0gLXJmIH4K\\x07\\x1b[2J"
        assert shown in out + err or "\\u001b]52;c;cm0gLXJmIH4K\\u0007\\u001b[2J" in out, (out, err)
        trojan = "\\u202eevil\\u202c\\u2066\\u200b\\ufeff\\u00ad\\u2028"  # JSON: the same escapes
        assert trojan in out + err, (out, err)
        assert "\\U000e0041\\ufe0f" in out + err or "\\udb40\\udc41\\ufe0f" in out, (out, err)
    else:
        assert code == 10, err  # a text the command checks (a hex digest): refused


def test_an_error_answer_with_escape_sequences_is_shown_escaped(
    hostile: HostileCas, inputs: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The message of the CAS's error answer, printed as the one ``error:`` line."""
    command = COMMANDS[0]
    error = {"error": {"class": "AccessDeniedError", "message": "denied" + ESCAPES + TROJAN}}
    _serve(hostile, command, (403, error))
    code = _main(_args(command, inputs), monkeypatch, hostile)
    out, err = capsys.readouterr()
    assert code != 0 and out == ""
    assert "\x1b" not in err and "\x07" not in err and "\x9b" not in err and "\r" not in err, err
    assert "error: AccessDeniedError: denied\\x1b]52;c;cm0gLXJmIH4K\\x07\\x1b[2J" in err, err
    assert _no_control(err) and "\\u202eevil\\u202c\\u2066\\u200b" in err, err


def test_events_stay_exact_json(
    hostile: HostileCas, inputs: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """``policy events`` prints JSON: the control characters are JSON escapes, read back exactly."""
    command = next(c for c in COMMANDS if c.names == "policy events")
    event = {"seq": 1, "type": "policy.created" + ESCAPES, "payload": {"note": ESCAPES}}
    _serve(hostile, command, {"events": [event]})
    assert _main(_args(command, inputs), monkeypatch, hostile) == 0
    out, _ = capsys.readouterr()
    assert _no_control(out)
    assert [json.loads(line) for line in out.splitlines()] == [event]


def test_a_failed_online_rotation_shows_its_error_escaped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """``cas rotate-master-key --online``: the running CAS's ``error`` of a failed rotation."""
    args = ["cas", "rotate-master-key", "--data-dir", str(tmp_path), "--online"]
    with _admin_channel(tmp_path, {**ROTATED, "state": "failed", "error": "disk full" + ESCAPES + TROJAN}):
        code = _main(args, monkeypatch)
    out, err = capsys.readouterr()
    assert code == 2 and out == "", err
    assert _no_control(err) and err.count("\n") == 1, err
    assert "disk full\\x1b]52;c;cm0gLXJmIH4K\\x07" in err and "\\u2028\\U000e0041" in err, err


def _crl_pem(ca_file: Path | None = None) -> bytes:
    """A CRL in PEM of a new CA (its certificate written to ``ca_file`` when given)."""
    from datetime import UTC, datetime, timedelta

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ca")])
    crl = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(name)
        .last_update(now)
        .next_update(now + timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    if ca_file is not None:
        cert = (
            x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(1).not_valid_before(now).not_valid_after(now + timedelta(days=1))
            .sign(key, hashes.SHA256())
        )  # fmt: skip
        ca_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return crl.public_bytes(serialization.Encoding.PEM)


CRL_ROUTE = ("GET", "/v1/policies/p/crl/ca")


@pytest.mark.parametrize(
    "body",
    [
        ESCAPES.encode() + TROJAN.encode(),
        b"-----BEGIN X509 CRL-----\n" + ESCAPES.encode() + b"\n-----END X509 CRL-----\n",
        ESCAPES.encode() + b"\n" + _crl_pem(),  # a CRL, and escapes before it
        _crl_pem() + ESCAPES.encode(),  # and after it
    ],
    ids=["no-crl", "garbled-pem", "text-before", "text-after"],
)
def test_a_crl_answer_that_is_not_a_crl_alone_reaches_no_terminal(
    body: bytes, hostile: HostileCas, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """``policy crl`` wrote the CAS's answer to standard output byte for byte: a hostile CAS's
    escape sequences went to the terminal as they are. The answer must be one CRL (PEM, or DER
    with ``--der``) and nothing else, else exit 10 and nothing on standard output (also when
    no CA certificate is given to check it against)."""
    hostile.answers = {CRL_ROUTE: body}
    code = _main(["policy", "crl", "p", "ca"], monkeypatch, hostile)
    out, err = capsys.readouterr()
    assert code == 10 and out == "", (out, err)
    assert _no_control(err), err


def test_a_crl_answer_is_printed_as_the_crl(
    hostile: HostileCas, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    ca = tmp_path / "ca.pem"
    pem = _crl_pem(ca)
    hostile.answers = {CRL_ROUTE: pem}
    assert _main(["policy", "crl", "p", "ca", "--ca", str(ca)], monkeypatch, hostile) == 0
    assert capsys.readouterr().out == pem.decode()
    out = tmp_path / "ca.crl"
    assert _main(["policy", "crl", "p", "ca", "--ca", str(ca), "--out", str(out)], monkeypatch, hostile) == 0
    assert out.read_bytes() == pem
    # without --ca or --identity: written, and said to be unchecked
    assert _main(["policy", "crl", "p", "ca"], monkeypatch, hostile) == 0
    out_text, err = capsys.readouterr()
    assert out_text == pem.decode() and "UNVERIFIED" in err and "--ca FILE" in err, err
    # the same CRL checked against another CA's certificate: nothing written
    _crl_pem(ca)
    out.unlink()
    assert _main(["policy", "crl", "p", "ca", "--ca", str(ca), "--out", str(out)], monkeypatch, hostile) == 21
    assert not out.exists()


def test_a_crl_out_path_that_cannot_be_written_is_one_line(
    hostile: HostileCas, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """``policy crl --out`` into a directory that does not exist (or onto a directory) was a
    Python traceback; a usage error naming ``--out``, as ``cas attest --out``."""
    hostile.answers = {CRL_ROUTE: _crl_pem()}
    for out in (tmp_path / "missing" / "ca.crl", tmp_path):
        assert _main(["policy", "crl", "p", "ca", "--out", str(out)], monkeypatch, hostile) == 2
        _, err = capsys.readouterr()
        assert err.startswith("error: UsageError: --out") and err.count("\n") == 1, err
