"""The settlement suite: 1,000 delayed deposits due in the same second, one worker.

The deposits are scheduled through wallet.deposit (each enqueues its own settlement job),
all for the same available_at a few seconds ahead; one `wallet worker` process, started
beforehand and idle, settles them. Lag is posted_at - available_at of each deposit, read
from the ledger itself. Target: p99 lag <= 1 s.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import psycopg

from bench import BenchmarkFailed
from bench.sql_bench import BENCH_DIR, BUSY_LOAD, fresh_database, seed, server_url
from tests.support.processes import ServiceFailed, Worker, wait_until, wallet_worker

RESULTS_FILE = BENCH_DIR / "results" / "settlement.json"
DATABASE = "wallet_bench_settlement"
DEPOSITS = 1000
LEAD_SECONDS = 5  # the worker is up and idle before the deposits fall due
SETTLE_TIMEOUT_SECONDS = 120
P99_TARGET_MS = 1000


def main() -> None:
    load_before = os.getloadavg()[0]
    url = fresh_database(server_url(), DATABASE)
    seed(url)
    print(f"settlement bench: {DEPOSITS} deposits due in the same second, one worker")
    print(f"  load average before the run: {load_before:.2f}")
    if load_before >= BUSY_LOAD:
        print("  WARNING: the machine is busy with other work; the figures will be noisy")

    with tempfile.TemporaryDirectory(prefix="wallet-settlement-bench-") as work:
        worker = start_worker(url, Path(work))
        try:
            figures, violations = settle_deposits(url, worker)
        finally:
            worker.stop()

    report = {
        "deposits": DEPOSITS,
        "load_average_before": round(load_before, 2),
        **figures,
        "p99_target_ms": P99_TARGET_MS,
        "p99_target_met": figures["lag_p99_ms"] <= P99_TARGET_MS,
        "ledger_violations": violations,
    }
    print()
    print(
        f"  settled {figures['settled']} of {DEPOSITS}; {figures['settlements_per_second']:.0f} settlements/s"
    )
    print(
        f"  lag p50 {figures['lag_p50_ms']:.0f} ms, p99 {figures['lag_p99_ms']:.0f} ms, "
        f"max {figures['lag_max_ms']:.0f} ms  (target p99 <= {P99_TARGET_MS} ms: "
        f"{'met' if report['p99_target_met'] else 'MISSED'})"
    )
    print(f"  wallet.verify_ledger(): {violations} violation(s)")
    RESULTS_FILE.parent.mkdir(exist_ok=True)
    RESULTS_FILE.write_text(json.dumps(report, indent=2) + "\n")
    print(f"  saved {RESULTS_FILE.relative_to(BENCH_DIR.parent)}")
    if violations:
        raise BenchmarkFailed(f"wallet.verify_ledger() reports {violations} violation(s)")
    if figures["settled"] != DEPOSITS or figures["duplicates"]:
        raise BenchmarkFailed(f"settled {figures['settled']} of {DEPOSITS}, {figures['duplicates']} twice")


def start_worker(url: str, work_dir: Path) -> Worker:
    """One `wallet worker`, returned once it has registered (connected, idle, waiting for due
    jobs); WALLET_* settings of the caller's shell do not reach it."""
    worker = wallet_worker(url, log_path=work_dir / "worker.log", WALLET_LOG_LEVEL="WARNING")
    try:
        return worker.start()
    except ServiceFailed as error:
        raise BenchmarkFailed(f"wallet worker did not start: {error}") from None


def settle_deposits(url: str, worker: Worker) -> tuple[dict, int]:
    """Schedule DEPOSITS deposits due together, wait until the worker has settled them;
    the lag figures and the ledger's violations."""
    with psycopg.connect(url, autocommit=True) as connection:
        due_at = connection.execute("SELECT now() + make_interval(secs => %s)", (LEAD_SECONDS,)).fetchone()[0]
        connection.execute(
            """
            SELECT wallet.deposit('bench', NULL, NULL, NULL, wallet_id, 100000, NULL, NULL, %s)
            FROM bench_ids WHERE n BETWEEN 2 AND %s
            """,
            (due_at, DEPOSITS + 1),
        )
        wait_until_settled(connection, worker)
        figures = lag_figures(connection)
        violations = connection.execute("SELECT count(*) FROM wallet.verify_ledger()").fetchone()[0]
    return figures, violations


def wait_until_settled(connection: psycopg.Connection, worker: Worker) -> None:
    def waiting() -> int:
        return connection.execute(
            "SELECT count(*) FROM wallet.transactions WHERE status = 'scheduled'"
        ).fetchone()[0]

    try:
        wait_until(
            lambda: waiting() == 0,
            timeout=LEAD_SECONDS + SETTLE_TIMEOUT_SECONDS,
            what="every deposit settled",
            interval=0.5,
            watch=[worker],
        )
    except ServiceFailed as error:
        raise BenchmarkFailed(f"{waiting()} deposits still scheduled: {error}") from None


def lag_figures(connection: psycopg.Connection) -> dict:
    row = connection.execute(
        """
        WITH settled AS (
            SELECT t.posted_at, extract(epoch FROM t.posted_at - t.available_at) * 1000 AS lag_ms,
                   (SELECT count(*) FROM wallet.entries AS e
                    WHERE e.transaction_id = t.id AND e.wallet_id IS NOT NULL) AS wallet_entries
            FROM wallet.transactions AS t
            WHERE t.kind = 'deposit' AND t.available_at IS NOT NULL AND t.status = 'posted'
        )
        SELECT count(*),
               count(*) FILTER (WHERE wallet_entries <> 1),
               percentile_cont(0.5) WITHIN GROUP (ORDER BY lag_ms),
               percentile_cont(0.99) WITHIN GROUP (ORDER BY lag_ms),
               max(lag_ms),
               extract(epoch FROM max(posted_at) - min(posted_at))
        FROM settled
        """
    ).fetchone()
    settled, duplicates, p50, p99, lag_max, span_seconds = row
    return {
        "settled": settled,
        "duplicates": duplicates,
        "lag_p50_ms": round(float(p50), 1),
        "lag_p99_ms": round(float(p99), 1),
        "lag_max_ms": round(float(lag_max), 1),
        "settlements_per_second": round(settled / max(float(span_seconds), 0.001), 1),
    }
