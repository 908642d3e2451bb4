"""`wallet serve` and `wallet worker` as real processes, for the tests and bench/.

A ServiceProcess runs one command with an environment of its own, its output (stdout and
stderr) in a log file whose tail every failure message shows. `start()` returns once the
process is ready: for `wallet serve` an HTTP probe (/readyz by default) answers 200; for
`wallet worker` it has registered in procrastinate.procrastinate_workers. `stop()` sends
SIGTERM and, after a timeout, SIGKILL; it never raises, so it suits a `finally`. A stopped
process can be started again with the same command, environment, port and log file, as a
pod is replaced.

    with wallet_serve(database_url, WALLET_JWT_SECRET=secret) as server:
        httpx.get(f"{server.base_url}/v1/wallets")

    worker = wallet_worker(database_url, WALLET_WORKER_POLL_MILLISECONDS="50").start()
    worker.wait_until(lambda: settled(db), timeout=20, what="the deposit settled")
    worker.terminate()

Conditions are awaited with `wait_until` (module function or method), which polls until the
condition returns something truthy and fails early, with the logs, when a watched process
exits unasked: no test sleeps a fixed time for something it can observe.

For the tests: `api_server` is wallet_serve verifying the tokens of tests/support/tokens.py,
`running_server` the same as a with block that yields the base URL, and `Workers` the
workers of one test on its database (the `workers` fixture). bench/ starts its servers and
worker with Server and wallet_worker.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Self, TypeVar

import psycopg

from tests.support.tokens import JWT_SECRET

ROOT = Path(__file__).resolve().parents[2]
HOST = "127.0.0.1"
# How long a process may take to be ready (import, connect, register), and to exit after
# SIGTERM: above `wallet serve --graceful-seconds` (20 s by default).
START_SECONDS = 30.0
STOP_SECONDS = 30.0
LOG_TAIL_LINES = 25

T = TypeVar("T")


class ServiceFailed(AssertionError):
    """A process did not start, exited unasked, or did not stop in time (with its log tail)."""


def free_port(host: str = HOST) -> int:
    """A TCP port nothing listens on now (the OS's pick)."""
    with socket.socket() as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


def service_environment(database_url: str, **settings: str) -> dict[str, str]:
    """This process's environment without any WALLET_* variable (one left in the shell must
    not change a test or a measurement), with DATABASE_URL, unbuffered output and settings."""
    environment = {name: value for name, value in os.environ.items() if not name.startswith("WALLET_")}
    environment.update(DATABASE_URL=database_url, PYTHONUNBUFFERED="1")
    environment.update(settings)
    return environment


def wait_until(
    condition: Callable[[], T],
    *,
    timeout: float,
    what: str,
    interval: float = 0.05,
    watch: Iterable[ServiceProcess] = (),
) -> T:
    """Poll condition until it returns something truthy, and return that. Fails after
    timeout seconds, or at once when a watched process exits that nobody asked to stop;
    either way with the watched processes' log tails."""
    watched = list(watch)
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        dead = [process for process in watched if process.exited_unasked]
        if dead:
            raise ServiceFailed(
                f"waiting for {what}: a process exited unasked\n" + "\n".join(p.log_tail() for p in dead)
            )
        if time.monotonic() > deadline:
            tails = "".join("\n" + process.log_tail() for process in watched)
            raise ServiceFailed(f"{what}: not within {timeout} s (last value {value!r}){tails}")
        time.sleep(interval)


class ServiceProcess:
    """One long-running process, started (and restarted) with the same command and environment."""

    def __init__(
        self,
        command: Sequence[str],
        environment: Mapping[str, str],
        *,
        name: str,
        log_path: Path | None = None,
        start_seconds: float = START_SECONDS,
        stop_seconds: float = STOP_SECONDS,
        process_group: bool = False,
    ) -> None:
        self.command = list(command)
        self.environment = dict(environment)
        self.name = name
        # Without a log_path, the output goes to a temporary folder that stop() removes.
        self._own_log_folder: Path | None = None
        if log_path is None:
            self._own_log_folder = Path(tempfile.mkdtemp(prefix="wallet-process-"))
            log_path = self._own_log_folder / f"{name.replace(' ', '-')}.log"
        self.log_path = log_path
        self.start_seconds = start_seconds
        self.stop_seconds = stop_seconds
        # In a session of its own, signalled as a group: for servers that fork workers.
        self.process_group = process_group
        self.process: subprocess.Popen[bytes] | None = None
        self.stopped_on_purpose = False
        self.exit_codes: list[int] = []  # one per run that has ended, in order
        self._recorded: subprocess.Popen[bytes] | None = None

    # -- what subclasses define ------------------------------------------------------------

    def _before_start(self) -> None:
        """Called just before the process is spawned."""

    def ready(self) -> bool:
        """Whether the process is ready; by default as soon as it runs."""
        return True

    # -- life cycle ------------------------------------------------------------------------

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    @property
    def pid(self) -> int:
        assert self.process is not None, f"{self.name} was never started"
        return self.process.pid

    @property
    def returncode(self) -> int | None:
        return None if self.process is None else self.process.poll()

    @property
    def exited_unasked(self) -> bool:
        return self.process is not None and not self.alive and not self.stopped_on_purpose

    def start(self) -> Self:
        """Spawn the process and return once it is ready; ServiceFailed (and the process
        stopped) if it exits first or is not ready in start_seconds."""
        if self.alive:
            raise ServiceFailed(f"{self.name} already runs (pid {self.pid})")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._before_start()
        self.stopped_on_purpose = False
        with self.log_path.open("ab") as log:
            log.write(f"=== {self.name} started at {time.time():.3f}: {' '.join(self.command)}\n".encode())
            log.flush()
            self.process = subprocess.Popen(
                self.command,
                cwd=ROOT,
                env=self.environment,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=self.process_group,
            )
        try:
            self.wait_until(self.ready, timeout=self.start_seconds, what=f"{self.name} ready", interval=0.1)
        except BaseException:
            self.stop()
            raise
        return self

    def send(self, signal_number: int) -> None:
        """Send a signal (to the whole group when process_group)."""
        if not self.alive:
            raise ServiceFailed(f"{self.name} is not running\n{self.log_tail()}")
        assert self.process is not None
        if self.process_group:
            os.killpg(self.process.pid, signal_number)
        else:
            self.process.send_signal(signal_number)

    def wait(self, timeout: float | None = None) -> int:
        """Wait for the process to exit, and return its exit code (negative: the signal that
        ended it). If it does not exit in time it is killed and ServiceFailed raised."""
        assert self.process is not None, f"{self.name} was never started"
        timeout = self.stop_seconds if timeout is None else timeout
        try:
            code = self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise ServiceFailed(f"{self.name} did not exit within {timeout} s\n{self.log_tail()}") from None
        self._record(code)
        return code

    def terminate(self, timeout: float | None = None) -> tuple[int, float]:
        """SIGTERM and wait: (exit code, seconds it took). ServiceFailed if it does not exit
        in time (it is then killed)."""
        self.stopped_on_purpose = True
        started = time.monotonic()
        self.send(signal.SIGTERM)
        code = self.wait(timeout)
        return code, time.monotonic() - started

    def kill(self) -> None:
        """SIGKILL, as a crash or an OOM kill would: no cleanup."""
        self.stopped_on_purpose = True
        if self.alive:
            self.send(signal.SIGKILL)
        if self.process is not None:
            self._record(self.process.wait())

    def stop(self, timeout: float | None = None) -> int | None:
        """SIGTERM, then SIGKILL after timeout; the exit code. Never raises: for cleanup."""
        if self.process is None:
            return None
        self.stopped_on_purpose = True
        if self.alive:
            with contextlib.suppress(ProcessLookupError, ServiceFailed):  # it may exit meanwhile
                self.send(signal.SIGTERM)
            try:
                self.process.wait(timeout=self.stop_seconds if timeout is None else timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError, ServiceFailed):
                    self.send(signal.SIGKILL)
        code = self.process.wait()
        if self.process_group:
            # Whatever the leader forked and left behind must not outlive it.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.process.pid, signal.SIGKILL)
        self._record(code)
        if self._own_log_folder is not None:
            shutil.rmtree(self._own_log_folder, ignore_errors=True)
        return code

    def _record(self, code: int) -> None:
        """Note the exit code of the current run, once."""
        if self._recorded is not self.process:
            self._recorded = self.process
            self.exit_codes.append(code)

    def wait_until(
        self, condition: Callable[[], T], *, timeout: float, what: str, interval: float = 0.05
    ) -> T:
        """wait_until, failing at once if this process exits unasked."""
        return wait_until(condition, timeout=timeout, what=what, interval=interval, watch=[self])

    def __enter__(self) -> Self:
        return self if self.alive else self.start()

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.stop()

    # -- output ----------------------------------------------------------------------------

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        text = "\n".join(self.log_text().splitlines()[-lines:])
        return f"--- {self.name} (exit {self.returncode}), {self.log_path}:\n{text}"


class Server(ServiceProcess):
    """An HTTP server on host:port, ready when GET probe answers 200."""

    def __init__(
        self,
        command: Sequence[str],
        environment: Mapping[str, str],
        *,
        port: int,
        host: str = HOST,
        probe: str = "/readyz",
        name: str = "wallet serve",
        **options,
    ) -> None:
        super().__init__(command, environment, name=name, **options)
        self.host = host
        self.port = port
        self.probe = probe

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def accepts_connections(self) -> bool:
        """Whether a TCP connection to host:port is accepted now (False once a draining
        server has closed its listening socket)."""
        try:
            with socket.create_connection((self.host, self.port), timeout=2):
                return True
        except OSError:
            return False

    def ready(self) -> bool:
        with (
            contextlib.suppress(OSError),  # refused, reset, an HTTP error status, a timeout
            urllib.request.urlopen(f"{self.base_url}{self.probe}", timeout=2) as answer,
        ):
            return answer.status == 200
        return False


class Worker(ServiceProcess):
    """A `wallet worker`, ready once it has registered in procrastinate.procrastinate_workers
    (read through watch_url, by default its own DATABASE_URL); worker_id is that row's id.
    Start workers on one database one at a time: the newest row is taken as this one's."""

    def __init__(
        self,
        command: Sequence[str],
        environment: Mapping[str, str],
        *,
        watch_url: str | None = None,
        name: str = "wallet worker",
        **options,
    ) -> None:
        super().__init__(command, environment, name=name, **options)
        self.watch_url = watch_url or self.environment["DATABASE_URL"]
        self.worker_id: int | None = None
        self._registered_before = 0

    def _newest_worker_id(self) -> int:
        with psycopg.connect(self.watch_url, autocommit=True, connect_timeout=5) as connection:
            row = connection.execute(
                "SELECT coalesce(max(id), 0) FROM procrastinate.procrastinate_workers"
            ).fetchone()
        assert row is not None
        return row[0]

    def _before_start(self) -> None:
        self.worker_id = None
        self._registered_before = self._newest_worker_id()

    def ready(self) -> bool:
        newest = self._newest_worker_id()
        if newest > self._registered_before:
            self.worker_id = newest
            return True
        return False


def wallet_serve(
    database_url: str,
    *,
    port: int | None = None,
    host: str = HOST,
    workers: int | None = None,
    probe: str = "/readyz",
    log_path: Path | None = None,
    name: str = "wallet serve",
    stop_seconds: float = STOP_SECONDS,
    **settings: str,
) -> Server:
    """`python -m cli serve` on database_url (not started: call start() or use `with`).
    settings are environment variables (WALLET_JWT_SECRET=..., WALLET_LOG_LEVEL=...)."""
    port = free_port(host) if port is None else port
    command = [sys.executable, "-m", "cli", "serve", "--host", host, "--port", str(port)]
    if workers is not None:
        command += ["--workers", str(workers)]
    return Server(
        command,
        service_environment(database_url, **settings),
        port=port,
        host=host,
        probe=probe,
        name=name,
        log_path=log_path,
        stop_seconds=stop_seconds,
    )


def wallet_worker(
    database_url: str,
    *,
    concurrency: int | None = None,
    watch_url: str | None = None,
    log_path: Path | None = None,
    name: str = "wallet worker",
    stop_seconds: float = STOP_SECONDS,
    **settings: str,
) -> Worker:
    """`python -m cli worker` (not started: call start() or use `with`). settings are
    environment variables; a DATABASE_URL among them replaces database_url for the worker
    (watch_url, by default database_url, is where its registration is looked for)."""
    command = [sys.executable, "-m", "cli", "worker"]
    if concurrency is not None:
        command += ["--concurrency", str(concurrency)]
    return Worker(
        command,
        service_environment(database_url, **settings),
        watch_url=watch_url or database_url,
        name=name,
        log_path=log_path,
        stop_seconds=stop_seconds,
    )


def api_server(database_url: str, **options) -> Server:
    """wallet_serve as the tests run it: verifying tokens signed with the tests' JWT_SECRET,
    logging warnings and above (options: wallet_serve's, WALLET_* settings override these)."""
    return wallet_serve(
        database_url, **{"WALLET_JWT_SECRET": JWT_SECRET, "WALLET_LOG_LEVEL": "WARNING", **options}
    )


@contextlib.contextmanager
def running_server(database_url: str, **options) -> Iterator[str]:
    """An api_server for the length of a with block; yields its base URL."""
    with api_server(database_url, **options) as server:
        yield server.base_url


def log_tails(processes: Iterable[ServiceProcess], lines: int = LOG_TAIL_LINES) -> str:
    """The log tail of each process, for a failure message."""
    return "\n".join(process.log_tail(lines) for process in processes)


class Workers:
    """The `wallet worker` processes of one test, on one database, each logging to
    log_folder/worker-N.log. `wait_until` fails at once when any of them exits unasked."""

    def __init__(self, database_url: str, log_folder: Path, **defaults: str) -> None:
        self.database_url = database_url
        self.log_folder = log_folder
        self.defaults = defaults  # settings every worker gets unless start() says otherwise
        self.started: list[Worker] = []

    def start(self, **settings: str) -> Worker:
        """A new worker (settings: WALLET_* variables as strings, or DATABASE_URL to log in
        otherwise), returned once it has registered."""
        number = len(self.started) + 1
        worker = wallet_worker(
            self.database_url,
            name=f"worker {number}",
            log_path=self.log_folder / f"worker-{number}.log",
            stop_seconds=10,
            **{**self.defaults, **settings},
        )
        self.started.append(worker)
        return worker.start()

    def restart(self, worker: Worker) -> Worker:
        """A new worker with the same environment as worker (killed first if it still runs)."""
        worker.kill()
        number = len(self.started) + 1
        replacement = Worker(
            worker.command,
            worker.environment,
            watch_url=worker.watch_url,
            name=f"worker {number}",
            log_path=self.log_folder / f"worker-{number}.log",
            stop_seconds=worker.stop_seconds,
        )
        self.started.append(replacement)
        return replacement.start()

    def wait_until(
        self, condition: Callable[[], T], *, timeout: float, what: str, interval: float = 0.05
    ) -> T:
        return wait_until(condition, timeout=timeout, what=what, interval=interval, watch=self.started)

    def log_tails(self, lines: int = LOG_TAIL_LINES) -> str:
        return log_tails(self.started, lines)

    def close(self) -> None:
        """SIGTERM to all at once, then wait for each (SIGKILL past its stop timeout)."""
        for worker in self.started:
            if worker.alive:
                worker.stopped_on_purpose = True
                with contextlib.suppress(ProcessLookupError, ServiceFailed):
                    worker.send(signal.SIGTERM)
        for worker in self.started:
            worker.stop()
