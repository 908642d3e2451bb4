"""JSON-lines logs for every process (API, worker, CLI); never a token, secret or request body."""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

# Fields a log call may add with `extra=`; anything else stays out of the line.
EXTRA_FIELDS = ("request_id", "method", "route", "path", "status", "latency_ms", "sub", "client")


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
