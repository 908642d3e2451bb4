"""The history suite: wallet.wallet_history on a ledger of a million entries.

The ledger is seeded by bench/ledger_seed.py (real movements, wallet.verify_ledger() empty)
into its own database. Each case is one filter and one kind of page of the hot wallet's
history: the first page, or a page after a cursor deep in the filtered history. A case
makes 200 calls (WALLET_BENCH_HISTORY_CALLS), each with its own random bounds and cursor
drawn from the wallet's real items, on one connection with a prepared statement, after a
warm-up; the latency of each call (sent, run, all rows fetched) gives p50 and p99, and
EXPLAIN (ANALYZE, BUFFERS) of 20 of them the most buffers a page read. Target: p99 < 20 ms
in every case.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import random
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import psycopg

from bench import BenchmarkFailed
from bench.ledger_seed import SeededLedger, seed_ledger, seeded_ledger
from bench.sql_bench import BENCH_DIR, BUSY_LOAD, fresh_database, server_url
from core.database import with_database
from core.migrate import migrate

RESULTS_FILE = BENCH_DIR / "results" / "history.json"
DATABASE = "wallet_bench_history"
PAGE = 51  # the API's default page of 50, plus the one row it asks for to see a next page
WARMUP_CALLS = 20
BUFFERED_CALLS = 20
P99_TARGET_MS = 20.0
EXPLAIN = "EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) "
CALL = (
    "SELECT * FROM wallet.wallet_history(NULL, %s::uuid, %s::integer, %s::bigint, %s::text,"
    " %s::timestamptz, %s::timestamptz)"
)


@dataclass(frozen=True)
class Item:
    seq: int
    kind: str
    created_at: datetime.datetime


@dataclass(frozen=True)
class Arguments:
    before_seq: int | None
    kind: str | None
    since: datetime.datetime | None
    until: datetime.datetime | None


@dataclass(frozen=True)
class Measurement:
    filter: str
    page: str
    calls: int
    mean_rows: float
    max_buffers: int
    p50_ms: float
    p99_ms: float
    met: bool


# A filter draws its kind and time bounds from the times of the wallet's items (oldest
# first) and a random source.
Filter = Callable[[list[datetime.datetime], random.Random], tuple[str | None, Any, Any]]


def _at(times: list[datetime.datetime], rng: random.Random, low: float, high: float) -> datetime.datetime:
    """The time of an item between fractions low and high of the history, counted in items
    from the oldest (0) to the newest (1)."""
    return times[round((len(times) - 1) * rng.uniform(low, high))]


def _window(
    times: list[datetime.datetime], rng: random.Random
) -> tuple[datetime.datetime, datetime.datetime]:
    """1% to 20% of the history, somewhere in it."""
    start = rng.uniform(0.0, 0.8)
    return _at(times, rng, start, start), _at(times, rng, start + 0.01, start + 0.2)


FILTERS: dict[str, Filter] = {
    "none": lambda times, rng: (None, None, None),
    "kind=deposit": lambda times, rng: ("deposit", None, None),
    "kind=withdrawal": lambda times, rng: ("withdrawal", None, None),
    "kind=transfer": lambda times, rng: ("transfer", None, None),
    "since": lambda times, rng: (None, _at(times, rng, 0.0, 0.9), None),
    "until": lambda times, rng: (None, None, _at(times, rng, 0.1, 1.0)),
    "until, oldest 5%": lambda times, rng: (None, None, _at(times, rng, 0.0, 0.05)),
    "since+until": lambda times, rng: (None, *_window(times, rng)),
    "kind=withdrawal+since": lambda times, rng: ("withdrawal", _at(times, rng, 0.0, 0.9), None),
    "kind=withdrawal+until": lambda times, rng: ("withdrawal", None, _at(times, rng, 0.1, 1.0)),
    "kind=withdrawal+since+until": lambda times, rng: ("withdrawal", *_window(times, rng)),
}


def main() -> None:
    calls = int(os.environ.get("WALLET_BENCH_HISTORY_CALLS") or 200)
    if not 10 <= calls <= 100_000:
        raise BenchmarkFailed(f"WALLET_BENCH_HISTORY_CALLS must be 10 to 100000, not {calls}")
    load_before = os.getloadavg()[0]
    print(f"history bench: wallet.wallet_history, pages of {PAGE}, {calls} calls a case")
    print(f"  load average before the run: {load_before:.2f}")
    if load_before >= BUSY_LOAD:
        print("  WARNING: the machine is busy with other work; the figures will be noisy")
    url, ledger, reused = seeded_database()

    with psycopg.connect(url, autocommit=True) as connection:
        verify_seconds = None
        if not reused:  # the suite only reads: a ledger verified when seeded stays so
            started = time.monotonic()
            violations = connection.execute("SELECT count(*) FROM wallet.verify_ledger()").fetchone()[0]
            verify_seconds = round(time.monotonic() - started, 1)
            print(f"  wallet.verify_ledger(): {violations} violation(s) in {verify_seconds:.1f} s")
            if violations:
                raise BenchmarkFailed(f"wallet.verify_ledger() reports {violations} violation(s) on the seed")
        items = hot_wallet_items(connection, ledger.hot_wallet_id)
        measurements = [
            measure(connection, ledger.hot_wallet_id, items, name, draw, page, calls)
            for name, draw in FILTERS.items()
            for page in ("first", "deep")
        ]
        audit = measure_audits(connection, ledger.hot_wallet_id)

    report = {
        "machine": {
            "cores": os.cpu_count(),
            "platform": platform.platform(),
            "load_average_before": round(load_before, 2),
        },
        "ledger": asdict(ledger),
        "reused_ledger": reused,
        "verify_ledger_seconds": verify_seconds,
        "audits": audit,
        "page": PAGE,
        "calls": calls,
        "p99_target_ms": P99_TARGET_MS,
        "cases": [asdict(measurement) for measurement in measurements],
    }
    print_report(report)
    RESULTS_FILE.parent.mkdir(exist_ok=True)
    RESULTS_FILE.write_text(json.dumps(report, indent=2) + "\n")
    print(f"  saved {RESULTS_FILE.relative_to(BENCH_DIR.parent)}")


# A day of activity after a checkpoint, for wallet verify --since (issue 9, item 5).
AUDIT_TRANSFERS = 10_000
AUDIT_WALLETS = 2_000


def measure_audits(connection: psycopg.Connection, hot_wallet_id: str) -> dict:
    """Seconds of a full wallet.verify_ledger(), of a checkpoint, and of
    wallet.verify_ledger_since() after AUDIT_TRANSFERS transfers among AUDIT_WALLETS wallets
    (never the hot one, whose history the cases above read)."""

    def timed(sql: str, *params) -> tuple[float, object]:
        started = time.monotonic()
        value = connection.execute(sql, params).fetchone()[0]
        return round(time.monotonic() - started, 2), value

    full, violations = timed("SELECT count(*) FROM wallet.verify_ledger()")
    checkpoint, _ = timed("SELECT wallet.ledger_checkpoint()")
    since_at = connection.execute("SELECT max(created_at) FROM wallet.checkpoints").fetchone()[0]
    connection.execute(
        f"""
        DO $$
        DECLARE
            v_wallets uuid[] := (SELECT array_agg(id) FROM (SELECT id FROM wallet.wallets
                                 WHERE id <> '{hot_wallet_id}' AND balance > 10000000
                                 LIMIT {AUDIT_WALLETS}) AS w);
            v_from int;
        BEGIN
            FOR i IN 1..{AUDIT_TRANSFERS} LOOP
                v_from := 1 + (random() * (cardinality(v_wallets) - 1))::int;
                PERFORM wallet.transfer('bench', NULL, NULL, NULL, v_wallets[v_from],
                                        v_wallets[1 + v_from % cardinality(v_wallets)], 1000);
            END LOOP;
        END $$
        """
    )
    since, since_violations = timed("SELECT count(*) FROM wallet.verify_ledger_since(%s)", since_at)
    print(
        f"  audits: verify_ledger() {full} s; ledger_checkpoint() {checkpoint} s; verify_ledger_since()"
        f" after {AUDIT_TRANSFERS:,} transfers among {AUDIT_WALLETS:,} wallets {since} s"
    )
    if violations or since_violations:
        raise BenchmarkFailed(f"the audits report {violations} and {since_violations} violation(s)")
    return {
        "verify_ledger_seconds": full,
        "ledger_checkpoint_seconds": checkpoint,
        "verify_ledger_since_seconds": since,
        "transfers_since_checkpoint": AUDIT_TRANSFERS,
    }


def seeded_database() -> tuple[str, SeededLedger, bool]:
    """A fresh database with a seeded ledger; with WALLET_BENCH_HISTORY_REUSE=1, the one a
    previous run seeded (migrated again, so it runs today's sql/), when it is complete."""
    server = server_url()
    if os.environ.get("WALLET_BENCH_HISTORY_REUSE") == "1":
        with psycopg.connect(server, autocommit=True) as connection:
            exists = connection.execute(
                "SELECT 1 FROM pg_database WHERE datname = %s", (DATABASE,)
            ).fetchone()
        url = with_database(server, DATABASE)
        if exists and (ledger := seeded_ledger(url)):
            migrate(url)
            print(f"  reusing the ledger seeded before in {DATABASE}")
            return url, ledger, True
    url = fresh_database(server, DATABASE)
    return url, seed_ledger(url), False


def hot_wallet_items(connection: psycopg.Connection, wallet_id: str) -> list[Item]:
    """Every item of the wallet's history, newest first: what cursors and bounds are drawn from."""
    found = connection.execute(
        """
        SELECT id, kind, created_at FROM wallet.entries WHERE wallet_id = %(wallet)s
        UNION ALL
        SELECT history_seq, kind, created_at FROM wallet.transactions
        WHERE wallet_id = %(wallet)s AND status <> 'posted'
        ORDER BY 1 DESC
        """,
        {"wallet": wallet_id},
    ).fetchall()
    return [Item(*row) for row in found]


def draw_arguments(
    items: list[Item], times: list[datetime.datetime], draw: Filter, page: str, rng: random.Random
) -> Arguments:
    """One call's arguments: the filter's bounds, and for a deep page the seq of an item
    between half and 95% of the way down the filtered history (the cursor a client holds
    after paging that far)."""
    kind, since, until = draw(times, rng)
    if page == "first":
        return Arguments(None, kind, since, until)
    matching = [
        item
        for item in items
        if (kind is None or item.kind == kind)
        and (since is None or item.created_at >= since)
        and (until is None or item.created_at < until)
    ]
    if len(matching) < 2 * PAGE:
        return draw_arguments(items, times, draw, page, rng)  # too short to have a deep page
    cursor = matching[int(len(matching) * rng.uniform(0.5, 0.95))]
    return Arguments(cursor.seq, kind, since, until)


def measure(
    connection: psycopg.Connection,
    wallet_id: str,
    items: list[Item],
    name: str,
    draw: Filter,
    page: str,
    calls: int,
) -> Measurement:
    rng = random.Random(f"{name}/{page}")
    times = sorted(item.created_at for item in items)
    arguments = [draw_arguments(items, times, draw, page, rng) for _ in range(WARMUP_CALLS + calls)]
    latencies_ns, rows = [], 0
    with connection.cursor() as cursor:
        for number, call in enumerate(arguments):
            parameters = (wallet_id, PAGE, call.before_seq, call.kind, call.since, call.until)
            started = time.perf_counter_ns()
            found = cursor.execute(CALL, parameters, prepare=True).fetchall()
            elapsed = time.perf_counter_ns() - started
            if number >= WARMUP_CALLS:
                latencies_ns.append(elapsed)
                rows += len(found)
        # Buffers do not depend on the machine's load: the most that BUFFERED_CALLS calls read.
        buffers = 0
        for call in arguments[WARMUP_CALLS : WARMUP_CALLS + BUFFERED_CALLS]:
            parameters = (wallet_id, PAGE, call.before_seq, call.kind, call.since, call.until)
            plan = cursor.execute(EXPLAIN + CALL, parameters).fetchone()[0][0]["Plan"]
            buffers = max(buffers, plan["Shared Hit Blocks"] + plan["Shared Read Blocks"])
    cuts = statistics.quantiles(latencies_ns, n=100, method="inclusive")
    p50_ms, p99_ms = cuts[49] / 1e6, cuts[98] / 1e6
    return Measurement(
        filter=name,
        page=page,
        calls=calls,
        mean_rows=round(rows / calls, 1),
        max_buffers=buffers,
        p50_ms=round(p50_ms, 3),
        p99_ms=round(p99_ms, 3),
        met=p99_ms < P99_TARGET_MS,
    )


def print_report(report: dict) -> None:
    ledger = report["ledger"]
    print()
    print(
        f"  ledger: {ledger['entries']:,} entries, {ledger['wallets']:,} wallets; hot wallet"
        f" {ledger['hot_wallet_entries']:,} entries + {ledger['hot_wallet_unposted']:,} unposted deposits;"
        f" seeded in {ledger['seconds']:.0f} s"
    )
    print(
        f"  {'filter':<28} {'page':<6} {'rows':>5} {'buffers':>8} {'p50 ms':>8} {'p99 ms':>8}"
        f"   target p99 < {P99_TARGET_MS:g} ms"
    )
    for row in report["cases"]:
        verdict = "met" if row["met"] else "MISSED"
        print(
            f"  {row['filter']:<28} {row['page']:<6} {row['mean_rows']:>5.0f} {row['max_buffers']:>8}"
            f" {row['p50_ms']:>8.2f} {row['p99_ms']:>8.2f}   {verdict}"
        )
