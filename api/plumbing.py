"""What every handler shares: the pool, strict bodies, idempotency, cursors, responses."""

from __future__ import annotations

import base64
import hashlib
import re
import uuid
from datetime import datetime
from typing import Annotated, Any

import asyncpg
import msgspec
from litestar import Request, Response
from litestar.params import Parameter
from litestar.routes import HTTPRoute

from api.auth import Principal
from api.errors import ApiError
from api.schemas import AwareDateTime, is_utc_instant

IDEMPOTENCY_KEY_PATTERN = r"^[\x20-\x7e]{1,255}$"  # 1 to 255 printable ASCII characters (SPEC 6)
# A cursor is an 8-byte history position or a 16-byte wallet id in unpadded URL-safe base64.
CURSOR_PATTERNS: dict[type, str] = {int: r"^[A-Za-z0-9_-]{11}$", uuid.UUID: r"^[A-Za-z0-9_-]{22}$"}


class Caller:
    """This request's way into the ledger: the pool, and who calls (the token's sub, and the
    owner it is limited to, or None for a service token). Handlers without an Idempotency-Key
    (the reads, and PUT of a commission rule) take a Caller."""

    __slots__ = ("owner_id", "pool", "sub")

    def __init__(self, pool: asyncpg.Pool, principal: Principal) -> None:
        self.pool, self.sub, self.owner_id = pool, principal.sub, principal.owner_id


def provide_caller(request: Request[Principal, Any, Any]) -> Caller:
    return Caller(request.app.state.pool, request.user)  # the auth guard put the principal there


async def before_request(request: Request) -> Response | None:
    """Before every handler: answer OPTIONS, or check the body strictly."""
    if request.method == "OPTIONS":
        return allowed_methods(request)
    await strict_body(request)
    return None


def allowed_methods(request: Request) -> Response:
    """OPTIONS: 204 with Allow naming every method of the resource. Litestar's own OPTIONS
    handler names those of the route it was made with, and a route that gains a method (GET
    and POST /v1/wallets) is rebuilt without it learning so."""
    template = request.scope["path_template"]
    methods = next(
        route.methods
        for route in request.app.routes
        if isinstance(route, HTTPRoute) and route.path_format == template
    )
    return Response(None, status_code=204, headers={"Allow": ", ".join(sorted(methods))})


async def strict_body(request: Request) -> None:
    """Decode the body strictly (Litestar's own parse coerces "10" and 10.0 into 10; a payments
    API must refuse both). Errors become 400 invalid_request."""
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
            pattern=IDEMPOTENCY_KEY_PATTERN,
            description="1 to 255 printable ASCII characters; a retry with the same key and request "
            "returns the first response (Idempotent-Replayed: true).",
        ),
    ] = None,
) -> Write:
    """The Idempotency-Key header (Litestar checks its pattern) and a fingerprint of the request
    it must match."""
    key = idempotency_key
    if key is None:
        return Write(caller, None, None)
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
