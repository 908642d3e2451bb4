"""Every command answers a bad or unreachable database, a bad port or a failed start with one
line on stderr and an exit code of its own, never a traceback or a password."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import httpx
import pytest

from core.database import with_user
from tests.support.processes import running_server
from tests.support.tokens import JWT_SECRET

UNREACHABLE = "postgresql://shop:s3cret-pw@127.0.0.1:1/wallet"
EXIT_USAGE, EXIT_UNREACHABLE = 2, 69


def _wallet(*arguments: str, database_url: str | None, timeout: float = 60) -> subprocess.CompletedProcess:
    environment = {key: value for key, value in os.environ.items() if not key.startswith("WALLET_")}
    environment.pop("DATABASE_URL", None)
    environment["WALLET_JWT_SECRET"] = JWT_SECRET
    if database_url is not None:
        environment["DATABASE_URL"] = database_url
    return subprocess.run(
        [sys.executable, "-m", "cli", *arguments],
        env=environment,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _one_line(done: subprocess.CompletedProcess) -> str:
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "Traceback" not in done.stderr and "s3cret-pw" not in done.stderr
    return lines[0]


@pytest.mark.parametrize(
    "command", [["migrate"], ["migrate", "--post"], ["verify"], ["stats"], ["serve"], ["worker"], ["run"]]
)
def test_an_unreachable_database_is_one_line_naming_the_setting_and_host(command):
    done = _wallet(*command, database_url=UNREACHABLE)
    assert done.returncode == EXIT_UNREACHABLE
    line = _one_line(done)
    assert "DATABASE_URL" in line and "host 127.0.0.1, port 1" in line


def test_serve_with_no_connection_at_start_up_warns_in_one_line_and_serves(tmp_path):
    """WALLET_POOL_MIN_SIZE=0: the API starts without the database and answers 503 until it
    answers (tests/api/test_database_unreachable.py); the start says why in one line."""
    log = tmp_path / "serve.log"
    with running_server(UNREACHABLE, probe="/healthz", WALLET_POOL_MIN_SIZE="0", log_path=log) as base:
        assert httpx.get(f"{base}/readyz").status_code == 503
    assert "serving 503 unavailable until it answers" in log.read_text()
    assert "s3cret-pw" not in log.read_text()


def test_a_login_the_server_refuses_is_the_same_one_line(postgres_url):
    done = _wallet("verify", database_url=with_user(postgres_url, "nobody_here", "s3cret-pw"))
    assert done.returncode == EXIT_UNREACHABLE, done.stderr
    assert "DATABASE_URL" in _one_line(done)


@pytest.mark.parametrize(
    "url", ["mysql://shop:s3cret-pw@db/wallet", "postgresql://shop:s3cret-pw@db:port/wallet"]
)
def test_a_malformed_database_url_is_a_usage_error_naming_it(url):
    done = _wallet("migrate", database_url=url)
    assert done.returncode == EXIT_USAGE
    assert "DATABASE_URL" in _one_line(done)


@pytest.mark.parametrize("port", ["0", "65536", "99999", "http"])
@pytest.mark.parametrize("command", ["serve", "run"])
def test_a_port_outside_1_to_65535_is_refused(command, port):
    done = _wallet(command, "--port", port, database_url=UNREACHABLE)
    assert done.returncode == EXIT_USAGE
    assert "--port" in done.stderr and "Traceback" not in done.stderr


def test_wallet_run_fails_when_the_api_cannot_bind_its_port(database_url):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = _wallet("run", "--port", str(port), database_url=database_url, timeout=120)
    assert done.returncode != 0
    assert "wallet run: serve stopped" in done.stderr
