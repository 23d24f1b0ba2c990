"""What every embedding route does around its work: withdraw it when the client hangs up, note its
texts and tokens for the access log, and build big JSON answers off the event loop."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse, Response

TRUNCATED_HEADER = "X-Truncated-Inputs"


class ClientGone(Exception):
    """The client disconnected before its answer was ready (answered 499, nginx's status)."""


async def until_answered(request: Request, work: Any) -> Any:
    """Await ``work``; if the client disconnects first, cancel it (a waiting request is withdrawn
    from the coalescing queue) and raise
    [`ClientGone`][kv_embeddings_integrations.serving.replies.ClientGone]."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_disconnected(request))
    try:
        done, _ = await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        task.cancel()
        raise
    finally:
        watcher.cancel()
    if task in done:
        return task.result()
    task.cancel()
    raise ClientGone


def note(request: Request, texts: int, tokens: int) -> None:
    """Record a request's texts and tokens for its access-log line."""
    request.state.texts, request.state.tokens = texts, tokens


async def json_response(render: Callable[[], Any], truncated: int | None = None) -> Response:
    """The JSON response of what ``render`` builds, made (and serialised) in a worker thread:
    thousands of floats per vector must not hold up the event loop (probes, admission, others)."""
    headers = {TRUNCATED_HEADER: str(truncated)} if truncated is not None else None
    return await asyncio.to_thread(lambda: JSONResponse(render(), headers=headers))


async def _disconnected(request: Request) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return
