"""Health and readiness probes (no authentication)."""

from __future__ import annotations

import asyncio

import asyncpg
from litestar import get
from litestar.datastructures import State

from api.errors import ApiError

READY_TIMEOUT_SECONDS = 2


@get("/healthz", operation_id="healthz", tags=["probes"], sync_to_thread=False)
def healthz() -> dict[str, str]:
    """The process is up."""
    return {"status": "ok"}


@get("/readyz", operation_id="readyz", tags=["probes"])
async def readyz(state: State) -> dict[str, str]:
    """The database answers a round trip."""
    try:
        async with asyncio.timeout(READY_TIMEOUT_SECONDS):
            await state.pool.fetchval("SELECT 1")
    except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError):
        raise ApiError(503, "unavailable", "the database does not answer") from None
    return {"status": "ready"}
