"""A real PostgreSQL for every test that touches data, and the fixtures tests of more than
one folder share: tokens, a `wallet serve` of the test's own, `wallet worker` processes.

Where the server comes from, in order: WALLET_TEST_DATABASE_URL; else a testcontainers
PostgreSQL when a Docker engine answers; else an embedded PostgreSQL (pgserver) in a
temporary folder. One database is migrated once per session as a template, and a test that
asks for `database_url` or `db` gets its own clone of it (CREATE DATABASE ... TEMPLATE), so
tests are isolated and fast; the API tests mostly share one server on one clone.

The template is migrated as production should be: sql/bootstrap/roles.sql run by the
superuser, then `wallet migrate` connected as wallet_owner, a login that is neither
superuser nor CREATEROLE and owns the database. So every test runs on a schema that such
an owner could build (tests/test_migrate.py checks it did). The `db` fixture stays a
superuser connection: some tests tamper with the ledger on purpose.
"""

from __future__ import annotations

import contextlib
import gc
import os
import tempfile
import warnings
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import httpx
import psycopg
import pytest
from psycopg import sql

from core.database import with_database, with_user
from core.migrate import migrate
from core.settings import normalize_database_url
from tests.support.databases import cloned_database, create_database, drop_database, unique_name
from tests.support.processes import Workers, api_server
from tests.support.tokens import TokenFactory, bearer, make_token

ROOT = Path(__file__).resolve().parents[1]
BOOTSTRAP_ROLES = ROOT / "sql" / "bootstrap" / "roles.sql"
OWNER_ROLE = "wallet_owner"
# On servers that ask for a password (testcontainers), the logins of sql/bootstrap/roles.sql
# that tests log in as get these. Each is set only on a role without a password, so a real
# one on a shared server is never replaced.
TEST_PASSWORDS = {OWNER_ROLE: "wallet-test-owner", "wallet_worker": "wallet-test-worker"}
# Test sessions sharing one server (WALLET_TEST_DATABASE_URL) set the password in turn,
# under the lock that sql/bootstrap/roles.sql takes.
ROLES_LOCK_KEY = int.from_bytes(b"walletro")


def _docker_answers() -> bool:
    import docker

    # docker-py leaks its socket when the engine is missing; collect it here, quietly.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        try:
            client = docker.from_env(timeout=3)
            try:
                return bool(client.ping())
            finally:
                client.close()
        except Exception:
            return False
        finally:
            gc.collect()


@contextlib.contextmanager
def _postgres_server() -> Iterator[str]:
    """The URL of a maintenance database on a server the tests may create databases on."""
    url = os.environ.get("WALLET_TEST_DATABASE_URL", "").strip()
    if url:
        yield normalize_database_url(url)
        return
    if _docker_answers():
        from testcontainers.postgres import PostgresContainer

        with PostgresContainer("postgres:16-alpine", driver=None) as container:
            yield normalize_database_url(container.get_connection_url())
        return
    import pgserver

    with tempfile.TemporaryDirectory(prefix="wallet-test-pg-") as folder:
        server = pgserver.get_server(Path(folder) / "pgdata", cleanup_mode="delete")
        url = server.get_uri()
        # A throwaway server: durability buys nothing here, speed does.
        with psycopg.connect(url, autocommit=True) as connection:
            connection.execute("ALTER SYSTEM SET fsync = off")
            connection.execute("ALTER SYSTEM SET synchronous_commit = off")
            connection.execute("ALTER SYSTEM SET full_page_writes = off")
            connection.execute("SELECT pg_reload_conf()")
        try:
            yield url
        finally:
            server.cleanup()


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    with _postgres_server() as url:
        yield url


def bootstrap_roles(url: str) -> None:
    """sql/bootstrap/roles.sql as its operator runs it, plus the test passwords."""
    with psycopg.connect(url, autocommit=True) as connection:
        connection.execute(BOOTSTRAP_ROLES.read_text())
        with connection.transaction():
            connection.execute("SELECT pg_advisory_xact_lock(%s)", (ROLES_LOCK_KEY,))
            for role, password in TEST_PASSWORDS.items():
                if connection.execute(
                    "SELECT rolpassword IS NULL FROM pg_authid WHERE rolname = %s", (role,)
                ).fetchone()[0]:
                    connection.execute(
                        sql.SQL("ALTER ROLE {} PASSWORD {}").format(
                            sql.Identifier(role), sql.Literal(password)
                        )
                    )


@pytest.fixture(scope="session")
def logins(postgres_url: str) -> dict[str, str]:
    """URLs of the server's maintenance database for the bootstrap logins tests use, by role."""
    bootstrap_roles(postgres_url)
    return {role: with_user(postgres_url, role, password) for role, password in TEST_PASSWORDS.items()}


@pytest.fixture(scope="session")
def owner_url(logins: dict[str, str]) -> str:
    """The server's maintenance database, logged in as the ledger's least-privileged owner."""
    return logins[OWNER_ROLE]


@pytest.fixture(scope="session")
def template_database(postgres_url: str, owner_url: str) -> Iterator[str]:
    """The name of a database with every migration, sql/ and the post-deploy steps applied by
    the owner: the suite runs on the schema this release has once its rollout is done."""
    name = unique_name("wallet_template")
    create_database(postgres_url, name, owner=OWNER_ROLE)
    migrate(with_database(owner_url, name), post=True)
    yield name
    drop_database(postgres_url, name)


@pytest.fixture
def database_url(postgres_url: str, template_database: str) -> Iterator[str]:
    """A fresh, migrated database of this test's own."""
    with cloned_database(postgres_url, template_database, owner=OWNER_ROLE) as url:
        yield url


@pytest.fixture
def db(database_url: str) -> Iterator[psycopg.Connection]:
    """A superuser connection to this test's database, in autocommit."""
    with psycopg.connect(database_url, autocommit=True) as connection:
        yield connection


@pytest.fixture
async def pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    """An asyncpg pool (the API's driver) of up to 70 connections to this test's database."""
    async with asyncpg.create_pool(database_url, min_size=0, max_size=70) as connection_pool:
        yield connection_pool


@pytest.fixture(scope="session")
def token() -> TokenFactory:
    """token(*scopes, sub=..., owner_id=..., ttl_seconds=...): a valid token for the servers the
    tests start; every scope by default."""
    return make_token


@pytest.fixture
def fresh_api(database_url: str, tmp_path: Path) -> Iterator[str]:
    """The base URL of a `wallet serve` of this test's own, on this test's own database."""
    with api_server(database_url, log_path=tmp_path / "serve.log") as server:
        yield server.base_url


@pytest.fixture
def http(fresh_api: str, token: TokenFactory) -> Iterator[httpx.Client]:
    """An HTTP client on fresh_api, authenticated as a service with every scope."""
    with httpx.Client(base_url=fresh_api, headers=bearer(token()), timeout=30) as client:
        yield client


# What every worker of the tests runs with, unless a test says otherwise.
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


@pytest.fixture
def workers(database_url: str, tmp_path: Path) -> Iterator[Workers]:
    """`workers.start(**settings)` starts a `wallet worker` on this test's database (settings:
    WALLET_* variables as strings over WORKER_SETTINGS); `workers.wait_until(...)` polls a
    condition and fails at once if a worker dies unasked. All are stopped at the end."""
    group = Workers(database_url, tmp_path, **WORKER_SETTINGS)
    try:
        yield group
    finally:
        group.close()
