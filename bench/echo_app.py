"""The baseline of the ``http`` scenario: a raw ASGI app that answers every request with 200 and
the request's own body (same content type), on the same stack the server runs (uvicorn with
uvloop and httptools, one worker, no access log, no proxy-headers middleware, no server
header: uvicorn configured as ``mlserve serve`` configures it)::

    uvicorn bench.echo_app:app --loop uvloop --http httptools --no-access-log \
        --no-proxy-headers --no-server-header --port 8001

It does what any HTTP handler must (read the body, answer with a body of the same size) and
nothing else: no routing, no decoding, no model. A GET (e.g. ``/v2/health/ready``) gets 200
with an empty body. Stateless, hence safe under any concurrency.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

_DEFAULT_TYPE = b"application/octet-stream"


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


async def app(scope: dict[str, Any], receive: Receive, send: Send) -> None:
    """ASGI 3 entry point: echoes the body of every HTTP request."""
    if scope["type"] == "lifespan":
        await _lifespan(receive, send)
        return
    if scope["type"] != "http":
        return
    message = await receive()
    body = message.get("body", b"")
    if message.get("more_body", False):
        chunks = [body]
        while message.get("more_body", False):
            message = await receive()
            chunks.append(message.get("body", b""))
        body = b"".join(chunks)
    content_type = _DEFAULT_TYPE
    for name, value in scope["headers"]:
        if name == b"content-type":
            content_type = value
            break
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [
                (b"content-type", content_type),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
