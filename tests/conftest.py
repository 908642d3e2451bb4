"""A real PostgreSQL for every test that touches data.

Where the server comes from, in order: WALLET_TEST_DATABASE_URL; else a testcontainers
PostgreSQL when a Docker engine answers; else an embedded PostgreSQL (pgserver) in a
temporary folder. One database is migrated once per session as a template, and every
test gets its own clone of it (CREATE DATABASE ... TEMPLATE), so tests are isolated and
fast.

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
import uuid
import warnings
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import psycopg
import pytest
from psycopg import sql

from core.database import with_database, with_user
from core.migrate import migrate
from core.settings import normalize_database_url

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
    """The name of a database with every migration and sql/ applied by the owner."""
    name = f"wallet_template_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(postgres_url, autocommit=True) as connection:
        connection.execute(f'CREATE DATABASE "{name}" OWNER {OWNER_ROLE}')
    migrate(with_database(owner_url, name))
    yield name
    with psycopg.connect(postgres_url, autocommit=True) as connection:
        connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def database_url(postgres_url: str, template_database: str) -> Iterator[str]:
    """A fresh, migrated database of this test's own."""
    name = f"wallet_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(postgres_url, autocommit=True) as connection:
        connection.execute(f'CREATE DATABASE "{name}" OWNER {OWNER_ROLE} TEMPLATE "{template_database}"')
    yield with_database(postgres_url, name)
    with psycopg.connect(postgres_url, autocommit=True) as connection:
        connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


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
