"""Prometheus metrics beyond Litestar's per-request ones: money movements and the pool."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import asyncpg
from prometheus_client import REGISTRY, Counter
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from api.errors import LEDGER_ERRORS

MOVEMENTS = Counter(
    "wallet_money_movements",
    "Money movement requests by kind and outcome (posted, replayed, or the error code)",
    ["kind", "outcome"],
)


async def move_money(kind: str, pool: asyncpg.Pool, query: str, *args: Any) -> asyncpg.Record:
    """Run one money-movement function and count its outcome: posted, replayed or the error code."""
    try:
        record = await pool.fetchrow(query, *args)
    except asyncpg.PostgresError as error:
        MOVEMENTS.labels(kind, LEDGER_ERRORS.get(error.sqlstate or "", (0, "error"))[1]).inc()
        raise
    except Exception:
        MOVEMENTS.labels(kind, "error").inc()
        raise
    MOVEMENTS.labels(kind, "replayed" if record["replayed"] else record["status"]).inc()
    return record


class PoolCollector(Collector):
    """Connections of the asyncpg pool, read at scrape time."""

    def __init__(self) -> None:
        self.pool: asyncpg.Pool | None = None

    def collect(self) -> Iterable[GaugeMetricFamily]:
        if self.pool is None:
            return
        size, idle = self.pool.get_size(), self.pool.get_idle_size()
        gauge = GaugeMetricFamily("wallet_db_pool_connections", "Database pool connections", labels=["state"])
        gauge.add_metric(["in_use"], size - idle)
        gauge.add_metric(["idle"], idle)
        gauge.add_metric(["max"], self.pool.get_max_size())
        yield gauge


POOL_COLLECTOR = PoolCollector()
REGISTRY.register(POOL_COLLECTOR)
