"""The CAS's log handler (``confide.cas.server._LoopBatchedHandler``): the lines logged on a
running event loop are written together at the end of the loop iteration, the same lines in the
same order; lines from elsewhere, and ``flush``, write at once."""

from __future__ import annotations

import asyncio
import io
import logging
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from confide.cas.app import _REQUEST_LINE, _line_handler
from confide.cas.server import _JsonFormatter, _LoopBatchedHandler


class _Stream(io.StringIO):
    """Counts the writes."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[str] = []

    def write(self, s: str) -> int:
        self.writes.append(s)
        return super().write(s)


@pytest.fixture
def logged() -> Iterator[tuple[logging.Logger, _Stream]]:
    stream = _Stream()
    handler = _LoopBatchedHandler(stream)
    handler.setFormatter(_JsonFormatter())
    logger = logging.getLogger("confide.test-batched")
    logger.handlers[:] = [handler]
    logger.propagate = False
    logger.setLevel(logging.INFO)
    yield logger, stream
    logger.handlers[:] = []


def test_lines_on_the_loop_go_out_in_one_write_at_the_end_of_the_iteration(
    logged: tuple[logging.Logger, _Stream], monkeypatch: pytest.MonkeyPatch
) -> None:
    logger, stream = logged
    asked: list[object] = []
    running = asyncio._get_running_loop

    def counted() -> asyncio.AbstractEventLoop | None:
        asked.append(None)
        return running()

    monkeypatch.setattr(asyncio, "_get_running_loop", counted)

    async def main() -> None:
        for i in range(3):
            logger.info('{"event": "request", "n": %d}', i)
        assert stream.writes == []  # not yet: at the end of this iteration
        assert len(asked) == 1  # the running loop asked for once (a getpid each on 3.11)
        await asyncio.sleep(0)
        assert stream.writes == ['{"event": "request", "n": 0}\n{"event": "request", "n": 1}\n'
                                 '{"event": "request", "n": 2}\n']  # fmt: skip
        logger.info("plain text")
        await asyncio.sleep(0)

    asyncio.run(main())
    assert (
        stream.writes[1]
        == '{"event": "log", "level": "INFO", "logger": "confide.test-batched", "message": "plain text"}\n'
    )


def test_lines_off_the_loop_are_written_at_once_after_those_pending(
    logged: tuple[logging.Logger, _Stream],
) -> None:
    logger, stream = logged

    async def main() -> None:
        logger.info("first")
        other = threading.Thread(target=logger.warning, args=("from a thread",))
        other.start()
        other.join()
        assert len(stream.writes) == 1  # the pending line, then the thread's
        assert stream.getvalue().count("\n") == 2
        assert stream.getvalue().index("first") < stream.getvalue().index("from a thread")
        logger.info("second")
        logger.handlers[0].flush()  # as logging.shutdown does
        assert "second" in stream.getvalue()
        await asyncio.sleep(0)  # the callback then finds nothing to write

    asyncio.run(main())
    logger.info("no loop")
    assert stream.getvalue().splitlines()[-1].endswith('"message": "no loop"}')
    assert stream.getvalue().count("second") == 1


# --- request lines handed over without a record (confide.cas.app._line_handler) --------------


@pytest.fixture
def hierarchy() -> Iterator[tuple[logging.Logger, logging.Logger, _LoopBatchedHandler, _Stream]]:
    """``confide.test-lines`` with the CAS's handler (and not propagating), and its child
    ``confide.test-lines.app`` (no handler of its own), as ``cas serve`` has the root logger and
    ``confide.cas``."""
    stream = _Stream()
    handler = _LoopBatchedHandler(stream)
    handler.setFormatter(_JsonFormatter())
    parent = logging.getLogger("confide.test-lines")
    parent.handlers[:] = [handler]
    parent.propagate = False
    parent.setLevel(logging.INFO)
    child = logging.getLogger("confide.test-lines.app")
    yield parent, child, handler, stream
    parent.handlers[:] = []
    child.handlers[:] = []
    child.filters[:] = []


def test_a_request_line_reaches_the_only_handler_without_a_record(
    hierarchy: tuple[logging.Logger, logging.Logger, _LoopBatchedHandler, _Stream],
) -> None:
    """The same text, in the same writes, as log.info(_REQUEST_LINE, ...) gives."""
    parent, child, handler, stream = hierarchy
    args = ("POST", "/v1/attest", 200, 1.23456)
    parent.handlers[:] = [handler]  # without the capture handlers pytest adds for the test
    assert _line_handler(child) is handler

    async def main(fast: bool) -> None:
        for status in (200, 403):
            if fast:
                handler.emit_line(_REQUEST_LINE % (*args[:2], status, args[3]))
            else:
                child.info(_REQUEST_LINE, *args[:2], status, args[3])
        await asyncio.sleep(0)

    asyncio.run(main(fast=False))
    by_logging = list(stream.writes)
    stream.writes.clear()
    asyncio.run(main(fast=True))
    assert stream.writes == by_logging
    assert by_logging == [
        '{"event": "request", "method": "POST", "route": "/v1/attest", "status": 200, "ms": 1.23}\n'
        '{"event": "request", "method": "POST", "route": "/v1/attest", "status": 403, "ms": 1.23}\n'
    ]


def test_anything_else_configured_takes_loggings_own_path(
    hierarchy: tuple[logging.Logger, logging.Logger, _LoopBatchedHandler, _Stream],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    parent, child, handler, _stream = hierarchy
    parent.handlers[:] = [handler]  # without the capture handlers pytest adds for the test
    # a handler that INFO records do not reach changes nothing
    quiet = logging.StreamHandler(io.StringIO())
    quiet.setLevel(logging.WARNING)
    child.addHandler(quiet)
    assert _line_handler(child) is handler
    # a second handler that they reach (e.g. pytest's caplog, an operator's file handler)
    other = logging.StreamHandler(io.StringIO())
    child.addHandler(other)
    assert _line_handler(child) is None
    child.handlers[:] = []
    # a filter on the logger, or on the handler
    child.addFilter(lambda record: True)
    assert _line_handler(child) is None
    child.filters[:] = []
    handler.addFilter(lambda record: True)
    assert _line_handler(child) is None
    handler.filters[:] = []
    # another formatter
    handler.setFormatter(logging.Formatter("%(message)s"))
    assert _line_handler(child) is None
    handler.setFormatter(_JsonFormatter())
    # a handler of another class, or none at all (logging.lastResort)
    parent.handlers[:] = [logging.StreamHandler(io.StringIO())]
    assert _line_handler(child) is None
    parent.handlers[:] = []
    assert _line_handler(child) is None
    parent.handlers[:] = [handler]
    # a record factory of the application's
    monkeypatch.setattr(logging, "_logRecordFactory", type("Record", (logging.LogRecord,), {}))
    assert _line_handler(child) is None
    monkeypatch.undo()
    assert _line_handler(child) is handler


def test_the_serving_cas_writes_its_request_lines_without_records(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the logging `cas serve` configures, the app hands its request lines to the handler
    (emit_line); under pytest the root logger also has caplog's handler, so it is removed here."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parents[1]))
    from asgi_call import call
    from cas_inproc import InProcessCas
    from confide.cas.app import create_app
    from confide.cas.server import _configure_logging

    for name in ("_srcfile", "logThreads", "logProcesses", "logMultiprocessing"):
        monkeypatch.setattr(logging, name, getattr(logging, name))  # restored after the test
    uvicorn_loggers = [logging.getLogger(n) for n in ("uvicorn", "uvicorn.error", "uvicorn.access")]
    for logger in uvicorn_loggers:
        monkeypatch.setattr(logger, "handlers", logger.handlers[:])
        monkeypatch.setattr(logger, "propagate", logger.propagate)
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    try:
        _configure_logging()
        handler = root.handlers[0]
        assert isinstance(handler, _LoopBatchedHandler)
        stream = _Stream()
        handler.setStream(stream)
        lines: list[str] = []
        emit_line = handler.emit_line
        handler.emit_line = lambda line: (lines.append(line), emit_line(line))[1]  # type: ignore[method-assign]
        inproc = InProcessCas.start(tmp_path / "cas")
        app = create_app(inproc.cas)
        status, _body = call(app, "/v1/attest/nonce", [b""])
        assert status == 200
        handler.flush()
        assert len(lines) == 1
        assert lines[0].startswith(
            '{"event": "request", "method": "POST", "route": "/v1/attest/nonce", "status": 200, "ms": '
        )
        assert stream.getvalue().endswith(lines[0] + "\n")
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
