"""The CAS's log handler (``confide.cas.server._LoopBatchedHandler``): the lines logged on a
running event loop are written together at the end of the loop iteration, the same lines in the
same order; lines from elsewhere, and ``flush``, write at once."""

from __future__ import annotations

import asyncio
import io
import logging
import threading
from collections.abc import Iterator

import pytest

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
