"""The responses of writes: 201 or 200 with the body, and Idempotent-Replayed on a replay."""

from __future__ import annotations

from typing import Any

from litestar import Response


def created(content: Any, record: Any, location: str) -> Response:
    """201 with the body; a replay says so in Idempotent-Replayed."""
    return Response(content, status_code=201, headers=_replay_headers(record) | {"Location": location})


def ok(content: Any, record: Any) -> Response:
    return Response(content, status_code=200, headers=_replay_headers(record))


def _replay_headers(record: Any) -> dict[str, str]:
    return {"Idempotent-Replayed": "true"} if record["replayed"] else {}
