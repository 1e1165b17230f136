"""The signal hold at the end of ``Cas.mount_volumes`` / ``AsyncCas.mount_volumes``
(``confide.sdk._SignalHold``), without volumes: holds nest and may end in any order (async
sessions), the application's handlers are put back as found, each held signal is delivered
once at the last leave, and what is not the hold's to hold (off the main thread, ignored
signals, an asyncio loop's handlers) is left alone. End to end: tests/integration/test_sdk_volumes.py."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import types
from collections.abc import Iterator
from pathlib import Path

import pytest
import uvloop

from confide.sdk import _SignalHold


@pytest.fixture
def handlers() -> Iterator[list[int]]:
    """SIGTERM and SIGHUP handled by a Python handler that records them (restored after)."""
    calls: list[int] = []

    def record(signum: int, _frame: types.FrameType | None) -> None:
        calls.append(signum)

    before = signal.signal(signal.SIGTERM, record), signal.signal(signal.SIGHUP, record)
    try:
        yield calls
    finally:
        signal.signal(signal.SIGTERM, before[0])
        signal.signal(signal.SIGHUP, before[1])


def test_nested_holds_deliver_once_at_the_last_leave_and_restore_the_handlers(handlers: list[int]) -> None:
    hold = _SignalHold()
    record = signal.getsignal(signal.SIGTERM)
    assert hold.enter() and hold.enter()
    assert signal.getsignal(signal.SIGTERM) is not record
    os.kill(os.getpid(), signal.SIGTERM)
    os.kill(os.getpid(), signal.SIGTERM)  # the same signal twice: once, as the kernel merges it
    hold.leave()  # the first session's end: still held for the second
    os.kill(os.getpid(), signal.SIGHUP)
    assert handlers == []
    hold.leave()
    assert handlers == [signal.SIGTERM, signal.SIGHUP]  # in the order they came
    assert signal.getsignal(signal.SIGTERM) is record and signal.getsignal(signal.SIGHUP) is record
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    assert hold.enter()  # a fresh hold: nothing left over
    hold.leave()
    assert handlers == [signal.SIGTERM, signal.SIGHUP]


def test_a_handlers_exception_comes_after_every_held_signal(handlers: list[int]) -> None:
    hold = _SignalHold()
    hold.enter()
    signal.raise_signal(signal.SIGINT)
    os.kill(os.getpid(), signal.SIGTERM)
    with pytest.raises(KeyboardInterrupt):
        hold.leave()
    assert handlers == [signal.SIGTERM]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_off_the_main_thread_nothing_is_held(handlers: list[int]) -> None:
    hold = _SignalHold()
    entered: list[bool] = []
    thread = threading.Thread(target=lambda: entered.append(hold.enter()))
    thread.start()
    thread.join(10)
    assert entered == [False]
    assert signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL
    assert hold.enter()  # the main thread's hold is unaffected
    hold.leave()


def test_ignored_signals_and_an_asyncio_loops_handlers_are_left_alone(handlers: list[int]) -> None:
    """A loop's handler (``loop.add_signal_handler``) runs on the loop from the wakeup fd: held
    and raised again, it would run twice. An ignored signal has nothing to deliver."""
    hold = _SignalHold()
    loop = asyncio.new_event_loop()
    hups: list[str] = []
    before = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        loop.add_signal_handler(signal.SIGHUP, hups.append, "hup")
        loop_handler = signal.getsignal(signal.SIGHUP)

        async def held_while_the_loop_runs() -> None:
            hold.enter()
            assert signal.getsignal(signal.SIGHUP) is loop_handler
            assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
            os.kill(os.getpid(), signal.SIGHUP)
            signal.raise_signal(signal.SIGINT)
            for _ in range(20):
                await asyncio.sleep(0.01)
            hold.leave()
            for _ in range(20):
                await asyncio.sleep(0.01)

        loop.run_until_complete(held_while_the_loop_runs())
        assert hups == ["hup"]
        loop.remove_signal_handler(signal.SIGHUP)
    finally:
        loop.close()
        signal.signal(signal.SIGINT, before)
    assert handlers == []


def test_an_enter_interrupted_right_after_a_handler_was_replaced_puts_that_handler_back(
    handlers: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another signal's handler raising (``sys.exit`` in a SIGTERM handler, say) at the bytecode
    boundary right after ``signal.signal`` replaced a handler, before the hold noted what it
    replaced: the caller enters again (``Cas.mount_volumes``' ``__exit__``). The hold used to
    take its own note-taker for the application's handler then, and put it back at the end:
    SIGTERM swallowed for the rest of the process."""
    record = signal.getsignal(signal.SIGTERM)
    real = signal.signal
    interrupted: list[int] = []

    def replaced_then_interrupted(signum: int, handler: object) -> object:
        previous = real(signum, handler)  # type: ignore[arg-type]
        if signum == signal.SIGTERM and not interrupted:
            interrupted.append(signum)
            raise SystemExit("another signal's handler, run as signal.signal returned")
        return previous

    monkeypatch.setattr(signal, "signal", replaced_then_interrupted)
    hold = _SignalHold()
    early: BaseException | None = None
    while True:  # as _VolumeSession.__exit__ enters
        try:
            held = hold.enter()
            break
        except BaseException as caught:
            early = early or caught
    assert held and isinstance(early, SystemExit)
    os.kill(os.getpid(), signal.SIGTERM)
    assert handlers == []  # held
    hold.leave()
    assert handlers == [signal.SIGTERM]
    assert signal.getsignal(signal.SIGTERM) is record
    os.kill(os.getpid(), signal.SIGTERM)  # the application's handler, not the hold's, from now on
    assert handlers == [signal.SIGTERM, signal.SIGTERM]


def test_a_uvloop_loops_handlers_are_left_alone(handlers: list[int]) -> None:
    """uvloop's ``loop.add_signal_handler`` puts a bound method of the loop in place, not
    asyncio's ``_sighandler_noop``: the hold used to take it for the application's, and the
    loop's handler then ran twice (from the loop's wakeup fd at once, and again at the last
    leave)."""
    hold = _SignalHold()
    loop = uvloop.new_event_loop()
    hups: list[str] = []
    try:
        loop.add_signal_handler(signal.SIGHUP, hups.append, "hup")
        loop_handler = signal.getsignal(signal.SIGHUP)

        async def held_while_the_loop_runs() -> None:
            hold.enter()
            assert signal.getsignal(signal.SIGHUP) == loop_handler
            os.kill(os.getpid(), signal.SIGHUP)
            for _ in range(20):
                await asyncio.sleep(0.01)
            assert hups == ["hup"]  # the loop's handler ran on the loop meanwhile
            hold.leave()
            for _ in range(20):
                await asyncio.sleep(0.01)

        loop.run_until_complete(held_while_the_loop_runs())
        assert hups == ["hup"]
        loop.remove_signal_handler(signal.SIGHUP)
    finally:
        loop.close()
    assert handlers == []


def test_a_handler_the_application_sets_during_an_async_hold_is_kept(handlers: list[int]) -> None:
    """An asynchronous session's hold lasts while the loop runs other tasks: one of them may set
    a handler of its own meanwhile (a server starting). The last leave used to put back the
    handler found at the hold's start over it. It keeps the application's, and the signal held
    before is delivered to it."""
    hold = _SignalHold()
    mine: list[int] = []
    hold.enter()
    os.kill(os.getpid(), signal.SIGTERM)
    signal.signal(signal.SIGTERM, lambda signum, _frame: mine.append(signum))
    set_meanwhile = signal.getsignal(signal.SIGTERM)
    hold.leave()
    assert signal.getsignal(signal.SIGTERM) is set_meanwhile
    assert mine == [signal.SIGTERM] and handlers == []


def test_a_note_taker_put_back_after_the_hold_passes_its_signals_on(handlers: list[int]) -> None:
    """Code that sets a handler of its own during an asynchronous hold saves the hold's
    note-taker and puts it back once done (uvicorn's ``capture_signals``), after the hold
    ended. The note-taker then noted every later signal for a hold that never delivered it: the
    signal was swallowed for good. It passes it on to the handler it stood in for."""
    hold = _SignalHold()
    hold.enter()
    saved = signal.signal(signal.SIGTERM, lambda _signum, _frame: None)  # a server starts
    hold.leave()
    signal.signal(signal.SIGTERM, saved)  # and, stopping, puts back what it found
    os.kill(os.getpid(), signal.SIGTERM)
    assert handlers == [signal.SIGTERM]
    os.kill(os.getpid(), signal.SIGTERM)
    assert handlers == [signal.SIGTERM, signal.SIGTERM]
    # during a later hold it is held again, and delivered at that hold's end (through it)
    assert hold.enter()
    os.kill(os.getpid(), signal.SIGTERM)
    assert handlers == [signal.SIGTERM, signal.SIGTERM]
    hold.leave()
    assert handlers == [signal.SIGTERM, signal.SIGTERM, signal.SIGTERM]
    assert signal.getsignal(signal.SIGTERM) is saved


_DEFAULT_ACTION_CHILD = """
import os, signal, sys, time
from confide.sdk import _SignalHold

hold = _SignalHold()
hold.enter()
saved = signal.signal(signal.SIGTERM, lambda _s, _f: None)
hold.leave()
signal.signal(signal.SIGTERM, saved)
print("armed", flush=True)
os.kill(os.getpid(), signal.SIGTERM)
time.sleep(5)
print("swallowed", flush=True)
"""


def test_a_note_taker_put_back_after_the_hold_gives_a_default_action(tmp_path: Path) -> None:
    """The same with SIGTERM at its default: the signal ends the process, as without the hold."""
    src = Path(__file__).parents[2] / "src"
    child = subprocess.run(
        [sys.executable, "-c", _DEFAULT_ACTION_CHILD],
        env={**os.environ, "PYTHONPATH": str(src)}, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert child.stdout == "armed\n", child.stderr
    assert child.returncode == -signal.SIGTERM
