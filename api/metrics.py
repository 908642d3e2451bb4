"""Prometheus metrics beyond Litestar's per-request ones: money movements and the pool."""

from __future__ import annotations

import asyncio
import os
from typing import Any

import asyncpg
from prometheus_client import Counter, Gauge, multiprocess

from api.errors import LEDGER_ERRORS
from api.plumbing import Write

MOVEMENTS = Counter(
    "wallet_money_movements",
    "Money movement requests by kind and outcome (posted, replayed, or the error code)",
    ["kind", "outcome"],
)


async def move_money(kind: str, write: Write, query: str, *args: Any) -> asyncpg.Record:
    """Run one money-movement function and count its outcome: posted, replayed or the error code.
    The query's first four parameters are write.ledger_args, then args."""
    try:
        record = await write.caller.pool.fetchrow(query, *write.ledger_args, *args)
    except asyncpg.PostgresError as error:
        MOVEMENTS.labels(kind, LEDGER_ERRORS.get(error.sqlstate or "", (0, "error"))[1]).inc()
        raise
    except Exception:
        MOVEMENTS.labels(kind, "error").inc()
        raise
    MOVEMENTS.labels(kind, "replayed" if record["replayed"] else record["status"]).inc()
    return record


POOL_CONNECTIONS = Gauge(
    "wallet_db_pool_connections",
    "Database pool connections by state, summed over the server's processes",
    ["state"],
    multiprocess_mode="livesum",
)
POOL_REPORT_SECONDS = 1.0


async def report_pool(pool: asyncpg.Pool) -> None:
    """Keep the pool gauges current, every POOL_REPORT_SECONDS; a task of the app's lifespan.
    Gauges set by each process (rather than read at scrape time) are what a scrape sums when
    `wallet serve --workers N` runs several processes."""
    try:
        while True:
            size, idle = pool.get_size(), pool.get_idle_size()
            POOL_CONNECTIONS.labels("in_use").set(size - idle)
            POOL_CONNECTIONS.labels("idle").set(idle)
            POOL_CONNECTIONS.labels("max").set(pool.get_max_size())
            await asyncio.sleep(POOL_REPORT_SECONDS)
    finally:
        if "PROMETHEUS_MULTIPROC_DIR" in os.environ:
            multiprocess.mark_process_dead(os.getpid())  # this process's gauges leave the sum
