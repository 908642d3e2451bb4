"""`wallet migrate`: yoyo migrations (tables, roles, procrastinate), then every file of sql/,
in one transaction; with --post, then the post-deploy steps of migrations/post/ too.

sql/ holds the ledger functions as CREATE OR REPLACE statements and is re-applied on every
run, so the functions in the database are always what sql/ says. The pending migrations and
sql/ are applied in ONE transaction on one connection: every session sees the database
either as it was or with all of it applied, never a function dropped by a migration and not
yet re-created by sql/, and a failure anywhere leaves nothing applied.

Rolling deploys (README, "Upgrades and rolling deploys"): `wallet migrate` runs before the
new release rolls out, while the previous release's pods keep calling the database, so it
only adds: new tables, columns and new versions of functions (`wallet.deposit_v2` beside
`wallet.deposit`). A run that would remove or change something that existed before it (a
function, its result type or EXECUTE grant, a table, a column or its type, a schema
privilege) fails and applies nothing. What only the previous release used is removed by the
post-deploy steps, yoyo migrations in migrations/post/ whose ids start with `post_`, applied
once each (yoyo records them as it records the others) by `wallet migrate --post`, after
the rollout, when no pod of the previous release runs any more. A database that still lacks
a migration from before this rule (up to 0008, release v0.1.0) is upgraded unchecked.

The whole run holds an advisory lock, so two processes migrating at once take turns; a run
that cannot get it within its lock timeout gives up and names the session holding it.

Name resolution (the migration runs as the ledger's owner, often where others may create
objects in public): sql/ is applied with an empty search_path, so it resolves nothing
through public and an unqualified name in it fails instead of binding to what public
holds. What remains on public is yoyo's: yoyo names its bookkeeping tables
(_yoyo_migration, _yoyo_log, _yoyo_version, yoyo_lock) unqualified and keeps them in
public, and migration 0003 creates procrastinate's schema in the current schema (0007
then moves it to schema procrastinate); so the session's search_path is exactly public
(pg_catalog is still searched first) for the migrations, and migrations name their own
objects qualified.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import psycopg
from psycopg.conninfo import conninfo_to_dict
from yoyo import get_backend, read_migrations
from yoyo.backends import DatabaseBackend
from yoyo.migrations import Migration, MigrationList, PostApplyHookMigration


def _schema_folder(name: str) -> Path:
    """migrations/ or sql/: inside the package in a wheel (pyproject.toml's force-include puts
    them there), else at the top of the source tree, as an editable install sees them."""
    package = Path(__file__).resolve().parent
    packaged = package / "_schema" / name
    return packaged if packaged.is_dir() else package.parent / name


MIGRATIONS_DIR = _schema_folder("migrations")
# Post-deploy steps: applied only by `wallet migrate --post`. yoyo reads no subfolder of
# MIGRATIONS_DIR, so a plain run never sees them.
POST_MIGRATIONS_DIR = MIGRATIONS_DIR / "post"
POST_STEP_PREFIX = "post_"
SQL_DIR = _schema_folder("sql")

# The additive rule holds from the first migration after release v0.1.0 on. A database that
# still lacks an older one was never deployed by a release that follows it: its upgrade is
# not a rolling deploy, and those migrations replace what they change.
FIRST_MIGRATION_OF_THE_ADDITIVE_RULE = "0009"
# What the additive rule protects: everything the previous release's code can reach.
GUARDED_SCHEMAS = ("wallet", "procrastinate")

# pg_advisory_lock key: "wallet migrate" as a number, so DBAs can spot it in pg_locks
# (locktype advisory, classid 0x7761, objid 0x6c6c6574, objsubid 1).
MIGRATION_LOCK_KEY = 0x77616C6C6574  # b"wallet"
# How long a run waits for another one (or anything else holding the key) by default.
DEFAULT_LOCK_TIMEOUT_SECONDS = 60.0
APPLICATION_NAME = "wallet migrate"


class MigrationLockTimeout(Exception):
    """The migration lock stayed held for the whole lock timeout; str() names the holder."""


class MigrationNotAdditive(Exception):
    """A run without --post would have removed or changed what the running release may use;
    it was rolled back. str() names what, and where such a change belongs."""


class UnsupportedMigration(Exception):
    """A migration that cannot run in the one transaction, or a misplaced post-deploy step."""


@dataclass(frozen=True)
class MigrationRun:
    """What one `wallet migrate` run did."""

    applied: list[str]  # migrations of migrations/, in the order applied
    post_applied: list[str]  # post-deploy steps (only with post=True)
    post_pending: list[str]  # post-deploy steps left for `wallet migrate --post`


def migrate(url: str, lock_timeout: float = DEFAULT_LOCK_TIMEOUT_SECONDS, *, post: bool = False) -> list[str]:
    """Bring the database at url up to date; returns the ids of the migrations applied (and,
    with post, of the post-deploy steps applied after them). See run_migrations."""
    run = run_migrations(url, lock_timeout, post=post)
    return [*run.applied, *run.post_applied]


def run_migrations(
    url: str, lock_timeout: float = DEFAULT_LOCK_TIMEOUT_SECONDS, *, post: bool = False
) -> MigrationRun:
    """Apply the pending migrations and every file of sql/ (and with post, then the pending
    post-deploy steps) in one transaction, under the migration lock.

    Raises MigrationLockTimeout when another session holds the migration lock for longer
    than lock_timeout seconds, and MigrationNotAdditive when a run without post would remove
    or change what existed before it (nothing is applied then).
    """
    backend = get_backend(_yoyo_url(url))
    connection = backend.connection
    try:
        acquire_migration_lock(connection, lock_timeout)
        try:
            with backend.lock():
                return _apply(backend, post)
        finally:
            if not connection.broken:  # else the lock went with the session
                connection.execute("SELECT pg_catalog.pg_advisory_unlock(%s)", (MIGRATION_LOCK_KEY,))
    finally:
        connection.close()


def _apply(backend: DatabaseBackend, post: bool) -> MigrationRun:
    migrations = read_migrations(str(MIGRATIONS_DIR))
    post_steps = _post_steps(migrations)
    pending = backend.to_apply(migrations)
    post_pending = backend.to_apply(post_steps)
    _check_transactional([*pending, *migrations.post_apply, *post_pending, *post_steps.post_apply])
    # Removing is for --post; and a database from before the rule is upgraded unchecked.
    guarded = not post and all(m.id >= FIRST_MIGRATION_OF_THE_ADDITIVE_RULE for m in pending)
    connection: psycopg.Connection = backend.connection
    # yoyo runs each migration in a savepoint of this transaction (its transaction manager
    # nests), on this connection, and records it in the same transaction.
    with backend.transaction():
        before = _contract(connection) if guarded else set()
        for migration in pending:
            _apply_one(backend, migration)
        connection.execute("SELECT pg_catalog.set_config('search_path', '', true)")
        _execute_sql_files(connection, sql_files())
        connection.execute("SELECT pg_catalog.set_config('search_path', 'public', true)")
        if guarded:
            removed = before - _contract(connection)
            if removed:
                raise MigrationNotAdditive(_describe_removed(removed))
        if post:
            for step in post_pending:
                _apply_one(backend, step)
    return MigrationRun(
        applied=[m.id for m in pending],
        post_applied=[m.id for m in post_pending] if post else [],
        post_pending=[] if post else [m.id for m in post_pending],
    )


def _post_steps(migrations: MigrationList) -> MigrationList:
    """The post-deploy steps of POST_MIGRATIONS_DIR (none when the folder is missing)."""
    if not POST_MIGRATIONS_DIR.is_dir():
        return MigrationList()
    steps = read_migrations(str(POST_MIGRATIONS_DIR))
    misnamed = [step.id for step in steps if not step.id.startswith(POST_STEP_PREFIX)]
    if misnamed:
        raise UnsupportedMigration(
            f"post-deploy steps in {POST_MIGRATIONS_DIR} must be named {POST_STEP_PREFIX}<number>_<what>"
            f" (their ids share yoyo's record with the migrations): {', '.join(misnamed)}"
        )
    misplaced = [m.id for m in migrations if m.id.startswith(POST_STEP_PREFIX)]
    if misplaced:
        raise UnsupportedMigration(
            f"{', '.join(misplaced)}: a post-deploy step belongs in {POST_MIGRATIONS_DIR}"
        )
    return steps


def _check_transactional(migrations: Iterable[Migration]) -> None:
    for migration in migrations:
        if isinstance(migration, PostApplyHookMigration):
            raise UnsupportedMigration(f"{migration.id}: yoyo's post-apply hooks are not supported")
        migration.load()
        if not migration.use_transactions:
            raise UnsupportedMigration(
                f"{migration.id} is not transactional; `wallet migrate` applies every migration in one"
                " transaction (CREATE INDEX CONCURRENTLY and the like go in a separate, manual step)"
            )


def _apply_one(backend: DatabaseBackend, migration: Migration) -> None:
    """yoyo's apply_one, but on this connection and in the current transaction (yoyo's own
    applies each migration on a connection of its own and commits it)."""
    migration.process_steps(backend, "apply")
    backend.log_migration(migration, "apply")
    backend.mark_one(migration, log=False)


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


def sql_files() -> list[Path]:
    """The files `wallet migrate` re-applies: sql/*.sql, not sql/bootstrap/ (run once, by hand)."""
    return sorted(SQL_DIR.glob("*.sql"))


def apply_sql_functions(connection: psycopg.Connection, files: Iterable[Path] | None = None) -> None:
    """Re-apply every file of sql/ in a transaction of its own: all of them or none.
    (`wallet migrate` applies them in its own transaction, after the migrations.)"""
    with connection.transaction():
        _execute_sql_files(connection, sql_files() if files is None else files)


def _execute_sql_files(connection: psycopg.Connection, files: Iterable[Path]) -> None:
    for path in files:
        connection.execute(path.read_text())


# --- the additive rule ----------------------------------------------------------------------

# What the previous release's code may rely on, one (kind, object, detail) row each: every
# function with its result type, every relation with its kind, every column with its type,
# and every privilege on them and on the schemas. A run without --post may add rows, never
# lose one. Names are printed with an empty search_path, so they come schema-qualified.
CONTRACT_QUERY = """
WITH guarded AS (
    SELECT oid FROM pg_catalog.pg_namespace WHERE nspname = ANY(%(schemas)s)
)
SELECT 'function', p.oid::pg_catalog.regprocedure::text,
       'returning ' || pg_catalog.pg_get_function_result(p.oid)
FROM pg_catalog.pg_proc AS p WHERE p.pronamespace IN (SELECT oid FROM guarded)
UNION ALL
SELECT 'EXECUTE on function', p.oid::pg_catalog.regprocedure::text,
       'to ' || CASE a.grantee WHEN 0 THEN 'PUBLIC' ELSE a.grantee::pg_catalog.regrole::text END
FROM pg_catalog.pg_proc AS p,
     LATERAL pg_catalog.aclexplode(coalesce(p.proacl, pg_catalog.acldefault('f', p.proowner))) AS a
WHERE p.pronamespace IN (SELECT oid FROM guarded)
UNION ALL
SELECT CASE c.relkind WHEN 'r' THEN 'table' WHEN 'p' THEN 'table' WHEN 'v' THEN 'view'
                      WHEN 'm' THEN 'materialized view' WHEN 'S' THEN 'sequence'
                      ELSE 'composite type' END,
       c.oid::pg_catalog.regclass::text, ''
FROM pg_catalog.pg_class AS c
WHERE c.relnamespace IN (SELECT oid FROM guarded) AND c.relkind IN ('r', 'p', 'v', 'm', 'S', 'c')
UNION ALL
SELECT 'column', c.oid::pg_catalog.regclass::text || '.' || pg_catalog.quote_ident(a.attname),
       pg_catalog.format_type(a.atttypid, a.atttypmod)
FROM pg_catalog.pg_class AS c JOIN pg_catalog.pg_attribute AS a ON a.attrelid = c.oid
WHERE c.relnamespace IN (SELECT oid FROM guarded) AND c.relkind IN ('r', 'p', 'v', 'm', 'c')
  AND a.attnum > 0 AND NOT a.attisdropped
UNION ALL
SELECT a.privilege_type || ' on ' || CASE c.relkind WHEN 'S' THEN 'sequence' ELSE 'relation' END,
       c.oid::pg_catalog.regclass::text,
       'to ' || CASE a.grantee WHEN 0 THEN 'PUBLIC' ELSE a.grantee::pg_catalog.regrole::text END
FROM pg_catalog.pg_class AS c,
     LATERAL pg_catalog.aclexplode(coalesce(c.relacl, pg_catalog.acldefault(
         (CASE c.relkind WHEN 'S' THEN 's' ELSE 'r' END)::"char", c.relowner))) AS a
WHERE c.relnamespace IN (SELECT oid FROM guarded) AND c.relkind IN ('r', 'p', 'v', 'm', 'S')
UNION ALL
SELECT 'type', t.oid::pg_catalog.regtype::text,
       CASE t.typtype WHEN 'd' THEN 'domain over ' || pg_catalog.format_type(t.typbasetype, t.typtypmod)
                      ELSE 'enum' END
FROM pg_catalog.pg_type AS t
WHERE t.typnamespace IN (SELECT oid FROM guarded) AND t.typtype IN ('d', 'e')
UNION ALL
SELECT 'enum value', e.enumtypid::pg_catalog.regtype::text, e.enumlabel::text
FROM pg_catalog.pg_enum AS e JOIN pg_catalog.pg_type AS t ON t.oid = e.enumtypid
WHERE t.typnamespace IN (SELECT oid FROM guarded)
UNION ALL
SELECT a.privilege_type || ' on schema', pg_catalog.quote_ident(n.nspname),
       'to ' || CASE a.grantee WHEN 0 THEN 'PUBLIC' ELSE a.grantee::pg_catalog.regrole::text END
FROM pg_catalog.pg_namespace AS n,
     LATERAL pg_catalog.aclexplode(coalesce(n.nspacl, pg_catalog.acldefault('n', n.nspowner))) AS a
WHERE n.oid IN (SELECT oid FROM guarded)
"""


def _contract(connection: psycopg.Connection) -> set[tuple[str, str, str]]:
    (search_path,) = connection.execute("SELECT pg_catalog.current_setting('search_path')").fetchone()
    connection.execute("SELECT pg_catalog.set_config('search_path', '', true)")
    rows = connection.execute(CONTRACT_QUERY, {"schemas": list(GUARDED_SCHEMAS)}).fetchall()
    connection.execute("SELECT pg_catalog.set_config('search_path', %s, true)", (search_path,))
    return {(kind, name, detail) for kind, name, detail in rows}


def _describe_removed(removed: set[tuple[str, str, str]]) -> str:
    listed = "; ".join(" ".join(part for part in row if part) for row in sorted(removed))
    return (
        "rolled back, nothing applied: the previous release may still use what this run would remove"
        f" or change: {listed}. Add a new version beside it instead (e.g. name_v2), and remove the old"
        " one in a post-deploy step (migrations/post/, applied by `wallet migrate --post` after the"
        " rollout)"
    )


def _yoyo_url(url: str) -> str:
    """yoyo's driver, a search_path of public alone (see the module docstring) and, unless
    the URL names one, the application_name the migration lock's holder is known by."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    options = " ".join(value for name, value in query if name == "options")
    query = [(name, value) for name, value in query if name != "options"]
    query.append(("options", f"{options} -c search_path=public".strip()))
    query += _application_name(url).items()
    return urlunsplit(("postgresql+psycopg", parts.netloc, parts.path, urlencode(query), parts.fragment))
