"""The SQL suite: pgbench runs the ledger functions and, as the ceiling, a bare UPDATE.

Each scenario is a pgbench script in bench/: a warm-up run that is thrown away, then a
measured run whose per-transaction log (-l) gives p50 and p99. Any failed or aborted
transaction, or any ledger violation afterwards, fails the suite.
"""

from __future__ import annotations

import importlib.util
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import psycopg

from bench import BenchmarkFailed
from core.database import start_embedded, with_database
from core.migrate import migrate
from core.settings import normalize_database_url

BENCH_DIR = Path(__file__).resolve().parent
DATA_DIR = BENCH_DIR / ".data"
RESULTS_FILE = BENCH_DIR / "results" / "sql.json"
DATABASE = "wallet_bench"

CLIENTS = 8
THREADS = 2
MAX_SECONDS = 3600
BUSY_LOAD = 0.5  # 1-minute load average above which other work skews the figures
DURABLE_SETTINGS = {"fsync": "on", "synchronous_commit": "on"}
SHOWN_SETTINGS = (*DURABLE_SETTINGS, "full_page_writes", "wal_sync_method", "shared_buffers")


@dataclass(frozen=True)
class Scenario:
    key: str
    title: str
    script: str
    target: float | None  # minimum tx/s as a fraction of the ceiling's; None: no target


SCENARIOS = (
    Scenario("a", "ceiling: bare UPDATE", "a_ceiling.sql", None),
    Scenario("a1", "hot row: bare UPDATE, one row", "a1_hot_row.sql", None),
    Scenario("b", "transfer, fee, random wallets", "b_transfer.sql", 0.4),
    Scenario("c", "deposit, one hot wallet", "c_hot_deposit.sql", 0.25),
    Scenario("d", "withdrawal, one hot wallet", "d_hot_withdraw.sql", None),
)
CEILING = SCENARIOS[0]


@dataclass(frozen=True)
class Measurement:
    key: str
    title: str
    transactions: int
    tps: float
    p50_ms: float
    p99_ms: float


def main() -> None:
    seconds = seconds_from_env("WALLET_BENCH_SECONDS", 15)
    warmup_seconds = seconds_from_env("WALLET_BENCH_WARMUP_SECONDS", 3)
    pgbench = pgbench_path()
    version = subprocess.run([pgbench, "--version"], capture_output=True, text=True).stdout
    load_before = os.getloadavg()[0]
    url = fresh_database(server_url())
    settings = durable_settings(url)
    print(f"sql bench: {version.strip()}, {os.cpu_count()} cores, {CLIENTS} clients")
    print("  " + ", ".join(f"{name}={value}" for name, value in settings.items()))
    print(f"  load average before the run: {load_before:.2f}")
    if load_before >= BUSY_LOAD:
        print("  WARNING: the machine is busy with other work; the figures will be noisy")
    seed(url)

    measurements = []
    for scenario in SCENARIOS:
        print(f"  {scenario.key}) {scenario.title}: {warmup_seconds} s warm-up, {seconds} s run")
        measurements.append(run_scenario(pgbench, url, scenario, warmup_seconds, seconds))
    with psycopg.connect(url) as connection:
        violations = connection.execute("SELECT count(*) FROM wallet.verify_ledger()").fetchone()[0]

    report = {
        "machine": {
            "cores": os.cpu_count(),
            "platform": platform.platform(),
            "load_average_before": round(load_before, 2),
        },
        "server": settings,
        "pgbench": version.strip(),
        "clients": CLIENTS,
        "threads": THREADS,
        "warmup_seconds": warmup_seconds,
        "seconds": seconds,
        "scenarios": [asdict(measurement) for measurement in measurements],
        "ratios": ratios(measurements),
        "ledger_violations": violations,
    }
    print_report(report)
    RESULTS_FILE.parent.mkdir(exist_ok=True)
    RESULTS_FILE.write_text(json.dumps(report, indent=2) + "\n")
    print(f"  saved {RESULTS_FILE.relative_to(BENCH_DIR.parent)}")
    if violations:
        raise BenchmarkFailed(f"wallet.verify_ledger() reports {violations} violation(s)")


def seconds_from_env(name: str, default: int) -> int:
    value = int(os.environ.get(name) or default)
    if not 1 <= value <= MAX_SECONDS:
        raise BenchmarkFailed(f"{name} must be 1 to {MAX_SECONDS} seconds, not {value}")
    return value


def server_url() -> str:
    """WALLET_BENCH_DATABASE_URL's server, or a dedicated embedded one under bench/.data/."""
    url = os.environ.get("WALLET_BENCH_DATABASE_URL", "").strip()
    return normalize_database_url(url) if url else start_embedded(DATA_DIR)


def pgbench_path() -> str:
    """pgserver's pgbench (the server's major version), else the one on PATH."""
    spec = importlib.util.find_spec("pgserver")
    if spec and spec.origin:
        bundled = Path(spec.origin).parent / "pginstall" / "bin" / "pgbench"
        if bundled.exists():
            return str(bundled)
    found = shutil.which("pgbench")
    if not found:
        raise BenchmarkFailed("pgbench not found: install pgserver or a PostgreSQL client")
    return found


def fresh_database(server: str, database: str = DATABASE) -> str:
    """A new, migrated database; each suite has its own, so one never drops another's."""
    with psycopg.connect(server, autocommit=True) as connection:
        connection.execute(f"DROP DATABASE IF EXISTS {database} WITH (FORCE)")
        connection.execute(f"CREATE DATABASE {database}")
    url = with_database(server, database)
    migrate(url)
    return url


def durable_settings(url: str) -> dict[str, str]:
    """The settings pgbench's sessions will run with; commits must reach the disk."""
    with psycopg.connect(url) as connection:
        settings = {"server_version": connection.execute("SHOW server_version").fetchone()[0]}
        for name in SHOWN_SETTINGS:
            settings[name] = connection.execute(f"SHOW {name}").fetchone()[0]
    for name, expected in DURABLE_SETTINGS.items():
        if settings[name] != expected:
            raise BenchmarkFailed(f"{name} = {settings[name]}: the benchmark needs durable commits")
    return settings


def seed(url: str) -> None:
    with psycopg.connect(url, autocommit=True) as connection:
        connection.execute((BENCH_DIR / "seed.sql").read_text())
        # Settle the seed: no dead rows, hint bits set, statistics fresh, dirty pages flushed.
        connection.execute("VACUUM (ANALYZE)")
        connection.execute("CHECKPOINT")


def run_scenario(
    pgbench: str, url: str, scenario: Scenario, warmup_seconds: int, seconds: int
) -> Measurement:
    with psycopg.connect(url, autocommit=True) as connection:
        connection.execute("CHECKPOINT")  # every scenario starts from the same point
    run_pgbench(pgbench, url, scenario, warmup_seconds)
    with tempfile.TemporaryDirectory(prefix="wallet-pgbench-") as log_dir:
        prefix = Path(log_dir) / scenario.key
        output = run_pgbench(pgbench, url, scenario, seconds, "-l", f"--log-prefix={prefix}")
        latencies_us = read_latencies(Path(log_dir), scenario)
    tps = float(re.search(r"^tps = ([\d.]+) \(without initial", output, re.M).group(1))
    p50_us, p99_us = percentiles(latencies_us)
    return Measurement(
        key=scenario.key,
        title=scenario.title,
        transactions=len(latencies_us),
        tps=round(tps, 1),
        p50_ms=round(p50_us / 1000, 3),
        p99_ms=round(p99_us / 1000, 3),
    )


def run_pgbench(pgbench: str, url: str, scenario: Scenario, seconds: int, *options: str) -> str:
    """One pgbench run; returns its report, or raises when any transaction did not succeed."""
    command = [pgbench, "-n", "-M", "prepared", "-c", str(CLIENTS), "-j", str(THREADS)]
    command += ["-T", str(seconds), "-f", str(BENCH_DIR / scenario.script), *options, url]
    done = subprocess.run(command, capture_output=True, text=True)
    failed = re.search(r"^number of failed transactions: (\d+)", done.stdout, re.M)
    if done.returncode != 0 or failed is None or failed.group(1) != "0":
        # pgbench aborts a client on any SQL error and exits non-zero; stderr says why.
        raise BenchmarkFailed(
            f"scenario {scenario.key} ({scenario.script}) did not run clean "
            f"(exit {done.returncode}):\n{done.stdout[-2000:]}{done.stderr[-2000:]}"
        )
    return done.stdout


def read_latencies(log_dir: Path, scenario: Scenario) -> list[int]:
    """Latency (µs) of every transaction in the per-thread logs of one run.

    A line is `client transaction latency_us script epoch_s epoch_us`; a failed
    transaction has a word instead of a latency, and fails the run.
    """
    latencies = []
    for log in log_dir.glob(f"{scenario.key}.*"):
        for line in log.read_text().splitlines():
            latency = line.split()[2]
            if not latency.isdigit():
                raise BenchmarkFailed(f"scenario {scenario.key}: a transaction {latency}: {line}")
            latencies.append(int(latency))
    if not latencies:
        raise BenchmarkFailed(f"scenario {scenario.key}: pgbench logged no transactions")
    return latencies


def percentiles(values: list[int]) -> tuple[float, float]:
    cuts = statistics.quantiles(values, n=100, method="inclusive")
    return cuts[49], cuts[98]


def ratios(measurements: list[Measurement]) -> dict[str, dict]:
    """Each scenario's tx/s over the ceiling's, and whether it meets its target."""
    result = {}
    for scenario, measurement in zip(SCENARIOS[1:], measurements[1:], strict=True):
        ratio = measurement.tps / measurements[0].tps
        result[f"{scenario.key}/{CEILING.key}"] = {
            "ratio": round(ratio, 3),
            "target": scenario.target,
            "met": None if scenario.target is None else ratio >= scenario.target,
        }
    return result


def print_report(report: dict) -> None:
    print()
    print(f"  {'scenario':<34} {'tx/s':>9} {'p50 ms':>8} {'p99 ms':>8}")
    for row in report["scenarios"]:
        name = f"{row['key']}) {row['title']}"
        print(f"  {name:<34} {row['tps']:>9.0f} {row['p50_ms']:>8.2f} {row['p99_ms']:>8.2f}")
    print()
    print(f"  {'ratio':<6} {'tx/s':>6}   target")
    for name, ratio in report["ratios"].items():
        if ratio["target"] is None:
            verdict = "(none)"
        else:
            verdict = f">= {ratio['target']:.2f} {'met' if ratio['met'] else 'MISSED'}"
        print(f"  {name:<6} {ratio['ratio']:>6.2f}   {verdict}")
    violations = report["ledger_violations"]
    print()
    print(f"  wallet.verify_ledger(): {violations} violation(s)")
