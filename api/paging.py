"""Query values of list and history pages: keyset cursors and time bounds, strictly parsed."""

from __future__ import annotations

import base64
import re
import uuid
from datetime import datetime
from typing import Any

import msgspec

from api.errors import ApiError
from api.schemas import AwareDateTime, is_utc_instant

# A cursor is an 8-byte history position or a 16-byte wallet id in unpadded URL-safe base64.
CURSOR_PATTERNS: dict[type, str] = {int: r"^[A-Za-z0-9_-]{11}$", uuid.UUID: r"^[A-Za-z0-9_-]{22}$"}


def encode_cursor(value: int | uuid.UUID) -> str:
    raw = value.bytes if isinstance(value, uuid.UUID) else value.to_bytes(8, "big", signed=True)
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def decode_cursor(cursor: str | None, kind: type[int] | type[uuid.UUID]) -> Any:
    """A cursor from encode_cursor, or 400 invalid_request."""
    if cursor is None:
        return None
    if not re.fullmatch(CURSOR_PATTERNS[kind], cursor):  # `$` alone would let a final newline by
        raise ApiError(400, "invalid_request", "the cursor is not valid")
    raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
    return uuid.UUID(bytes=raw) if kind is uuid.UUID else int.from_bytes(raw, "big", signed=True)


def decode_instant(text: str | None, name: str) -> datetime | None:
    """An RFC 3339 date-time with an offset whose UTC value lies in the years 1 to 9999, or 400
    invalid_request."""
    if text is None:
        return None
    try:
        moment = msgspec.convert(text, AwareDateTime, strict=True)
    except msgspec.ValidationError:
        moment = None
    if moment is None or not is_utc_instant(moment):
        detail = f"{name} must be an RFC 3339 date-time with an offset, in the years 1 to 9999 in UTC"
        raise ApiError(400, "invalid_request", detail)
    return moment
