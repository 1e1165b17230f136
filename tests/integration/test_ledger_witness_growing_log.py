"""``confide ledger verify|history|accesses --witness VKEY`` (and the SDK's ``Cas.verify_log``,
``history`` with ``witnesses``) against a real CAS whose log grows while they read: the CAS signs a
checkpoint at most every 0.5 s while entries are appended, and its witness, a real ``confide ledger
witness serve`` behind a relay that holds each answer 0.25 s (network latency), cosigns it a round
trip later, so the newest checkpoint lacks its cosignature about half the time. The readers wait,
a bounded time, for a cosigned one: they succeed, also with a state file that remembers a newer
checkpoint than the cosigned one (no false rollback, the state never lowered). A witness that is
down fails them with exit 65 within the bound, the state file left as it was."""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from test_cas_e2e import apply, confide, identity, measure, policy_yaml

from cas_harness import ROOT, CasProcess, log_size, wait_for_log
from confide import errors
from confide.identity import load_identity
from confide.ledger.auditor import COSIGN_WAIT
from confide.ledger.checkpoint import Checkpoint
from confide.ledger.note import parse_note
from confide.sdk import Cas

LATENCY = 0.25
"""Seconds the relay holds each answer of the witness (half the CAS's checkpoint interval)."""


class SlowRelay:
    """A TCP relay on 127.0.0.1 to the witness's port that holds each answer ``LATENCY`` seconds;
    :meth:`down` closes every connection and refuses new ones (a witness that is down), :meth:`up`
    relays again."""

    def __init__(self, target: int) -> None:
        self.target = target
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self._down = threading.Event()
        self._lock = threading.Lock()
        self._open: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if self._down.is_set():
                client.close()
                continue
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target), timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            with self._lock:
                self._open += [client, upstream]
            asked = threading.Event()  # a request went up: its answer's first bytes are held
            threading.Thread(target=self._pipe, args=(client, upstream, asked, False), daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client, asked, True), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket, asked: threading.Event, answers: bool) -> None:
        try:
            while data := src.recv(65536):
                if answers and asked.is_set():
                    asked.clear()
                    time.sleep(LATENCY)
                elif not answers:
                    asked.set()
                if self._down.is_set():
                    break
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                s.close()

    def down(self) -> None:
        self._down.set()
        with self._lock:
            for s in self._open:
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
            self._open.clear()

    def up(self) -> None:
        self._down.clear()

    def close(self) -> None:
        self.down()
        self.listener.close()


@dataclass
class Setup:
    cas: CasProcess
    relay: SlowRelay
    witness_key: str
    alice: Path
    measurement: str
    tmp: Path


@pytest.fixture
def witnessed_cas(tmp_path: Path) -> Iterator[Setup]:
    first = CasProcess(tmp_path / "cas", None).start()
    log_key = first.env["CONFIDE_LOG_KEY"]
    first.stop()
    env = {"PYTHONPATH": str(ROOT / "src"), "PATH": "/usr/bin:/bin"}
    wkey = subprocess.run([sys.executable, "-m", "confide", "ledger", "keygen", "--name", "witness.example/w1",
                           "--witness", "--out", str(tmp_path / "w.key")], capture_output=True, text=True,
                          env=env, check=True).stdout.strip()  # fmt: skip
    witness_log = tmp_path / "witness.log"
    with witness_log.open("wb") as err:
        witness = subprocess.Popen(
            [sys.executable, "-m", "confide", "ledger", "witness", "serve", "--state", str(tmp_path / "w.state"),
             "--key", str(tmp_path / "w.key"), "--log", log_key, "--listen", "127.0.0.1:0"],
            env=env, stdout=subprocess.DEVNULL, stderr=err,
        )  # fmt: skip
    relay: SlowRelay | None = None
    cas: CasProcess | None = None
    try:
        deadline = time.time() + 60
        while "\n" not in (banner := witness_log.read_text()):
            assert witness.poll() is None and time.time() < deadline, banner
            time.sleep(0.05)
        relay = SlowRelay(int(banner.split("\n", 1)[0].rsplit(":", 1)[1].split("/", 1)[0]))
        cas = CasProcess(
            tmp_path / "cas", None, extra_args=("--witness", f"http://127.0.0.1:{relay.port}={wkey}")
        )
        cas.start()
        alice, _ = identity(cas, tmp_path, "alice")
        m = measure(cas, "/bin/true")
        assert apply(cas, tmp_path, policy_yaml("growing", m), alice).returncode == 0
        wait_for_log(cas.env, 1)
        yield Setup(cas, relay, wkey, alice, m, tmp_path)
    finally:
        if cas is not None:
            cas.stop()
        if relay is not None:
            relay.close()
        witness.terminate()
        witness.wait(timeout=10)


@contextlib.contextmanager
def appending(setup: Setup) -> Iterator[list[int]]:
    """A thread that creates policies (a ledger entry each) every 0.1 s until the block ends;
    yields the list of policies created so far (one element each)."""
    stop = threading.Event()
    made: list[int] = []
    failures: list[BaseException] = []

    def run() -> None:
        me = load_identity(setup.alice)
        with Cas.from_env(setup.cas.env) as sdk:
            while not stop.is_set():
                try:
                    sdk.apply(policy_yaml(f"load{len(made)}", setup.measurement), me)
                except BaseException as exc:  # reported by the test
                    failures.append(exc)
                    return
                made.append(1)
                stop.wait(0.1)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield made
    finally:
        stop.set()
        thread.join(timeout=60)
    assert not failures, failures


def _state_size(path: Path) -> int:
    note = json.loads(path.read_text())["checkpoint"].encode()
    return Checkpoint.from_text(parse_note(note).text).size


def test_readers_get_a_cosigned_checkpoint_while_the_log_grows(witnessed_cas: Setup) -> None:
    s = witnessed_cas
    w = s.witness_key
    alice = str(s.alice)
    verify = ["ledger", "verify", "--json"]
    with appending(s) as made:
        while len(made) < 5:  # the log grows: a new checkpoint every 0.5 s
            time.sleep(0.1)
        for round_ in range(3):
            st = s.tmp / f"verify{round_}.json"
            r = confide(s.cas, *verify, "--state", str(st), "--witness", w)
            assert r.returncode == 0, r.stdout + r.stderr
            assert json.loads(r.stdout)["witnesses"] == [w]
            for command in ("history", "accesses"):
                r = confide(s.cas, "ledger", command, "growing", "--identity", alice, "--witness", w,
                            "--max-age", "5 minutes")  # fmt: skip
                assert r.returncode == 0, r.stderr
            # A state file that remembers the newest checkpoint, not cosigned yet (an audit without
            # --witness): the reader with --witness gets it, or a later one, once cosigned.
            view = s.tmp / f"view{round_}.json"
            r = confide(s.cas, *verify, "--state", str(view))
            assert r.returncode == 0, r.stderr
            remembered = _state_size(view)
            r = confide(s.cas, "ledger", "history", "growing", "--identity", alice, "--witness", w,
                        "--state", str(view), "--json")  # fmt: skip
            assert r.returncode == 0, r.stderr
            out = json.loads(r.stdout)
            assert out["state"]["previous_size"] == remembered <= out["checkpoint_size"] == _state_size(view)
        # The SDK waits the same way.
        me = load_identity(s.alice)
        with Cas.from_env(s.cas.env) as sdk:
            for _ in range(3):
                assert sdk.verify_log(witnesses=[w]).size >= 1
                assert (
                    sdk.history("growing", me, witnesses=[w], state=s.tmp / "sdk.json").checkpoint_size >= 1
                )
                assert sdk.accesses("growing", me, witnesses=[w]) is not None
        assert len(made) >= 10


def test_a_witness_that_is_down_fails_readers_in_the_bound_and_keeps_their_state(
    witnessed_cas: Setup,
) -> None:
    s = witnessed_cas
    w = s.witness_key
    alice = str(s.alice)
    state = s.tmp / "view.json"
    # Cosigned once, the state remembers it.
    deadline = time.time() + 30
    while (r := confide(s.cas, "ledger", "history", "growing", "--identity", alice, "--witness", w,
                        "--state", str(state))).returncode != 0:  # fmt: skip
        assert time.time() < deadline, r.stderr
    cosigned = _state_size(state)
    s.relay.down()
    size = log_size(s.cas.env)
    assert apply(s.cas, s.tmp, policy_yaml("after", s.measurement), s.alice).returncode == 0
    assert wait_for_log(s.cas.env, size + 1) > cosigned  # signed, never cosigned
    r = confide(s.cas, "ledger", "verify", "--state", str(state))  # without --witness: remembers it
    assert r.returncode == 0, r.stderr
    newest = _state_size(state)
    assert newest > cosigned
    before = state.read_bytes()
    short = ("--witness-wait", "1")  # the bound given; the default bound by the last command
    for args in (
        ("ledger", "history", "growing", "--identity", alice, "--witness", w, "--state", str(state), *short),
        ("ledger", "accesses", "growing", "--identity", alice, "--witness", w, "--state", str(state), *short),
        ("ledger", "verify", "--witness", w, "--state", str(state), *short),
        ("ledger", "verify", "--witness", w),
    ):
        bound = 1.0 if short[0] in args else COSIGN_WAIT
        started = time.monotonic()
        r = confide(s.cas, *args)
        took = time.monotonic() - started
        assert r.returncode == errors.UnknownKeyError.exit_code == 65, r.stdout + r.stderr
        lines = r.stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: UnknownKeyError: checkpoint "), r.stderr
        assert f"checkpoint {newest} has no cosignature by witness" in lines[0], r.stderr
        assert bound <= took < bound + 20, took  # waited, within the bound
        assert state.read_bytes() == before  # no false rollback, never lowered
    # The SDK: its own bound.
    me = load_identity(s.alice)
    with Cas.from_env(s.cas.env) as sdk:
        started = time.monotonic()
        with pytest.raises(errors.UnknownKeyError, match="has no cosignature by witness"):
            sdk.history("growing", me, witnesses=[w], state=state, witness_wait=1.0)
        assert 1.0 <= time.monotonic() - started < 15
        with pytest.raises(errors.UsageError, match="witness_wait: got"):
            sdk.verify_log(witnesses=[w], witness_wait=61)
    assert state.read_bytes() == before
    # The witness is back: the CAS asks it a new checkpoint at once (and one that failed, later),
    # and the reader gets the newest, cosigned, not smaller than the state's.
    s.relay.up()
    assert apply(s.cas, s.tmp, policy_yaml("back", s.measurement), s.alice).returncode == 0
    deadline = time.time() + 60
    while (r := confide(s.cas, "ledger", "history", "growing", "--identity", alice, "--witness", w,
                        "--state", str(state))).returncode != 0:  # fmt: skip
        assert r.returncode == 65 and time.time() < deadline, r.stderr
    assert _state_size(state) >= newest
