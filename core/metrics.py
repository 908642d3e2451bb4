"""Prometheus metric definitions beyond Litestar's per-request ones (README, "What to alert on")."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

MOVEMENTS = Counter(
    "wallet_money_movements",
    "Money movement requests by kind and outcome (posted, scheduled, canceled, replayed, or the error code)",
    ["kind", "outcome"],
)

POOL_CONNECTIONS = Gauge(
    "wallet_db_pool_connections",
    "Database pool connections by state, summed over the server's processes",
    ["state"],
    multiprocess_mode="livesum",
)
