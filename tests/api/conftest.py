"""A real `wallet serve` process per test session (and a fresh one on demand), driven over HTTP."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import psycopg
import pytest

from api.auth import SCOPES, mint_token
from core.database import with_database

JWT_SECRET = "test-secret-" + "x" * 40
ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def server_environment(database_url: str, **extra: str) -> dict[str, str]:
    environment = {key: value for key, value in os.environ.items() if not key.startswith("WALLET_")}
    environment.update(DATABASE_URL=database_url, WALLET_JWT_SECRET=JWT_SECRET, WALLET_LOG_LEVEL="WARNING")
    environment.update(extra)
    return environment


@contextlib.contextmanager
def running_server(database_url: str, *, workers: int = 1, **settings: str) -> Iterator[str]:
    """`wallet serve` on a free port; yields its base URL once /healthz answers."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "cli", "serve", "--port", str(port), "--workers", str(workers)],
        cwd=ROOT,
        env=server_environment(database_url, **settings),
    )
    base_url = f"http://127.0.0.1:{port}"
    try:
        wait_until_healthy(base_url, process)
        yield base_url
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def wait_until_healthy(base_url: str, process: subprocess.Popen) -> None:
    """Until /healthz answers 200; fails if the process exits or 30 s pass."""
    deadline = time.monotonic() + 30
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"wallet serve exited with {process.returncode}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{base_url}/healthz", timeout=1).status_code == 200:
                return
        if time.monotonic() > deadline:
            raise RuntimeError("wallet serve did not answer /healthz within 30 s")
        time.sleep(0.1)


@pytest.fixture(scope="session")
def shared_database_url(postgres_url: str, template_database: str) -> Iterator[str]:
    """One migrated database for the session's shared server; tests isolate by their own wallets."""
    name = f"wallet_api_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(postgres_url, autocommit=True) as connection:
        connection.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template_database}"')
    yield with_database(postgres_url, name)
    with psycopg.connect(postgres_url, autocommit=True) as connection:
        connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def api_url(shared_database_url: str) -> Iterator[str]:
    """The base URL of a `wallet serve` shared by the session (do not change global state
    such as default commission rules through it; use `fresh_api` for that)."""
    with running_server(shared_database_url) as base_url:
        yield base_url


@pytest.fixture
def fresh_api(database_url: str) -> Iterator[str]:
    """A `wallet serve` of this test's own, on this test's own database."""
    with running_server(database_url) as base_url:
        yield base_url


TokenFactory = Callable[..., str]


@pytest.fixture(scope="session")
def token() -> TokenFactory:
    """token(*scopes, sub=..., owner_id=..., ttl_seconds=...): a valid HS256 token; all scopes by default."""

    def make(
        *scopes: str, sub: str = "test-client", owner_id: str | None = None, ttl_seconds: int = 600
    ) -> str:
        return mint_token(
            JWT_SECRET, sub=sub, scopes=list(scopes or SCOPES), owner_id=owner_id, ttl_seconds=ttl_seconds
        )

    return make


@pytest.fixture
def client(api_url: str, token: TokenFactory) -> Iterator[httpx.Client]:
    """An HTTP client on the shared server, authenticated with every scope as a service."""
    with httpx.Client(base_url=api_url, headers={"Authorization": f"Bearer {token()}"}, timeout=30) as http:
        yield http
