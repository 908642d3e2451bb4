"""`wallet migrate`: yoyo migrations (tables, roles, procrastinate), then every file of sql/.

sql/ holds the ledger functions as CREATE OR REPLACE statements and is re-applied on every
run, so the functions in the database are always what sql/ says. The whole run holds an
advisory lock, so two processes migrating at once take turns; a run that cannot get it
within its lock timeout gives up and names the session holding it.

Name resolution (the migration runs as the ledger's owner, often where others may create
objects in public): sql/ is applied with an empty search_path, so it resolves nothing
through public and an unqualified name in it fails instead of binding to what public
holds. What remains on public is yoyo's session: yoyo names its bookkeeping tables
(_yoyo_migration, _yoyo_log, _yoyo_version, yoyo_lock) unqualified and keeps them in
public, and migration 0003 creates procrastinate's schema in the current schema (0007
then moves it to schema procrastinate); so that session's search_path is exactly public
(pg_catalog is still searched first), and migrations name their own objects qualified.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import psycopg
from psycopg.conninfo import conninfo_to_dict
from yoyo import get_backend, read_migrations


def _schema_folder(name: str) -> Path:
    """migrations/ or sql/: inside the package in a wheel (pyproject.toml's force-include puts
    them there), else at the top of the source tree, as an editable install sees them."""
    package = Path(__file__).resolve().parent
    packaged = package / "_schema" / name
    return packaged if packaged.is_dir() else package.parent / name


MIGRATIONS_DIR = _schema_folder("migrations")
SQL_DIR = _schema_folder("sql")

# pg_advisory_lock key: "wallet migrate" as a number, so DBAs can spot it in pg_locks
# (locktype advisory, classid 0x7761, objid 0x6c6c6574, objsubid 1).
MIGRATION_LOCK_KEY = 0x77616C6C6574  # b"wallet"
# How long a run waits for another one (or anything else holding the key) by default.
DEFAULT_LOCK_TIMEOUT_SECONDS = 60.0
APPLICATION_NAME = "wallet migrate"


class MigrationLockTimeout(Exception):
    """The migration lock stayed held for the whole lock timeout; str() names the holder."""


def migrate(url: str, lock_timeout: float = DEFAULT_LOCK_TIMEOUT_SECONDS) -> list[str]:
    """Bring the database at url up to date; returns the names of the migrations applied.

    Raises MigrationLockTimeout when another session holds the migration lock for longer
    than lock_timeout seconds.
    """
    with psycopg.connect(url, autocommit=True, **_application_name(url)) as lock_connection:
        lock_connection.execute("SELECT pg_catalog.set_config('search_path', '', false)")
        acquire_migration_lock(lock_connection, lock_timeout)
        try:
            applied = apply_migrations(url)
            apply_sql_functions(lock_connection)
        finally:
            lock_connection.execute("SELECT pg_catalog.pg_advisory_unlock(%s)", (MIGRATION_LOCK_KEY,))
    return applied


def acquire_migration_lock(connection: psycopg.Connection, timeout: float) -> None:
    """Take the session-level migration lock, waiting at most timeout seconds (0: not at all)."""
    milliseconds = max(1, round(timeout * 1000))  # lock_timeout 0 would mean wait forever
    try:
        with connection.transaction():
            # SET LOCAL: only this wait is bounded, not the statements of the migration.
            connection.execute(
                "SELECT pg_catalog.set_config('lock_timeout', %s, true)", (f"{milliseconds}ms",)
            )
            # A session-level lock taken in a transaction outlives its commit.
            connection.execute("SELECT pg_catalog.pg_advisory_lock(%s)", (MIGRATION_LOCK_KEY,))
    except psycopg.errors.LockNotAvailable:
        raise MigrationLockTimeout(
            f"gave up after {timeout:g} s waiting for the migration lock"
            f" (advisory lock {MIGRATION_LOCK_KEY}); {describe_lock_holders(connection)}"
        ) from None


def describe_lock_holders(connection: psycopg.Connection) -> str:
    """Who holds the migration lock in this database, from pg_locks and pg_stat_activity.

    A role without pg_read_all_stats sees another role's client address and times as NULL:
    they are then reported as hidden (pid, user and application_name are always shown).
    """
    holders = connection.execute(
        """
        SELECT a.pid, a.usename, a.application_name, host(a.client_addr), a.client_port,
               a.backend_start, a.state, a.state_change
        FROM pg_catalog.pg_locks AS l
        JOIN pg_catalog.pg_stat_activity AS a ON a.pid = l.pid
        WHERE l.locktype = 'advisory' AND l.granted
          AND l.database = (SELECT oid FROM pg_catalog.pg_database
                            WHERE datname = pg_catalog.current_database())
          AND l.classid = %s::oid AND l.objid = %s::oid AND l.objsubid = 1
        ORDER BY a.pid
        """,
        (MIGRATION_LOCK_KEY >> 32, MIGRATION_LOCK_KEY & 0xFFFFFFFF),
    ).fetchall()
    if not holders:
        return "its holder has released it since; run again"
    return "; ".join(_describe_holder(*holder) for holder in holders)


def _describe_holder(pid, user, application, address, port, connected_at, state, state_since) -> str:
    who = f"held by pid {pid} (user {user}, application_name {application!r}"
    if connected_at is None:
        return f"{who}; its client and times are hidden from this role, which pg_read_all_stats would show)"
    client = "a local socket" if address is None else f"{address}:{port}"
    state_text = "" if state_since is None else f", {state} since {state_since.isoformat(timespec='seconds')}"
    return (
        f"{who}, client {client}, connected since {connected_at.isoformat(timespec='seconds')}{state_text})"
    )


def _application_name(url: str) -> dict[str, str]:
    """Name this session in pg_stat_activity, unless the URL names it already."""
    return {} if "application_name" in conninfo_to_dict(url) else {"application_name": APPLICATION_NAME}


def apply_migrations(url: str) -> list[str]:
    backend = get_backend(_yoyo_url(url))
    try:
        migrations = read_migrations(str(MIGRATIONS_DIR))
        with backend.lock():
            pending = backend.to_apply(migrations)
            backend.apply_migrations(pending)
        return [migration.id for migration in pending]
    finally:
        backend.connection.close()


def sql_files() -> list[Path]:
    """The files `wallet migrate` re-applies: sql/*.sql, not sql/bootstrap/ (run once, by hand)."""
    return sorted(SQL_DIR.glob("*.sql"))


def apply_sql_functions(connection: psycopg.Connection, files: Iterable[Path] | None = None) -> None:
    """Re-apply every file of sql/ in one transaction: all of them or none."""
    with connection.transaction():
        for path in sql_files() if files is None else files:
            connection.execute(path.read_text())


def _yoyo_url(url: str) -> str:
    """yoyo's driver, and a search_path of public alone (see the module docstring)."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    options = " ".join(value for name, value in query if name == "options")
    query = [(name, value) for name, value in query if name != "options"]
    query.append(("options", f"{options} -c search_path=public".strip()))
    return urlunsplit(("postgresql+psycopg", parts.netloc, parts.path, urlencode(query), parts.fragment))
