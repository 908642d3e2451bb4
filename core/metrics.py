"""Prometheus metric definitions beyond Litestar's per-request ones (README, "What to alert on")."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

MOVEMENTS = Counter(
    "wallet_money_movements",
    "Money movement requests by kind (deposit, withdrawal, transfer, cancel, hold, capture, void) and "
    "outcome (its status: posted, scheduled, canceled, active, voided; replayed; or the error code)",
    ["kind", "outcome"],
)

POOL_CONNECTIONS = Gauge(
    "wallet_db_pool_connections",
    "Database pool connections by state, summed over the server's processes",
    ["state"],
    multiprocess_mode="livesum",
)

# Scheduled deposits, as wallet.settlement_stats() sees them; every API process reports the same
# ledger-wide figures (take max() over processes and pods).
SETTLEMENT_OVERDUE = Gauge(
    "wallet_scheduled_deposits_overdue",
    "Scheduled deposits already due and not settled (should stay near 0)",
    multiprocess_mode="max",
)
SETTLEMENT_QUEUE_DEPTH = Gauge(
    "wallet_settlement_queue_depth",
    "Settlement jobs waiting or running",
    multiprocess_mode="max",
)
