"""The dependencies handlers take: a Caller (the pool and who calls) for reads, a Write (the
caller, and the Actor the ledger's writing functions take) for POSTs."""

from __future__ import annotations

import hashlib
from typing import Annotated, Any

import asyncpg
from litestar import Request
from litestar.params import HeaderParameter

from api.auth import Principal
from core.ledger import Actor

IDEMPOTENCY_KEY_PATTERN = r"^[\x20-\x7e]{1,255}$"  # 1 to 255 printable ASCII characters (SPEC 6)


class Caller:
    """This request's way into the ledger: the pool, and who calls (the token's sub, and the
    owner it is limited to, or None for a service token). Handlers without an Idempotency-Key
    (the reads, and PUT of a commission rule) take a Caller."""

    __slots__ = ("owner_id", "pool", "sub")

    def __init__(self, pool: asyncpg.Pool, principal: Principal) -> None:
        self.pool, self.sub, self.owner_id = pool, principal.sub, principal.owner_id


def provide_caller(request: Request[Principal, Any, Any]) -> Caller:
    return Caller(request.app.state.pool, request.user)  # the auth guard put the principal there


class Write:
    """A POST: its caller, and the Actor the ledger takes: who calls, the Idempotency-Key and a
    fingerprint of the request the key must match (SPEC 6). Handlers that write take a Write;
    one dependency per handler, because Litestar resolves sibling dependencies in a task group
    of their own, which cost a sixth of the API's CPU per transfer."""

    __slots__ = ("actor", "caller")

    def __init__(self, caller: Caller, key: str | None, fingerprint: str | None) -> None:
        self.caller = caller
        self.actor = Actor(caller.sub, key, fingerprint, caller.owner_id)

    @property
    def pool(self) -> asyncpg.Pool:
        return self.caller.pool


async def provide_write(
    request: Request,
    caller: Caller,
    idempotency_key: Annotated[
        str | None,
        HeaderParameter(
            name="Idempotency-Key",
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
