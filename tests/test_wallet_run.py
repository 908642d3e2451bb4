"""`wallet run` (what `make run` runs): the embedded PostgreSQL, migrations, the API and the
worker; Ctrl-C stops them all, the database included, and exits 0."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx

from tests.support.processes import free_port, wait_until

START_SECONDS = 120
STOP_SECONDS = 60


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _group_alive(group: int) -> bool:
    try:
        os.killpg(group, 0)
    except ProcessLookupError:
        return False
    return True


def test_ctrl_c_stops_the_api_the_worker_and_the_embedded_database(tmp_path: Path):
    port = free_port()
    environment = {name: value for name, value in os.environ.items() if not name.startswith("WALLET_")}
    environment.pop("DATABASE_URL", None)
    environment["WALLET_DATA_DIR"] = str(tmp_path / "data")
    log = (tmp_path / "run.log").open("w")
    run = subprocess.Popen(
        [sys.executable, "-m", "cli", "run", "--port", str(port)],
        env=environment,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group, as a terminal's foreground job
    )
    try:
        wait_until(lambda: _answers(f"http://127.0.0.1:{port}/readyz"), timeout=START_SECONDS, what="ready")
        postmaster = tmp_path / "data" / "pgdata" / "postmaster.pid"
        assert postmaster.exists()
        assert (tmp_path / "data" / "jwt-secret").stat().st_mode & 0o077 == 0  # the dev secret is private
        os.killpg(run.pid, signal.SIGINT)  # what Ctrl-C sends: the whole foreground group
        assert run.wait(timeout=STOP_SECONDS) == 0
        wait_until(lambda: not _group_alive(run.pid), timeout=STOP_SECONDS, what="API and worker gone")
        wait_until(
            lambda: not postmaster.exists(), timeout=STOP_SECONDS, what="the embedded database stopped"
        )
        assert not _answers(f"http://127.0.0.1:{port}/healthz")
    finally:
        if run.poll() is None:
            os.killpg(run.pid, signal.SIGKILL)
        log.close()
