"""One HTTP request through an ASGI app in process (no sockets), the body in chunks."""

from __future__ import annotations

import asyncio
from typing import Any


def call(
    app: Any,
    path: str,
    chunks: list[bytes],
    method: str = "POST",
    headers: list[tuple[bytes, bytes]] | None = None,
    received: list[int] | None = None,
) -> tuple[int, bytes]:
    """One request (POST unless ``method``) through the ASGI app, the body delivered in ``chunks``;
    ``headers`` are added to the request's; ``received`` (a list) gets the number of body
    messages the app read."""
    return asyncio.run(call_async(app, path, chunks, method, headers, received))


async def call_async(
    app: Any,
    path: str,
    chunks: list[bytes],
    method: str = "POST",
    headers: list[tuple[bytes, bytes]] | None = None,
    received: list[int] | None = None,
) -> tuple[int, bytes]:
    """:func:`call` on the running event loop (several requests may run at once)."""
    messages = [
        {"type": "http.request", "body": c, "more_body": i < len(chunks) - 1} for i, c in enumerate(chunks)
    ]
    out: list[dict[str, Any]] = []
    count = received if received is not None else []
    count.append(0)

    async def receive() -> dict[str, Any]:
        if messages:
            count[-1] += 1
            return messages.pop(0)
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        out.append(message)

    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method,
        "scheme": "https", "path": path, "raw_path": path.encode(), "root_path": "", "query_string": b"",
        "headers": [(b"content-type", b"application/json"), *(headers or [])], "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 2),
    }  # fmt: skip
    await app(scope, receive, send)
    status = next(m["status"] for m in out if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in out if m["type"] == "http.response.body")
    return status, body
