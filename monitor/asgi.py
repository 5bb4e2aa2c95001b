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


class BodyLimit:
    """Refuse a request body over `max_bytes` with 413, counting the bytes as they arrive.

    A declared Content-Length over the limit is answered at once, before the app runs; a body
    without one (Transfer-Encoding: chunked) is counted chunk by chunk, and the first chunk past
    the limit stops the reading with 413 (raised where the app reads, so the app's own error
    handlers answer it). Nothing is buffered here, so a huge body never reaches a parser. A
    response sent before the body was read to its end (a 401 decided from the headers, a 413)
    closes the connection, so the server does not go on receiving what nobody will read.
    """

    def __init__(self, app: Callable[[Scope, Receive, Send], Awaitable[None]], max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    def detail(self) -> str:
        return f"request body over {self.max_bytes} bytes"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _header(scope, b"content-length")
        length = int(declared) if declared is not None and declared.isdigit() else None
        if length is not None and length > self.max_bytes:
            await _send_json(send, 413, {"detail": self.detail()}, {"connection": "close"})
            return
        received = 0
        body_pending = bool(length) or _header(scope, b"transfer-encoding") is not None

        async def counted() -> dict[str, Any]:
            nonlocal received, body_pending
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                body_pending = bool(message.get("more_body", False))
                if received > self.max_bytes:
                    from starlette.exceptions import HTTPException

                    raise HTTPException(status_code=413, detail=self.detail(), headers={"Connection": "close"})
            return message

        async def closing_if_unread(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start" and body_pending:
                headers = list(message.get("headers", []))
                if not any(name.lower() == b"connection" for name, _ in headers):
                    message = {**message, "headers": [*headers, (b"connection", b"close")]}
            await send(message)

        await self.app(scope, counted, closing_if_unread)


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return value.decode("latin-1").strip()
    return None


async def _send_json(send: Send, status: int, document: dict[str, Any], headers: dict[str, str]) -> None:
    import json

    body = json.dumps(document).encode()
    raw_headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    raw_headers += [(name.encode(), value.encode()) for name, value in headers.items()]
    await send({"type": "http.response.start", "status": status, "headers": raw_headers})
    await send({"type": "http.response.body", "body": body})
