"""What lives as long as the application: the database pool, and the pool gauges."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator

import asyncpg
from litestar import Litestar
from prometheus_client import multiprocess

from core.database import create_pool, database_url
from core.metrics import POOL_CONNECTIONS
from core.settings import Settings

POOL_REPORT_SECONDS = 1.0


def database_lifespan(settings: Settings):
    """The pool, in app.state.pool, open from start-up to shutdown."""

    @contextlib.asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        async with create_pool(settings, database_url(settings)) as pool:
            app.state.pool = pool
            reporter = asyncio.create_task(report_pool(pool, settings))
            try:
                yield
            finally:
                reporter.cancel()
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
