"""The holds suite: 1,000 holds expiring in the same second, one worker.

The holds are placed through wallet.place_hold (each enqueues its own expiry job for its
expires_at), on 1,000 of the seed's wallets, all for the same expires_at a few seconds
ahead; one `wallet worker` process, started beforehand and idle, expires them. Lag is
closed_at - expires_at of each hold, read from the ledger itself. Target: p99 lag <= 1 s.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import psycopg

from bench import BenchmarkFailed
from bench.settlement_bench import start_worker
from bench.sql_bench import BENCH_DIR, BUSY_LOAD, fresh_database, seed, server_url
from tests.support.processes import ServiceFailed, Worker, wait_until

RESULTS_FILE = BENCH_DIR / "results" / "holds.json"
DATABASE = "wallet_bench_holds"
HOLDS = 1000
HOLD_AMOUNT = 100_000
LEAD_SECONDS = 5  # the worker is up and idle before the holds expire
EXPIRE_TIMEOUT_SECONDS = 120
P99_TARGET_MS = 1000


def main() -> None:
    load_before = os.getloadavg()[0]
    url = fresh_database(server_url(), DATABASE)
    seed(url)
    print(f"holds bench: {HOLDS} holds expiring in the same second, one worker")
    print(f"  load average before the run: {load_before:.2f}")
    if load_before >= BUSY_LOAD:
        print("  WARNING: the machine is busy with other work; the figures will be noisy")

    with tempfile.TemporaryDirectory(prefix="wallet-holds-bench-") as work:
        worker = start_worker(url, Path(work))
        try:
            figures, violations = expire_holds(url, worker)
        finally:
            worker.stop()

    report = {
        "holds": HOLDS,
        "load_average_before": round(load_before, 2),
        **figures,
        "p99_target_ms": P99_TARGET_MS,
        "p99_target_met": figures["lag_p99_ms"] <= P99_TARGET_MS,
        "ledger_violations": violations,
    }
    print()
    print(f"  expired {figures['expired']} of {HOLDS}; {figures['expiries_per_second']:.0f} expiries/s")
    print(
        f"  lag p50 {figures['lag_p50_ms']:.0f} ms, p99 {figures['lag_p99_ms']:.0f} ms, "
        f"max {figures['lag_max_ms']:.0f} ms  (target p99 <= {P99_TARGET_MS} ms: "
        f"{'met' if report['p99_target_met'] else 'MISSED'})"
    )
    print(f"  money still held: {figures['still_held']}; wallet.verify_ledger(): {violations} violation(s)")
    RESULTS_FILE.parent.mkdir(exist_ok=True)
    RESULTS_FILE.write_text(json.dumps(report, indent=2) + "\n")
    print(f"  saved {RESULTS_FILE.relative_to(BENCH_DIR.parent)}")
    if violations:
        raise BenchmarkFailed(f"wallet.verify_ledger() reports {violations} violation(s)")
    if figures["expired"] != HOLDS or figures["still_held"]:
        raise BenchmarkFailed(
            f"expired {figures['expired']} of {HOLDS}; {figures['still_held']} still held by the wallets"
        )


def expire_holds(url: str, worker: Worker) -> tuple[dict, int]:
    """Place HOLDS holds expiring together, wait until the worker has expired them; the lag
    figures and the ledger's violations."""
    with psycopg.connect(url, autocommit=True) as connection:
        expires_at = connection.execute(
            "SELECT now() + make_interval(secs => %s)", (LEAD_SECONDS,)
        ).fetchone()[0]
        connection.execute(
            """
            SELECT wallet.place_hold('bench', NULL, NULL, NULL, wallet_id, %s::bigint, %s::timestamptz,
                                     NULL::text, NULL::jsonb)
            FROM bench_ids WHERE n BETWEEN 2 AND %s
            """,
            (HOLD_AMOUNT, expires_at, HOLDS + 1),
        )
        wait_until_expired(connection, worker)
        figures = lag_figures(connection)
        violations = connection.execute("SELECT count(*) FROM wallet.verify_ledger()").fetchone()[0]
    return figures, violations


def wait_until_expired(connection: psycopg.Connection, worker: Worker) -> None:
    def active() -> int:
        return connection.execute("SELECT count(*) FROM wallet.holds WHERE status = 'active'").fetchone()[0]

    try:
        wait_until(
            lambda: active() == 0,
            timeout=LEAD_SECONDS + EXPIRE_TIMEOUT_SECONDS,
            what="every hold expired",
            interval=0.5,
            watch=[worker],
        )
    except ServiceFailed as error:
        raise BenchmarkFailed(f"{active()} holds still active: {error}") from None


def lag_figures(connection: psycopg.Connection) -> dict:
    row = connection.execute(
        """
        WITH expired AS (
            SELECT closed_at, extract(epoch FROM closed_at - expires_at) * 1000 AS lag_ms
            FROM wallet.holds
            WHERE status = 'expired'
        )
        SELECT count(*),
               percentile_cont(0.5) WITHIN GROUP (ORDER BY lag_ms),
               percentile_cont(0.99) WITHIN GROUP (ORDER BY lag_ms),
               max(lag_ms),
               extract(epoch FROM max(closed_at) - min(closed_at)),
               (SELECT coalesce(sum(held), 0) FROM wallet.wallets)
        FROM expired
        """
    ).fetchone()
    expired, p50, p99, lag_max, span_seconds, still_held = row
    return {
        "expired": expired,
        "lag_p50_ms": round(float(p50), 1),
        "lag_p99_ms": round(float(p99), 1),
        "lag_max_ms": round(float(lag_max), 1),
        # From the first expiry to the last: the worker's pace once the holds are due.
        "expiries_per_second": round(expired / max(float(span_seconds), 0.001), 1),
        "still_held": int(still_held),
    }
