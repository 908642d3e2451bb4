"""The access log: one JSON line per request, with a request id (X-Request-ID) echoed back."""

from __future__ import annotations

import logging
import re
import time
import uuid

from litestar.types import ASGIApp, Message, Receive, Scope, Send

REQUEST_ID_HEADER = b"x-request-id"
# A caller's request id is kept if it is short printable ASCII; otherwise we make one.
VALID_REQUEST_ID = re.compile(rb"^[\x21-\x7e]{1,128}$")

access_logger = logging.getLogger("wallet.access")


class RequestLog:
    """ASGI wrapper: honours or makes X-Request-ID, echoes it, logs one line per request."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = next((value for name, value in scope["headers"] if name == REQUEST_ID_HEADER), b"")
        if not VALID_REQUEST_ID.match(request_id):
            request_id = uuid.uuid4().hex.encode()
        started = time.perf_counter()
        status = 500

        async def send_with_request_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", []), (REQUEST_ID_HEADER, request_id)]
            await send(message)

        try:
            await self.app(scope, receive, send_with_request_id)
        finally:
            user = scope.get("user")
            access_logger.info(
                "%s %s %s",
                scope["method"],
                scope.get("path_template") or scope["path"],
                status,
                extra={
                    "request_id": request_id.decode(),
                    "method": scope["method"],
                    "route": scope.get("path_template") or "unmatched",
                    "status": status,
                    "latency_ms": round((time.perf_counter() - started) * 1000, 2),
                    "sub": getattr(user, "sub", None),
                },
            )
