"""Several `wallet serve` replicas and `wallet worker` processes on one database.

A replica is a `wallet serve` process on a port of its own that the test can SIGTERM,
SIGKILL and start again on the same port, as a pod behind a load balancer would be
replaced. Its output goes to a log file under tmp_path whose tail is shown in failures.
The workers come from tests/jobs/conftest.py (`Workers`), with their logs there too.
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.api.conftest import free_port, server_environment
from tests.jobs.conftest import Workers

ROOT = Path(__file__).resolve().parents[2]
REPLICA_START_SECONDS = 30
REPLICA_STOP_SECONDS = 30  # above `wallet serve --graceful-seconds` (20 s by default)
LOG_TAIL_LINES = 25


class Replica:
    """One `wallet serve` process; `start` again after it has exited reuses its port."""

    def __init__(self, number: int, database_url: str, log_folder: Path, **settings: str) -> None:
        self.number = number
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.environment = server_environment(database_url, PYTHONUNBUFFERED="1", **settings)
        self.log_path = log_folder / f"replica-{number}.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.exit_codes: list[int] = []

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self) -> None:
        """Start the process and return once /healthz answers 200."""
        assert not self.alive, f"replica {self.number} already runs"
        with self.log_path.open("ab") as log:
            log.write(f"=== start at {time.time():.3f}\n".encode())
            log.flush()
            self.process = subprocess.Popen(
                [sys.executable, "-m", "cli", "serve", "--port", str(self.port)],
                cwd=ROOT,
                env=self.environment,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + REPLICA_START_SECONDS
        while True:
            if self.process.poll() is not None:
                raise AssertionError(f"replica {self.number} exited at start\n{self.log_tail()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.base_url}/healthz", timeout=1).status_code == 200:
                    return
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"replica {self.number}: no /healthz within {REPLICA_START_SECONDS} s\n{self.log_tail()}"
                )
            time.sleep(0.1)

    def send(self, signal_number: int) -> None:
        assert self.process is not None and self.alive, f"replica {self.number} is not running"
        self.process.send_signal(signal_number)

    def wait(self, timeout: float = REPLICA_STOP_SECONDS) -> int:
        """Wait for the process to exit; its exit code (negative: killed by that signal)."""
        assert self.process is not None
        try:
            code = self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise AssertionError(
                f"replica {self.number} did not exit within {timeout} s\n{self.log_tail()}"
            ) from None
        self.exit_codes.append(code)
        return code

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it hangs; for the end of the test, however it ends."""
        if self.process is None or not self.alive:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=REPLICA_STOP_SECONDS)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        text = self.log_path.read_text(errors="replace").splitlines()[-lines:]
        code = None if self.process is None else self.process.poll()
        return f"--- replica {self.number} (exit {code}), {self.log_path}:\n" + "\n".join(text)


class Replicas(list[Replica]):
    def log_tails(self, lines: int = LOG_TAIL_LINES) -> str:
        return "\n".join(replica.log_tail(lines) for replica in self)


@pytest.fixture
def replicas(database_url: str, tmp_path: Path) -> Iterator[Replicas]:
    """Three `wallet serve` replicas on this test's database, started; stopped at the end."""
    group = Replicas(Replica(number, database_url, tmp_path) for number in (1, 2, 3))
    try:
        for replica in group:
            replica.start()
        yield group
    finally:
        for replica in group:
            replica.stop()


@pytest.fixture
def workers(database_url: str, tmp_path: Path) -> Iterator[Workers]:
    """Start `wallet worker` processes on this test's database; all are stopped at the end."""
    pool = Workers(database_url, tmp_path)
    try:
        yield pool
    finally:
        pool.close()
