"""What every handler shares: the pool, strict bodies, idempotency, cursors, responses."""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
import uuid
from typing import Annotated, Any

import asyncpg
import msgspec
from litestar import Request, Response
from litestar.params import Parameter

from api.auth import Principal
from api.errors import ApiError

IDEMPOTENCY_KEY = re.compile(r"^[\x20-\x7e]{1,255}$")


class Caller:
    """This request's way into the ledger: the pool, and who calls (the token's sub, and the
    owner it is limited to, or None for a service token). Handlers without an Idempotency-Key
    (the reads, and PUT of a commission rule) take a Caller."""

    __slots__ = ("owner_id", "pool", "sub")

    def __init__(self, pool: asyncpg.Pool, principal: Principal) -> None:
        self.pool, self.sub, self.owner_id = pool, principal.sub, principal.owner_id


def provide_caller(request: Request[Principal, Any, Any]) -> Caller:
    return Caller(request.app.state.pool, request.user)  # the auth guard put the principal there


async def strict_body(request: Request) -> None:
    """before_request: decode the body strictly (Litestar's own parse coerces "10" and 10.0
    into 10; a payments API must refuse both). Errors become 400 invalid_request."""
    data_field = request.route_handler.parsed_data_field
    if data_field is None:
        return
    try:
        msgspec.json.decode(await request.body(), type=data_field.annotation, strict=True)
    except msgspec.ValidationError as error:
        raise ApiError(400, "invalid_request", str(error)) from None
    except (msgspec.DecodeError, UnicodeDecodeError):
        raise ApiError(400, "invalid_request", "the body is not valid UTF-8 JSON") from None
    except RecursionError:
        raise ApiError(400, "invalid_request", "the body is nested too deeply") from None


class Write:
    """A POST: its caller, its Idempotency-Key and a fingerprint of the request the key must
    match (SPEC 6). Handlers that write take a Write; one dependency per handler, because
    Litestar resolves sibling dependencies in a task group of their own, which cost a sixth
    of the API's CPU per transfer."""

    __slots__ = ("caller", "fingerprint", "key")

    def __init__(self, caller: Caller, key: str | None, fingerprint: str | None) -> None:
        self.caller, self.key, self.fingerprint = caller, key, fingerprint

    @property
    def ledger_args(self) -> tuple[str, str | None, str | None, str | None]:
        """What every writing function of the ledger takes first: caller id, idempotency key,
        request fingerprint, and the owner the caller is limited to."""
        return self.caller.sub, self.key, self.fingerprint, self.caller.owner_id


async def provide_write(
    request: Request,
    caller: Caller,
    idempotency_key: Annotated[
        str | None,
        Parameter(
            header="Idempotency-Key",
            min_length=1,
            max_length=255,
            description="1 to 255 printable ASCII characters; a retry with the same key and request "
            "returns the first response (Idempotent-Replayed: true).",
        ),
    ] = None,
) -> Write:
    """The Idempotency-Key header and a fingerprint of the request it must match."""
    key = idempotency_key
    if key is None:
        return Write(caller, None, None)
    if not IDEMPOTENCY_KEY.match(key):
        raise ApiError(400, "invalid_request", "Idempotency-Key must be 1 to 255 printable ASCII characters")
    digest = hashlib.sha256()
    digest.update(f"{request.method} {request.url.path}\n".encode())
    digest.update(await request.body())
    return Write(caller, key, digest.hexdigest())


def created(content: Any, record: Any, location: str) -> Response:
    """201 with the body; a replay says so in Idempotent-Replayed."""
    return Response(content, status_code=201, headers=_replay_headers(record) | {"Location": location})


def ok(content: Any, record: Any) -> Response:
    return Response(content, status_code=200, headers=_replay_headers(record))


def _replay_headers(record: Any) -> dict[str, str]:
    return {"Idempotent-Replayed": "true"} if record["replayed"] else {}


def encode_cursor(value: int | uuid.UUID) -> str:
    raw = value.bytes if isinstance(value, uuid.UUID) else value.to_bytes(8, "big", signed=True)
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def decode_cursor(cursor: str | None, kind: type[int] | type[uuid.UUID]) -> Any:
    """A cursor from encode_cursor, or 400 invalid_request."""
    if cursor is None:
        return None
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
    except (binascii.Error, ValueError):
        raw = b""
    if kind is uuid.UUID and len(raw) == 16:
        return uuid.UUID(bytes=raw)
    if kind is int and len(raw) == 8:
        return int.from_bytes(raw, "big", signed=True)
    raise ApiError(400, "invalid_request", "the cursor is not valid")
