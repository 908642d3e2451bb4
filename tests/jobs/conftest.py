"""Real `wallet worker` processes for the job tests, and what the job tests share.

A test starts workers with `workers.start(**settings)` (WALLET_* worker settings as
strings, e.g. WALLET_SETTLE_MAX_RETRIES="2"): each is `python -m cli worker` on the
test's own database, its output in a log file whose tail is shown when a wait fails.
Workers are stopped when the test ends, however it ends. Tests wait for a condition with
`workers.wait_until(...)`: it polls the database and fails at once if a worker dies
without being asked to.

Shared code comes from the other test folders: `ledger_helpers` (tests/sql) for calls
into the ledger, and `running_server` (tests/api/conftest.py) for a `wallet serve`.
pytest puts a test folder on sys.path only when it collects that folder, and a conftest
cannot be imported by name, so both are made reachable here for `pytest tests/jobs` alone.
"""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from types import ModuleType
from typing import Any, TypeVar

import httpx
import psycopg
import pytest

from api.auth import SCOPES, mint_token

ROOT = Path(__file__).resolve().parents[2]
sys.path.append(str(ROOT / "tests" / "sql"))

from ledger_helpers import one  # noqa: E402  (needs the path above)

T = TypeVar("T")


def _module_from_file(name: str, path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None, path
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_api_fixtures = _module_from_file("wallet_tests_api_conftest", ROOT / "tests" / "api" / "conftest.py")
running_server = _api_fixtures.running_server
JWT_SECRET: str = _api_fixtures.JWT_SECRET

# Every worker of these tests, unless a test says otherwise.
WORKER_SETTINGS = {
    # A job deferred for later sends no NOTIFY when it falls due: workers find due
    # settlements by polling, so poll often to keep the tests fast.
    "WALLET_WORKER_POLL_MILLISECONDS": "50",
    # The reconciler re-enqueues a due deposit without a live job after this grace; short,
    # so that it races the regular jobs in every test (settlement must stay exactly once).
    "WALLET_RECONCILE_GRACE_SECONDS": "1",
    # Each job posts only its own deposit, so a kill lands mid-settlement and every job
    # path is exercised; tests that race sweeps set it themselves.
    "WALLET_SETTLE_SWEEP_LIMIT": "0",
    "WALLET_LOG_LEVEL": "INFO",
}
# How long a worker may take to start (import, connect, register) or to stop on SIGTERM.
WORKER_START_SECONDS = 30
WORKER_STOP_SECONDS = 10
LOG_TAIL_LINES = 25


class Worker:
    """One `wallet worker` process."""

    def __init__(self, number: int, environment: dict[str, str], log_path: Path) -> None:
        self.number = number
        self.environment = environment
        self.log_path = log_path
        self.stopped_on_purpose = False
        self.worker_id: int | None = None  # its row in procrastinate_workers
        with log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "cli", "worker"],
                cwd=ROOT,
                env=environment,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    @property
    def alive(self) -> bool:
        return self.process.poll() is None

    def terminate(self, timeout: float = WORKER_STOP_SECONDS) -> tuple[int, float]:
        """SIGTERM; returns (exit code, seconds it took). Fails if it does not exit in time."""
        self.stopped_on_purpose = True
        started = time.monotonic()
        self.process.send_signal(signal.SIGTERM)
        try:
            code = self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(
                f"worker {self.number} did not exit within {timeout} s of SIGTERM\n{self.log_tail()}"
            ) from None
        return code, time.monotonic() - started

    def kill(self) -> None:
        """SIGKILL, as a crash or an OOM kill would: no cleanup, jobs left 'doing'."""
        self.stopped_on_purpose = True
        if self.alive:
            self.process.kill()
        self.process.wait()

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        text = self.log_path.read_text(errors="replace").splitlines()[-lines:]
        return f"--- worker {self.number} (exit {self.process.poll()}), {self.log_path}:\n" + "\n".join(text)


class Workers:
    """The worker processes of one test, on its database."""

    def __init__(self, database_url: str, log_folder: Path) -> None:
        self.database_url = database_url
        self.log_folder = log_folder
        self.started: list[Worker] = []
        self._connection = psycopg.connect(database_url, autocommit=True)

    def start(self, **settings: str) -> Worker:
        """A new worker, returned once it has registered in procrastinate_workers."""
        environment = {key: value for key, value in os.environ.items() if not key.startswith("WALLET_")}
        environment.update(WORKER_SETTINGS, DATABASE_URL=self.database_url, PYTHONUNBUFFERED="1")
        environment.update(settings)
        return self._launch(environment)

    def restart(self, worker: Worker) -> Worker:
        """A new worker with the same settings as `worker` (killed first if it still runs)."""
        worker.kill()
        return self._launch(worker.environment)

    def _launch(self, environment: dict[str, str]) -> Worker:
        before = self._newest_worker_id()
        number = len(self.started) + 1
        worker = Worker(number, environment, self.log_folder / f"worker-{number}.log")
        self.started.append(worker)

        def registered() -> int | None:
            newest = self._newest_worker_id()
            return newest if newest > before else None

        worker.worker_id = self.wait_until(
            registered, timeout=WORKER_START_SECONDS, what=f"worker {number} registered"
        )
        return worker

    def _newest_worker_id(self) -> int:
        row = self._connection.execute(
            "SELECT coalesce(max(id), 0) FROM procrastinate.procrastinate_workers"
        ).fetchone()
        return row[0]

    def wait_until(
        self, condition: Callable[[], T], *, timeout: float, what: str, interval: float = 0.05
    ) -> T:
        """Poll condition until it returns something truthy, and return that. Fails after
        timeout seconds, or at once when a worker exits that no test asked to stop."""
        deadline = time.monotonic() + timeout
        while True:
            value = condition()
            if value:
                return value
            dead = [w for w in self.started if not w.alive and not w.stopped_on_purpose]
            if dead:
                raise AssertionError(
                    f"waiting for {what}: a worker exited unasked\n" + "\n".join(w.log_tail() for w in dead)
                )
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"{what}: not within {timeout} s (last value {value!r})\n" + self.log_tails()
                )
            time.sleep(interval)

    def log_tails(self, lines: int = LOG_TAIL_LINES) -> str:
        return "\n".join(worker.log_tail(lines) for worker in self.started)

    def close(self) -> None:
        for worker in self.started:
            if worker.alive:
                worker.stopped_on_purpose = True
                worker.process.send_signal(signal.SIGTERM)
        for worker in self.started:
            try:
                worker.process.wait(timeout=WORKER_STOP_SECONDS)
            except subprocess.TimeoutExpired:
                worker.kill()
        self._connection.close()


@pytest.fixture
def workers(database_url: str, tmp_path: Path) -> Iterator[Workers]:
    """Start `wallet worker` processes on this test's database; all are stopped at the end."""
    pool = Workers(database_url, tmp_path)
    try:
        yield pool
    finally:
        pool.close()


DepositAt = Callable[..., dict[str, Any]]


@pytest.fixture
def deposit_at(db: psycopg.Connection) -> DepositAt:
    """deposit_at(wallet_id, amount, available_at, *, acting=None, caller="svc", key=None,
    reference=None): wallet.deposit with p_available_at, as the API calls it; returns the
    transaction row."""

    def call(
        wallet_id: Any,
        amount: int,
        available_at: datetime | None,
        *,
        acting: str | None = None,
        caller: str = "svc",
        key: str | None = None,
        reference: str | None = None,
    ) -> dict[str, Any]:
        return one(
            db,
            "SELECT * FROM wallet.deposit(%s::text, %s::text, %s::text, %s::text, %s::uuid, %s::bigint,"
            " %s::text, %s::jsonb, %s::timestamptz)",
            caller,
            key,
            None if key is None else "fingerprint-1",
            acting,
            wallet_id,
            amount,
            reference,
            None,
            available_at,
        )

    return call


TokenFactory = Callable[..., str]


@pytest.fixture(scope="session")
def token() -> TokenFactory:
    """token(*scopes, sub=..., owner_id=...): a valid token for the test server; all scopes by default."""

    def make(*scopes: str, sub: str = "job-tests", owner_id: str | None = None) -> str:
        return mint_token(
            JWT_SECRET, sub=sub, scopes=list(scopes or SCOPES), owner_id=owner_id, ttl_seconds=600
        )

    return make


@pytest.fixture
def fresh_api(database_url: str) -> Iterator[str]:
    """A `wallet serve` on this test's database (the one its workers use)."""
    with running_server(database_url) as base_url:
        yield base_url


@pytest.fixture
def http(fresh_api: str, token: TokenFactory) -> Iterator[httpx.Client]:
    """An HTTP client on fresh_api, authenticated as a service with every scope."""
    with httpx.Client(
        base_url=fresh_api, headers={"Authorization": f"Bearer {token()}"}, timeout=30
    ) as client:
        yield client
