"""ASGI helpers shared by the operator web app and the daemon's own probe server."""

from __future__ import annotations

from typing import Any, Awaitable, Callable

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


class HeadAsGet:
    """Answer HEAD as GET without the body (RFC 9110 section 9.3.2).

    FastAPI's routes answer only the methods they declare, so a load balancer or uptime check
    that probes /healthz with HEAD would get 405. The GET response's status and headers
    (Content-Length included) are kept; its body is dropped.
    """

    def __init__(self, app: Callable[[Scope, Receive, Send], Awaitable[None]]) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "HEAD":
            await self.app(scope, receive, send)
            return

        async def without_body(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.body":
                message = {**message, "body": b""}
            await send(message)

        await self.app({**scope, "method": "GET"}, receive, without_body)
