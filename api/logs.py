"""JSON-lines logs: one line per request (and per job in the worker), never a token,
secret or request body."""

from __future__ import annotations

import json
import logging
import re
import sys
import time
import uuid
from typing import Any

from litestar.types import ASGIApp, Message, Receive, Scope, Send

REQUEST_ID_HEADER = b"x-request-id"
# A caller's request id is kept if it is short printable ASCII; otherwise we make one.
VALID_REQUEST_ID = re.compile(rb"^[\x21-\x7e]{1,128}$")
# Fields a log call may add with `extra=`; anything else stays out of the line.
EXTRA_FIELDS = ("request_id", "method", "route", "path", "status", "latency_ms", "sub", "client")

access_logger = logging.getLogger("wallet.access")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for field in EXTRA_FIELDS:
            if field in record.__dict__:
                line[field] = record.__dict__[field]
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


def configure_logging(level: str) -> None:
    """Every logger of the process writes JSON lines to stderr."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    handler.formatter.converter = time.gmtime
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
    # RequestLog writes the access line, with the request id and the caller.
    logging.getLogger("uvicorn.access").setLevel(logging.WARNING)


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
