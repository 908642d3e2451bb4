"""The HTTP suite: wrk drives the API server, one process, over keep-alive connections.

The database server and seed are the SQL suite's; the API server is `wallet serve`
(uvicorn) started as its own process, and wrk (bench/http/*.lua) loads it from another.
Each scenario gets a warm-up run that is thrown away, then a measured run. Any response
that is not 2xx or is a replay, any socket error or timeout, or any ledger violation
afterwards fails the suite. Throughput is compared with the SQL suite's figures in
bench/results/sql.json; granian, when installed, is compared with uvicorn.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import os
import platform
import resource
import secrets
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import psycopg

from api.auth import mint_token
from bench import BenchmarkFailed, sql_bench
from tests.support.processes import Server, ServiceFailed, free_port, service_environment

BENCH_DIR = sql_bench.BENCH_DIR
REPOSITORY = BENCH_DIR.parent  # the server runs here, so it imports this repository's api/
SCRIPTS_DIR = BENCH_DIR / "http"
RESULTS_FILE = BENCH_DIR / "results" / "http.json"
# Its own database on the SQL suite's server: another suite started meanwhile drops and
# recreates wallet_bench, which would fail this one halfway.
DATABASE = "wallet_bench_http"

HOST = "127.0.0.1"
CONNECTIONS = 32  # keep-alive connections, twice the pool: requests queue for a connection as in production
WRK_THREADS = 2
WRK_TIMEOUT = "10s"  # a request slower than this counts as an error and fails the run
POOL_MAX_SIZE = 16
LOG_LEVEL = "WARNING"  # no access line per request; the INFO run measures what one costs
SCOPES = ["deposits:write", "withdrawals:write", "transfers:write"]
# The suite's own runs lift the 1-minute load average to a few times the core count (PostgreSQL
# sessions waiting on fsync count too), so before a run only a load above this means other work.
BUSY_RUN_LOAD = 3 * (os.cpu_count() or 1)
# During a run, CPU used by processes other than the server, its database sessions and wrk,
# as a share of the machine, above which the run's figures are noise.
OTHER_WORK_SHARE = 0.25
READY_SECONDS = 60
STOP_SECONDS = 30
LOG_TAIL_CHARS = 3000


@dataclass(frozen=True)
class Scenario:
    key: str
    title: str
    script: str
    sql_key: str | None  # the SQL suite's scenario doing the same ledger call; None: no database
    target: float | None  # minimum req/s as a fraction of that scenario's tx/s; None: no target


SCENARIOS = {
    scenario.key: scenario
    for scenario in (
        Scenario("a", "ceiling: GET /healthz, no database", "healthz.lua", None, None),
        Scenario("b", "transfer, fee, random wallets", "transfer.lua", "b", 0.5),
        Scenario("c", "deposit, one hot wallet", "deposit.lua", "c", None),
        Scenario("d", "withdrawal, one hot wallet", "withdraw.lua", "d", None),
    )
}


@dataclass(frozen=True)
class ServerRun:
    """One server process and the scenarios run against it."""

    server: str  # uvicorn (`wallet serve`) or granian
    log_level: str
    scenario_keys: tuple[str, ...]

    @property
    def name(self) -> str:
        return f"{self.server} {self.log_level}"


MAIN_RUN = ServerRun("uvicorn", LOG_LEVEL, ("a", "b", "c", "d"))
ACCESS_LOG_RUN = ServerRun("uvicorn", "INFO", ("b",))
# Not a dependency of the project: compared with uvicorn when it is installed.
GRANIAN_RUN = ServerRun("granian", LOG_LEVEL, ("a", "b"))


@dataclass(frozen=True)
class Load:
    """What every wrk run of the suite shares."""

    wrk: str
    token: str
    ids_file: Path  # the seeded wallet ids, one a line: bench/http/common.lua reads it
    warmup_seconds: int
    seconds: int


@dataclass(frozen=True)
class RunningServer:
    run: ServerRun
    base_url: str
    log_path: Path
    pid: int  # its process group's too: granian's workers are in it


@dataclass(frozen=True)
class Measurement:
    server: str
    log_level: str
    key: str
    title: str
    requests: int
    rps: float
    p50_ms: float
    p99_ms: float
    max_ms: float
    server_cpu_ms: float | None  # CPU time per request of the server's processes; None: no /proc
    postgres_cpu_ms: float | None  # the same for the database sessions serving it
    other_work_share: float | None  # CPU used meanwhile by anything else, as a share of the machine
    statuses: dict[str, int]
    load_average_before: float


def main() -> None:
    seconds = sql_bench.seconds_from_env("WALLET_BENCH_SECONDS", 15)
    warmup_seconds = sql_bench.seconds_from_env("WALLET_BENCH_WARMUP_SECONDS", 3)
    wrk = shutil.which("wrk")
    if wrk is None:
        raise BenchmarkFailed("wrk not found: install it (apt-get install wrk)")
    wrk_version = subprocess.run([wrk, "-v"], capture_output=True, text=True).stdout.splitlines()[0]
    sql_report = sql_figures()
    versions = server_versions()
    runs = [MAIN_RUN, ACCESS_LOG_RUN, *([GRANIAN_RUN] if "granian" in versions else [])]

    load_before = os.getloadavg()[0]
    url = sql_bench.fresh_database(sql_bench.server_url(), DATABASE)
    settings = sql_bench.durable_settings(url)
    print(f"http bench: {wrk_version}, {os.cpu_count()} cores, {CONNECTIONS} connections")
    print("  " + ", ".join(f"{name}={value}" for name, value in settings.items()))
    print(f"  servers: {', '.join(f'{name} {version}' for name, version in versions.items())}")
    print(f"  load average before the run: {load_before:.2f}")
    if load_before >= sql_bench.BUSY_LOAD:
        print("  WARNING: the machine is busy with other work; the figures will be noisy")
    if GRANIAN_RUN not in runs:
        print("  granian is not installed: the uvicorn/granian comparison is skipped")
    sql_bench.seed(url)

    measurements = []
    with tempfile.TemporaryDirectory(prefix="wallet-http-bench-") as work:
        work_dir = Path(work)
        secret = secrets.token_urlsafe(48)
        load = Load(
            wrk=wrk,
            token=mint_token(secret, sub="bench", scopes=SCOPES, ttl_seconds=24 * 3600),
            ids_file=write_wallet_ids(url, work_dir / "wallet-ids.txt"),
            warmup_seconds=warmup_seconds,
            seconds=seconds,
        )
        for run in runs:
            with running_server(run, url, secret, work_dir) as server:
                for key in run.scenario_keys:
                    measurements.append(measure(load, server, SCENARIOS[key], url))
    with psycopg.connect(url) as connection:
        violations = connection.execute("SELECT count(*) FROM wallet.verify_ledger()").fetchone()[0]

    report = {
        "machine": {
            "cores": os.cpu_count(),
            "platform": platform.platform(),
            "load_average_before": round(load_before, 2),
        },
        "database": settings,
        "servers": versions,
        "wrk": wrk_version,
        "connections": CONNECTIONS,
        "wrk_threads": WRK_THREADS,
        "pool_max_size": POOL_MAX_SIZE,
        "warmup_seconds": warmup_seconds,
        "seconds": seconds,
        "measurements": [asdict(measurement) for measurement in measurements],
        "sql_reference": {
            "file": str(sql_bench.RESULTS_FILE.relative_to(BENCH_DIR.parent)),
            "seconds": sql_report["seconds"],
            "clients": sql_report["clients"],
            "load_average_before": sql_report["machine"]["load_average_before"],
        },
        "ratios": ratios(measurements, sql_report),
        "access_log": access_log_cost(measurements),
        "servers_compared": servers_compared(measurements),
        "ledger_violations": violations,
    }
    print_report(report)
    RESULTS_FILE.parent.mkdir(exist_ok=True)
    RESULTS_FILE.write_text(json.dumps(report, indent=2) + "\n")
    print(f"  saved {RESULTS_FILE.relative_to(BENCH_DIR.parent)}")
    if violations:
        raise BenchmarkFailed(f"wallet.verify_ledger() reports {violations} violation(s)")


def sql_figures() -> dict:
    """The SQL suite's report; the suite runs first when there is none yet."""
    if not sql_bench.RESULTS_FILE.exists():
        print("http bench: no SQL figures to compare with yet; running the SQL suite first")
        sql_bench.main()
    return json.loads(sql_bench.RESULTS_FILE.read_text())


def server_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for package in ("uvicorn", "uvloop", "httptools", "granian"):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            versions[package] = importlib.metadata.version(package)
    return versions


def write_wallet_ids(url: str, path: Path) -> Path:
    """The seeded wallet ids, one a line in bench_ids order: line 1 is the hot wallet."""
    with psycopg.connect(url) as connection:
        rows = connection.execute("SELECT wallet_id FROM bench_ids ORDER BY n").fetchall()
    path.write_text("".join(f"{wallet_id}\n" for (wallet_id,) in rows))
    return path


def server_command(server: str, port: int) -> list[str]:
    if server == "uvicorn":
        return [sys.executable, "-m", "cli", "serve", "--host", HOST, "--port", str(port)]
    # uvicorn picks uvloop and httptools when installed; granian is told the same loop, HTTP/1 only.
    return [
        sys.executable, "-m", "granian", "--interface", "asgi", "--factory", "--host", HOST,
        "--port", str(port), "--workers", "1", "--loop", "uvloop", "--http", "1", "--no-ws",
        "--log-level", "warning", "api.app:create_asgi_app",
    ]  # fmt: skip


@contextlib.contextmanager
def running_server(run: ServerRun, url: str, secret: str, work_dir: Path) -> Iterator[RunningServer]:
    """The server process, ready (its /readyz answers); stopped on the way out."""
    # Only what the benchmark sets: a WALLET_* setting left in the caller's shell must not
    # change what is measured.
    environment = service_environment(
        url, WALLET_JWT_SECRET=secret, WALLET_LOG_LEVEL=run.log_level, WALLET_POOL_MAX_SIZE=str(POOL_MAX_SIZE)
    )
    port = free_port(HOST)
    server = Server(
        server_command(run.server, port),
        environment,
        port=port,
        host=HOST,
        name=run.name,
        log_path=work_dir / f"{run.server}-{run.log_level.lower()}.log",
        start_seconds=READY_SECONDS,
        stop_seconds=STOP_SECONDS,
        process_group=True,  # its own process group: granian's workers stop with it
    )
    try:
        server.start()
    except ServiceFailed as error:
        raise BenchmarkFailed(f"the server did not start: {error}") from None
    try:
        print(f"  {run.name}: pid {server.pid} on {server.base_url}")
        yield RunningServer(run, server.base_url, server.log_path, server.pid)
    finally:
        server.stop()


def tail(log_path: Path) -> str:
    return log_path.read_text(errors="replace")[-LOG_TAIL_CHARS:]


def measure(load: Load, server: RunningServer, scenario: Scenario, url: str) -> Measurement:
    with psycopg.connect(url, autocommit=True) as connection:
        connection.execute("CHECKPOINT")  # every scenario starts from the same point
    load_average = os.getloadavg()[0]
    name = f"{server.run.name} {scenario.key}) {scenario.title}"
    print(f"  {name}: {load.warmup_seconds} s warm-up, {load.seconds} s run")
    print(f"    load average before the run: {load_average:.2f}")
    if load_average >= BUSY_RUN_LOAD:
        print("    WARNING: the machine is busy with other work; this scenario's figures will be noisy")
    run_wrk(load, server, scenario, load.warmup_seconds)  # thrown away, but it must be clean too

    server_processes, sessions = process_group(server.pid), database_sessions(url)
    before = CpuTimes.now(server_processes, sessions)
    result = run_wrk(load, server, scenario, load.seconds)
    sessions |= database_sessions(url)  # one opened during the run counts from its start
    after = CpuTimes.now(server_processes, sessions)
    requests, seconds = result["requests"], result["duration_us"] / 1e6
    used = after.minus(before) if before and after else None
    other_work_share = used.other_work_share(seconds) if used else None
    if other_work_share is not None:
        print(f"    other work used {other_work_share:.0%} of the CPU during the run")
        if other_work_share >= OTHER_WORK_SHARE:
            print("    WARNING: other work shared the machine; this scenario's figures are noisy")
    return Measurement(
        server=server.run.server,
        log_level=server.run.log_level,
        key=scenario.key,
        title=scenario.title,
        requests=requests,
        rps=round(requests / seconds, 1),
        p50_ms=round(result["p50_us"] / 1000, 3),
        p99_ms=round(result["p99_us"] / 1000, 3),
        max_ms=round(result["max_us"] / 1000, 3),
        server_cpu_ms=round(used.server * 1000 / requests, 3) if used else None,
        postgres_cpu_ms=round(used.postgres * 1000 / requests, 3) if used else None,
        other_work_share=round(other_work_share, 3) if used else None,
        statuses=result["statuses"],
        load_average_before=round(load_average, 2),
    )


def run_wrk(load: Load, server: RunningServer, scenario: Scenario, seconds: int) -> dict:
    """One wrk run; returns the JSON line of bench/http/common.lua's done(), or raises if not clean."""
    command = [load.wrk, "-t", str(WRK_THREADS), "-c", str(CONNECTIONS), "-d", f"{seconds}s"]
    command += ["--timeout", WRK_TIMEOUT, "-H", f"Authorization: Bearer {load.token}"]
    command += ["-s", str(SCRIPTS_DIR / scenario.script), server.base_url]
    command += ["--", secrets.token_hex(8), str(load.ids_file)]  # a run id: no key repeats across runs
    done = subprocess.run(command, capture_output=True, text=True)
    lines = [line for line in done.stdout.splitlines() if line.startswith("wrk-result ")]
    result = json.loads(lines[0].removeprefix("wrk-result ")) if len(lines) == 1 else None
    failures = not_clean(result) if result and not done.returncode else f"wrk exited {done.returncode}"
    if failures:
        raise BenchmarkFailed(
            f"{server.run.name}, scenario {scenario.key} ({scenario.script}): {failures}\n"
            f"wrk:\n{done.stdout[-2000:]}{done.stderr[-2000:]}\nserver log:\n{tail(server.log_path)}"
        )
    return result


def database_sessions(url: str) -> set[int]:
    """Process ids of the other sessions on the bench database: the server's pool."""
    with psycopg.connect(url) as connection:
        rows = connection.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
            " AND backend_type = 'client backend' AND pid <> pg_backend_pid()"
        ).fetchall()
    return {pid for (pid,) in rows}


def process_group(group_id: int) -> set[int]:
    """The processes of a process group, from /proc (empty where there is no /proc)."""
    members = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            fields = stat.read_text().rpartition(")")[2].split()
            if int(fields[2]) == group_id:
                members.add(int(stat.parent.name))
    return members


def cpu_seconds(pids: set[int]) -> float:
    """User and system CPU time the processes have used so far (one that has exited counts nothing)."""
    ticks = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
            ticks += int(fields[11]) + int(fields[12])  # utime, stime
    return ticks / os.sysconf("SC_CLK_TCK")


def machine_cpu_seconds() -> float:
    """CPU time all cores have spent busy so far: /proc/stat without idle and iowait."""
    user, nice, system, _idle, _iowait, irq, softirq, steal = Path("/proc/stat").read_text().split()[1:9]
    return sum(int(ticks) for ticks in (user, nice, system, irq, softirq, steal)) / os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class CpuTimes:
    """CPU seconds used so far by the server, its database sessions, wrk, and the whole machine.

    Per request, the first two hardly move when other work shares the machine, unlike req/s,
    and they say where the cores go.
    """

    server: float
    postgres: float
    wrk: float
    machine: float

    @classmethod
    def now(cls, server_processes: set[int], sessions: set[int]) -> CpuTimes | None:
        """None where there is no /proc to read."""
        if not Path("/proc/stat").exists():
            return None
        children = resource.getrusage(resource.RUSAGE_CHILDREN)  # wrk runs, once waited for
        return cls(
            server=cpu_seconds(server_processes),
            postgres=cpu_seconds(sessions),
            wrk=children.ru_utime + children.ru_stime,
            machine=machine_cpu_seconds(),
        )

    def minus(self, earlier: CpuTimes) -> CpuTimes:
        return CpuTimes(
            server=self.server - earlier.server,
            postgres=self.postgres - earlier.postgres,
            wrk=self.wrk - earlier.wrk,
            machine=self.machine - earlier.machine,
        )

    def other_work_share(self, seconds: float) -> float:
        """Of a span's CPU, the share nobody in the benchmark used (PostgreSQL's WAL writer counts)."""
        other = self.machine - self.server - self.postgres - self.wrk
        return max(other, 0) / (seconds * (os.cpu_count() or 1))


def not_clean(result: dict) -> str:
    """What was wrong with a wrk run: a status other than 2xx, a replay, a socket error, a timeout."""
    statuses, errors = result["statuses"], result["errors"]
    problems = [f"{count} x HTTP {status}" for status, count in statuses.items() if status[0] != "2"]
    # errors.status is wrk's count of statuses > 399, already in statuses.
    problems += [f"{count} {kind} error(s)" for kind, count in errors.items() if count and kind != "status"]
    if result["replayed"]:  # a key used twice: the request was answered without moving money
        problems.append(f"{result['replayed']} replayed response(s)")
    if not result["requests"]:
        problems.append("no request completed")
    return ", ".join(problems)


def ratios(measurements: list[Measurement], sql_report: dict) -> dict[str, dict]:
    """uvicorn's req/s at WARNING over the SQL suite's tx/s for the same ledger call."""
    sql_rows = {row["key"]: row for row in sql_report["scenarios"]}
    result = {}
    for measurement in measurements:
        scenario = SCENARIOS[measurement.key]
        if f"{measurement.server} {measurement.log_level}" != MAIN_RUN.name or scenario.sql_key is None:
            continue
        sql_tps = sql_rows[scenario.sql_key]["tps"]
        ratio = measurement.rps / sql_tps
        result[scenario.key] = {
            "http_rps": measurement.rps,
            "sql_tps": sql_tps,
            "ratio": round(ratio, 3),
            "target": scenario.target,
            "met": None if scenario.target is None else ratio >= scenario.target,
        }
    return result


def access_log_cost(measurements: list[Measurement]) -> dict | None:
    """Transfers with one JSON access line per request (INFO) against without (WARNING)."""
    rps = {
        measurement.log_level: measurement.rps
        for measurement in measurements
        if measurement.server == ACCESS_LOG_RUN.server and measurement.key == "b"
    }
    if {MAIN_RUN.log_level, ACCESS_LOG_RUN.log_level} - rps.keys():
        return None
    quiet, logged = rps[MAIN_RUN.log_level], rps[ACCESS_LOG_RUN.log_level]
    return {"warning_rps": quiet, "info_rps": logged, "change": round(logged / quiet - 1, 3)}


def servers_compared(measurements: list[Measurement]) -> list[dict]:
    """granian against uvicorn, same scenario and settings: above 1 for req/s is better."""
    by_run = {(row.server, row.log_level, row.key): row for row in measurements}
    result = []
    for key in GRANIAN_RUN.scenario_keys:
        uvicorn = by_run.get((MAIN_RUN.server, GRANIAN_RUN.log_level, key))
        granian = by_run.get((GRANIAN_RUN.server, GRANIAN_RUN.log_level, key))
        if uvicorn and granian:
            result.append(
                {
                    "key": key,
                    "rps_ratio": round(granian.rps / uvicorn.rps, 3),
                    "p99_ratio": round(granian.p99_ms / uvicorn.p99_ms, 3),
                }
            )
    return result


def print_report(report: dict) -> None:
    sql = report["sql_reference"]
    print()
    print(
        f"  {'server':<16} {'scenario':<38} {'req/s':>6} {'p50 ms':>7} {'p99 ms':>7}"
        f" {'SQL tx/s':>8} {'HTTP/SQL':>8} {'API cpu':>7} {'PG cpu':>7} {'other':>5}"
    )
    for row in report["measurements"]:
        server = f"{row['server']} {row['log_level']}"
        name = f"{row['key']}) {row['title']}"
        ratio = report["ratios"].get(row["key"]) if server == MAIN_RUN.name else None
        sql_tps, versus = (f"{ratio['sql_tps']:.0f}", f"{ratio['ratio']:.2f}") if ratio else ("", "")
        print(
            f"  {server:<16} {name:<38} {row['rps']:>6.0f} {row['p50_ms']:>7.2f} {row['p99_ms']:>7.2f}"
            f" {sql_tps:>8} {versus:>8} {cpu(row['server_cpu_ms']):>7} {cpu(row['postgres_cpu_ms']):>7}"
            f" {share(row['other_work_share']):>5}"
        )
    print()
    print("  API cpu, PG cpu: CPU ms per request of the server, of its database sessions")
    print("  other: CPU used during the run by anything else, as a share of the machine")
    print(
        f"  SQL figures: {sql['file']} ({sql['clients']} clients, {sql['seconds']} s, "
        f"load average {sql['load_average_before']} before it)"
    )
    for key, ratio in report["ratios"].items():
        if ratio["target"] is not None:
            verdict = "met" if ratio["met"] else "MISSED"
            print(f"  {key}) HTTP/SQL {ratio['ratio']:.2f}   target >= {ratio['target']:.2f} {verdict}")
    cost = report["access_log"]
    if cost:
        print(
            f"  access log at INFO: transfers {cost['info_rps']:.0f} req/s against "
            f"{cost['warning_rps']:.0f} at WARNING ({cost['change']:+.1%})"
        )
    for comparison in report["servers_compared"]:
        print(
            f"  granian/uvicorn, {comparison['key']}): req/s x{comparison['rps_ratio']:.2f}, "
            f"p99 x{comparison['p99_ratio']:.2f}"
        )
    print()
    print(f"  wallet.verify_ledger(): {report['ledger_violations']} violation(s)")


def cpu(milliseconds: float | None) -> str:
    return "" if milliseconds is None else f"{milliseconds:.2f}"


def share(fraction: float | None) -> str:
    return "" if fraction is None else f"{fraction:.0%}"
