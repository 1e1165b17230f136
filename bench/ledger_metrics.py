"""The cost of the ledger servers' request counting (confide.ledger.http.MetricsApp) per request,
against the same application without it, in the same run: ASGI calls in process (no sockets,
no HTTP parsing), so that the difference is the middleware's alone, on the cheapest requests
there are (a tiles server's 404 for a path outside its prefix, a witness's 501, each answered
without a thread or a database). Prints microseconds a request for both and the ratio; the
fraction of a real request is far smaller (an add-checkpoint costs ~1 ms, docs/performance.md).

    flock -x /tmp/confide-cpu.lock .venv/bin/python bench/ledger_metrics.py
"""

from __future__ import annotations

import argparse
import asyncio
import time
from pathlib import Path
from typing import Any

from confide.ledger.http import MetricsApp, TilesApp, ledger_limits
from confide.ledger.metrics import LedgerMetrics, tiles_route


async def _receive() -> dict[str, Any]:
    return {"type": "http.request", "body": b"", "more_body": False}


async def _send(_message: Any) -> None:
    return None


async def _loop(app: Any, scope: dict[str, Any], n: int) -> float:
    start = time.perf_counter()
    for _ in range(n):
        await app(scope, _receive, _send)
    return (time.perf_counter() - start) / n * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    tiles = TilesApp(Path("/nonexistent"), prefix="/log", serve_entries=False, limiter=None)
    metrics = LedgerMetrics(ledger_limits())
    counted = MetricsApp(tiles, metrics, lambda target: tiles_route(target, "/log"), None)
    scope = {"type": "http", "method": "POST", "path": "/other", "raw_path": b"/other", "query_string": b"",
             "client": ("127.0.0.1", 1), "headers": []}  # fmt: skip
    for r in range(args.rounds):
        bare = asyncio.run(_loop(tiles, scope, args.requests))
        with_metrics = asyncio.run(_loop(counted, scope, args.requests))
        print(
            f"round {r + 1}: us/request without counting {bare:.2f}, with {with_metrics:.2f}, "
            f"overhead {with_metrics - bare:.2f} us, ratio {with_metrics / bare:.2f}x"
        )
    assert metrics.requests[("other", 501)] == args.requests * args.rounds


if __name__ == "__main__":
    main()
