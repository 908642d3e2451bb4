"""What lives as long as the application: the database pool, and the pool gauges."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncIterator
from datetime import timedelta

import asyncpg
from litestar import Litestar
from prometheus_client import multiprocess

from core import ledger
from core.database import create_pool, database_url
from core.metrics import POOL_CONNECTIONS, SETTLEMENT_OVERDUE, SETTLEMENT_QUEUE_DEPTH
from core.settings import Settings

POOL_REPORT_SECONDS = 1.0
# How often each API process reads the settlement figures (one short read-only query).
SETTLEMENT_REPORT_SECONDS = 15.0
# settlement_stats counts outcomes over a window; only its live figures are exported here.
SETTLEMENT_WINDOW = timedelta(minutes=1)

logger = logging.getLogger("wallet.api")


def database_lifespan(settings: Settings):
    """The pool, in app.state.pool, open from start-up to shutdown."""

    @contextlib.asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        async with create_pool(settings, database_url(settings)) as pool:
            app.state.pool = pool
            reporters = [
                asyncio.create_task(report_pool(pool, settings)),
                asyncio.create_task(report_settlement(pool)),
            ]
            try:
                yield
            finally:
                for reporter in reporters:
                    reporter.cancel()
                for reporter in reporters:
                    with contextlib.suppress(asyncio.CancelledError):
                        await reporter

    return lifespan


async def report_pool(pool: asyncpg.Pool, settings: Settings) -> None:
    """Keep the pool gauges current, every POOL_REPORT_SECONDS. Gauges set by each process
    (rather than read at scrape time) are what a scrape sums when `wallet serve --workers N`
    runs several processes."""
    try:
        while True:
            size, idle = pool.get_size(), pool.get_idle_size()
            POOL_CONNECTIONS.labels("in_use").set(size - idle)
            POOL_CONNECTIONS.labels("idle").set(idle)
            POOL_CONNECTIONS.labels("max").set(pool.get_max_size())
            await asyncio.sleep(POOL_REPORT_SECONDS)
    finally:
        if settings.metrics_dir is not None:
            multiprocess.mark_process_dead(os.getpid())  # this process's gauges leave the sum


async def report_settlement(pool: asyncpg.Pool) -> None:
    """Keep the scheduled-deposit gauges current, every SETTLEMENT_REPORT_SECONDS; a failed read
    (the database away) leaves the last figures and is tried again."""
    while True:
        try:
            stats = await ledger.settlement_stats(pool, SETTLEMENT_WINDOW)
        except (TimeoutError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as error:
            logger.warning("settlement figures not read: %s", type(error).__name__)
        else:
            SETTLEMENT_OVERDUE.set(stats["overdue"])
            SETTLEMENT_QUEUE_DEPTH.set(stats["queue_depth"])
        await asyncio.sleep(SETTLEMENT_REPORT_SECONDS)
