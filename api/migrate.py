"""`wallet migrate`: yoyo migrations (tables, roles, procrastinate), then every file of sql/.

sql/ holds the ledger functions as CREATE OR REPLACE statements and is re-applied on every
run, so the functions in the database are always what sql/ says. The whole run holds an
advisory lock, so two processes migrating at once take turns.
"""

from __future__ import annotations

import importlib.metadata
import importlib.resources
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg
from yoyo import get_backend, read_migrations

ROOT = Path(__file__).resolve().parent.parent
MIGRATIONS_DIR = ROOT / "migrations"
SQL_DIR = ROOT / "sql"

# pg_advisory_lock key: "wallet migrate" as a number, so DBAs can spot it in pg_locks.
MIGRATION_LOCK_KEY = 0x77616C6C6574  # b"wallet"


def migrate(url: str) -> list[str]:
    """Bring the database at url up to date; returns the names of the migrations applied."""
    with psycopg.connect(url, autocommit=True) as lock_connection:
        lock_connection.execute("SELECT pg_advisory_lock(%s)", (MIGRATION_LOCK_KEY,))
        try:
            applied = apply_migrations(url)
            apply_sql_functions(lock_connection)
        finally:
            lock_connection.execute("SELECT pg_advisory_unlock(%s)", (MIGRATION_LOCK_KEY,))
    return applied


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
    return sorted(SQL_DIR.glob("*.sql"))


def apply_sql_functions(connection: psycopg.Connection) -> None:
    """Re-apply every file of sql/ in one transaction: all of them or none."""
    with connection.transaction():
        for path in sql_files():
            connection.execute(path.read_text())


def apply_procrastinate_schema(connection) -> None:
    """yoyo step: procrastinate's schema for the installed (pinned) release, recorded by version."""
    version = importlib.metadata.version("procrastinate")
    schema = importlib.resources.files("procrastinate.sql").joinpath("schema.sql").read_text()
    cursor = connection.cursor()
    cursor.execute(
        """
        CREATE TABLE wallet.components (
            name        text PRIMARY KEY,
            version     text NOT NULL,
            applied_at  timestamptz NOT NULL DEFAULT now()
        )
        """
    )
    cursor.execute(schema)
    cursor.execute("INSERT INTO wallet.components (name, version) VALUES ('procrastinate', %s)", (version,))
    # The API and the worker (wallet_app) use the queue; they own none of its objects.
    cursor.execute(
        """
        DO $$
        DECLARE
            v_object record;
        BEGIN
            FOR v_object IN
                SELECT format('%I.%I', n.nspname, c.relname) AS name, c.relkind
                FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                WHERE c.relname LIKE 'procrastinate\\_%' AND c.relkind IN ('r', 'S')
                  AND n.nspname = current_schema()
            LOOP
                IF v_object.relkind = 'r' THEN
                    EXECUTE format('GRANT SELECT, INSERT, UPDATE, DELETE ON %s TO wallet_app', v_object.name);
                ELSE
                    EXECUTE format('GRANT USAGE, SELECT ON SEQUENCE %s TO wallet_app', v_object.name);
                END IF;
            END LOOP;
            FOR v_object IN
                SELECT p.oid::regprocedure AS name
                FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
                WHERE p.proname LIKE 'procrastinate\\_%' AND n.nspname = current_schema()
            LOOP
                EXECUTE format('GRANT EXECUTE ON FUNCTION %s TO wallet_app', v_object.name);
            END LOOP;
        END
        $$
        """
    )


def _yoyo_url(url: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(("postgresql+psycopg", *parts[1:]))
