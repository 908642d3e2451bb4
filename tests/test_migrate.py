"""`wallet migrate` as production runs it: as a least-privileged owner, moving an existing
queue out of public, never blocked forever by whoever holds its lock, and resolving
nothing through public where it can avoid it; the migrations and sql/ in one transaction,
adding only before a rollout, and the post-deploy steps only under --post, once each
(tests/upgrade/ runs the previous release against it).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import psycopg
import pytest
from psycopg.rows import dict_row
from yoyo import get_backend, read_migrations

import core.migrate
from cli.main import EXIT_MIGRATION_LOCKED, build_parser, main
from core.database import with_database
from core.migrate import (
    MIGRATION_LOCK_KEY,
    MIGRATIONS_DIR,
    MigrationLockTimeout,
    MigrationNotAdditive,
    UnsupportedMigration,
    _yoyo_url,
    acquire_migration_lock,
    migrate,
    run_migrations,
)

ROOT = Path(__file__).resolve().parents[1]
BOOTSTRAP_ROLES = ROOT / "sql" / "bootstrap" / "roles.sql"
BOOTSTRAP_LOGINS = {"wallet_owner", "wallet_api", "wallet_worker", "wallet_audit"}
FIRST_MIGRATION_OF_THE_QUEUE_SCHEMA = "0007_procrastinate_schema"


def rows(connection: psycopg.Connection, query: str, *params: object) -> list[dict]:
    with connection.cursor(row_factory=dict_row) as cursor:
        return cursor.execute(query, params or None).fetchall()


def all_migration_ids() -> list[str]:
    return sorted(migration.id for migration in read_migrations(str(MIGRATIONS_DIR)))


@pytest.fixture
def empty_owned_database(postgres_url: str, owner_url: str) -> Iterator[str]:
    """The URL, logged in as wallet_owner, of an empty database it owns: a new install."""
    name = f"wallet_empty_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(postgres_url, autocommit=True) as connection:
        connection.execute(f'CREATE DATABASE "{name}" OWNER wallet_owner')
    yield with_database(owner_url, name)
    with psycopg.connect(postgres_url, autocommit=True) as connection:
        connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def as_superuser(url: str, postgres_url: str) -> str:
    """The same database as url, logged in as the test server's superuser."""
    return with_database(postgres_url, urlsplit(url).path.lstrip("/"))


def queue_catalog(connection: psycopg.Connection) -> list[dict]:
    """procrastinate's objects: where they are, who owns them, who may use them."""
    return rows(
        connection,
        """
        SELECT 'relation' AS kind, c.relname::text AS name, c.relnamespace::regnamespace::text AS schema,
               c.relowner::regrole::text AS owner, c.relacl::text AS acl
        FROM pg_class AS c WHERE c.relname LIKE 'procrastinate%%'
        UNION ALL
        SELECT 'function', p.oid::regprocedure::text, p.pronamespace::regnamespace::text,
               p.proowner::regrole::text, p.proacl::text
        FROM pg_proc AS p WHERE p.proname LIKE 'procrastinate%%'
        UNION ALL
        SELECT 'type', t.typname::text, t.typnamespace::regnamespace::text, t.typowner::regrole::text,
               t.typacl::text
        FROM pg_type AS t WHERE t.typname LIKE '%%procrastinate%%'
        UNION ALL
        SELECT 'schema', n.nspname::text, n.nspname::text, n.nspowner::regrole::text, n.nspacl::text
        FROM pg_namespace AS n WHERE n.nspname = 'procrastinate'
        ORDER BY 1, 2
        """,
    )


# --- item 3: a least-privileged owner ---------------------------------------------------------


def test_the_suite_runs_on_a_schema_built_by_an_owner_without_superuser_or_createrole(db):
    owner = rows(
        db, "SELECT rolsuper, rolcreaterole, rolcreatedb FROM pg_roles WHERE rolname = 'wallet_owner'"
    )
    owners = rows(
        db,
        """
        SELECT DISTINCT owner FROM (
            SELECT nspowner::regrole::text AS owner FROM pg_namespace
            WHERE nspname IN ('wallet', 'procrastinate')
            UNION ALL
            SELECT relowner::regrole::text FROM pg_class
            WHERE relnamespace IN ('wallet'::regnamespace, 'procrastinate'::regnamespace)
               OR relname IN ('_yoyo_migration', '_yoyo_log', '_yoyo_version', 'yoyo_lock')
            UNION ALL
            SELECT proowner::regrole::text FROM pg_proc
            WHERE pronamespace IN ('wallet'::regnamespace, 'procrastinate'::regnamespace)
        ) AS owned
        """,
    )

    assert owner == [{"rolsuper": False, "rolcreaterole": False, "rolcreatedb": False}]
    assert owners == [{"owner": "wallet_owner"}]


def test_an_owner_without_createrole_migrates_a_new_database_and_again(empty_owned_database, postgres_url):
    first = migrate(empty_owned_database)
    second = migrate(empty_owned_database)

    assert sorted(first) == all_migration_ids()
    assert second == []
    with psycopg.connect(empty_owned_database, autocommit=True) as connection:
        assert connection.execute(
            "SELECT rolsuper OR rolcreaterole FROM pg_roles WHERE rolname = current_user"
        ).fetchone() == (False,)
    with psycopg.connect(as_superuser(empty_owned_database, postgres_url), autocommit=True) as connection:
        connection.execute("SET ROLE wallet_app")
        wallet_id = connection.execute(
            "SELECT id FROM wallet.open_wallet('svc', NULL, NULL, 'merchant-1', NULL, NULL)"
        ).fetchone()[0]
        connection.execute(
            "SELECT wallet.deposit('svc', NULL, NULL, NULL, %s, 500::bigint, NULL, NULL,"
            " now() + interval '1 hour')",
            (wallet_id,),
        )
        assert connection.execute(
            "SELECT pending FROM wallet.get_wallet(NULL, %s)", (wallet_id,)
        ).fetchone() == (500,)


def test_the_bootstrap_is_idempotent_and_two_runs_at_once_both_succeed(postgres_url, database_url):
    bootstrap = BOOTSTRAP_ROLES.read_text()
    errors: list[BaseException] = []

    def run(url: str) -> None:
        try:
            with psycopg.connect(url, autocommit=True) as connection:
                connection.execute(bootstrap)
        except BaseException as error:
            errors.append(error)

    # Two databases: the advisory lock of the file does not serialize them.
    runs = [threading.Thread(target=run, args=(url,)) for url in (postgres_url, database_url)]
    for thread in runs:
        thread.start()
    for thread in runs:
        thread.join(timeout=60)

    with psycopg.connect(postgres_url, autocommit=True) as connection:
        roles = rows(
            connection,
            "SELECT rolname::text AS name, rolcanlogin AS login,"
            "       rolsuper OR rolcreaterole OR rolcreatedb OR rolreplication OR rolbypassrls AS powerful"
            " FROM pg_roles WHERE rolname::text LIKE 'wallet\\_%%' ORDER BY 1",
        )
        memberships = rows(
            connection,
            "SELECT roleid::regrole::text AS granted, member::regrole::text AS member FROM pg_auth_members"
            " WHERE member::regrole::text = ANY(%s) ORDER BY 2, 1",
            sorted(BOOTSTRAP_LOGINS),
        )

    assert errors == []
    assert [(role["name"], role["login"], role["powerful"]) for role in roles] == sorted(
        [
            (name, name in BOOTSTRAP_LOGINS, False)
            for name in (*BOOTSTRAP_LOGINS, "wallet_app", "wallet_auditor")
        ]
    )
    assert [(m["member"], m["granted"]) for m in memberships] == [
        ("wallet_api", "wallet_app"),
        ("wallet_api", "wallet_auditor"),
        ("wallet_audit", "wallet_auditor"),
        ("wallet_worker", "wallet_app"),
    ]


def test_the_auditor_login_has_a_statement_timeout(postgres_url):
    """The audits read the whole ledger (issue 9, item 5); a function cannot bound itself."""
    with psycopg.connect(postgres_url, autocommit=True) as connection:
        settings = connection.execute(
            "SELECT setconfig FROM pg_db_role_setting"
            " WHERE setrole = 'wallet_audit'::regrole AND setdatabase = 0"
        ).fetchone()

    assert settings is not None and "statement_timeout=15min" in settings[0]


def test_migrate_never_reapplies_the_bootstrap():
    # The owner may not create roles: a sql/ file that did would fail every `wallet migrate`.
    assert BOOTSTRAP_ROLES.exists()
    assert BOOTSTRAP_ROLES not in core.migrate.sql_files()
    assert all(path.parent == core.migrate.SQL_DIR for path in core.migrate.sql_files())


def test_the_bootstrap_holds_no_password():
    statements = "\n".join(
        line for line in BOOTSTRAP_ROLES.read_text().splitlines() if not line.lstrip().startswith("--")
    )

    assert "password" not in statements.lower()


# --- item 2: the queue leaves public ----------------------------------------------------------


def test_a_queue_in_public_moves_to_schema_procrastinate_with_its_jobs(
    empty_owned_database, postgres_url, db
):
    backend = get_backend(_yoyo_url(empty_owned_database))
    try:
        earlier = read_migrations(str(MIGRATIONS_DIR)).filter(
            lambda migration: migration.id < FIRST_MIGRATION_OF_THE_QUEUE_SCHEMA
        )
        with backend.lock():
            backend.apply_migrations(backend.to_apply(earlier))
    finally:
        backend.connection.close()
    with psycopg.connect(empty_owned_database, autocommit=True) as connection:
        connection.execute("SET search_path = public")
        [old_job] = connection.execute(
            "SELECT unnest(procrastinate_defer_jobs_v1(ARRAY[ROW('deposits', 'wallet:settle_deposit', 0,"
            " NULL, 'settle-deposit:old', '{\"transaction_id\": \"old\"}', now() + interval '1 hour')"
            "::procrastinate_job_to_defer_v1]))"
        ).fetchone()

    applied = migrate(empty_owned_database)

    with psycopg.connect(empty_owned_database, autocommit=True) as connection:
        moved = rows(
            connection, "SELECT id, queueing_lock, status::text FROM procrastinate.procrastinate_jobs"
        )
        events = connection.execute(
            "SELECT count(*) FROM procrastinate.procrastinate_events WHERE job_id = %s", (old_job,)
        ).fetchone()[0]
        catalog = queue_catalog(connection)
    with psycopg.connect(as_superuser(empty_owned_database, postgres_url), autocommit=True) as connection:
        connection.execute("SET ROLE wallet_app")
        connection.execute("SET search_path = procrastinate")  # as the worker's sessions
        [new_job] = connection.execute(
            "SELECT procrastinate.procrastinate_defer_jobs_v1(ARRAY[ROW('deposits', 'wallet:settle_deposit',"
            " 0, NULL, 'settle-deposit:new', '{}', NULL)::procrastinate.procrastinate_job_to_defer_v1])"
        ).fetchone()[0]

    assert FIRST_MIGRATION_OF_THE_QUEUE_SCHEMA in applied
    assert moved == [{"id": old_job, "queueing_lock": "settle-deposit:old", "status": "todo"}]
    assert events == 2  # deferred, scheduled: procrastinate's history came along
    assert new_job > old_job  # the id sequence moved with its table
    # The same objects, owners and grants as the template (0003 then 0007 on a new install).
    assert catalog == queue_catalog(db)
    assert {(entry["kind"], entry["schema"]) for entry in catalog} == {
        ("relation", "procrastinate"),
        ("function", "procrastinate"),
        ("type", "procrastinate"),
        ("schema", "procrastinate"),
    }


# --- item 9: the migration lock -----------------------------------------------------------------


@pytest.fixture
def lock_holder(database_url: str) -> Iterator[psycopg.Connection]:
    """Another session holding the migration lock of this test's database."""
    with psycopg.connect(database_url, autocommit=True, application_name="lock-holder") as holder:
        holder.execute("SELECT pg_advisory_lock(%s)", (MIGRATION_LOCK_KEY,))
        yield holder


def test_migrate_gives_up_after_its_lock_timeout_and_names_the_holder(database_url, lock_holder):
    holder_pid = lock_holder.info.backend_pid
    holder_user = lock_holder.execute("SELECT current_user").fetchone()[0]
    environment = {key: value for key, value in os.environ.items() if not key.startswith("WALLET_")}
    environment["DATABASE_URL"] = database_url

    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "cli", "migrate", "--lock-timeout", "1.5"],
        cwd=ROOT,
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
    )
    elapsed = time.monotonic() - started

    assert result.returncode == EXIT_MIGRATION_LOCKED, result.stderr
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("wallet migrate: gave up after 1.5 s waiting for the migration lock"), line
    for part in (
        f"pid {holder_pid}",
        f"user {holder_user}",
        "application_name 'lock-holder'",
        "connected since",
    ):
        assert part in line, line
    assert result.stdout == ""
    assert elapsed >= 1.5


def test_a_holder_of_another_role_is_named_with_what_this_role_may_see(database_url, owner_url, lock_holder):
    holder_pid = lock_holder.info.backend_pid
    holder_user = lock_holder.execute("SELECT current_user").fetchone()[0]
    as_owner = with_database(owner_url, urlsplit(database_url).path.lstrip("/"))

    started = time.monotonic()
    with pytest.raises(MigrationLockTimeout) as timeout:
        migrate(as_owner, lock_timeout=0)

    assert time.monotonic() - started < 10  # 0: no wait at all (a lock_timeout of 0 waits forever)
    assert f"held by pid {holder_pid} (user {holder_user}, application_name 'lock-holder';" in str(
        timeout.value
    )
    assert "hidden from this role" in str(timeout.value)


def test_migrate_waits_for_a_holder_that_lets_go_within_the_timeout(database_url, lock_holder):
    release = threading.Timer(
        1.0, lambda: lock_holder.execute("SELECT pg_advisory_unlock(%s)", (MIGRATION_LOCK_KEY,))
    )
    started = time.monotonic()
    release.start()
    try:
        applied = migrate(database_url, lock_timeout=30)
    finally:
        release.join()

    assert applied == []
    assert time.monotonic() - started >= 1.0


def test_the_lock_outlives_its_transaction_and_the_timeout_does_not(database_url):
    with psycopg.connect(database_url, autocommit=True) as connection:
        acquire_migration_lock(connection, 5)

        held = connection.execute(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted AND pid = pg_backend_pid()"
            "   AND classid = %s::oid AND objid = %s::oid AND objsubid = 1",
            (MIGRATION_LOCK_KEY >> 32, MIGRATION_LOCK_KEY & 0xFFFFFFFF),
        ).fetchone()[0]
        lock_timeout = connection.execute("SHOW lock_timeout").fetchone()[0]

    assert (held, lock_timeout) == (1, "0")


def test_the_lock_timeout_is_a_bounded_number_of_seconds():
    parser = build_parser()

    assert parser.parse_args(["migrate"]).lock_timeout == 60
    assert parser.parse_args(["migrate", "--lock-timeout", "0"]).lock_timeout == 0
    for bad in ("-1", "nan", "inf", "86401", "soon"):
        with pytest.raises(SystemExit) as exit_info:
            parser.parse_args(["migrate", "--lock-timeout", bad])
        assert exit_info.value.code == 2, bad
    assert parser.parse_args(["migrate", "--lock-timeout", "2.5"]).lock_timeout == 2.5


# --- the migration's own name resolution ------------------------------------------------------


def test_sql_files_are_applied_with_no_schema_to_create_in(database_url, monkeypatch, tmp_path):
    probe = tmp_path / "unqualified.sql"
    probe.write_text("CREATE TABLE unqualified_probe (id integer);")
    real_files = core.migrate.sql_files()
    monkeypatch.setattr(core.migrate, "sql_files", lambda: [*real_files, probe])

    with pytest.raises(psycopg.errors.InvalidSchemaName):
        migrate(database_url)

    with psycopg.connect(database_url) as connection:
        assert connection.execute("SELECT to_regclass('public.unqualified_probe')").fetchone() == (None,)


def test_yoyo_searches_public_alone_and_keeps_the_urls_own_options(database_url):
    url = f"{database_url}{'&' if '?' in database_url else '?'}options=-c%20statement_timeout%3D4321"
    backend = get_backend(_yoyo_url(url))
    try:
        search_path = backend.execute("SHOW search_path").fetchone()[0]
        statement_timeout = backend.execute("SHOW statement_timeout").fetchone()[0]
    finally:
        backend.connection.close()

    assert (search_path, statement_timeout) == ("public", "4321ms")


# --- issue 10, item 8: one transaction, adding only, and post-deploy steps -----------------------


@pytest.fixture
def as_owner(database_url: str, owner_url: str) -> str:
    """This test's database, logged in as wallet_owner, who migrates it in production."""
    return with_database(owner_url, urlsplit(database_url).path.lstrip("/"))


def migrations_with(tmp_path: Path, **extra: str) -> Path:
    """A copy of migrations/ (without post/) plus extra migrations: {id: SQL}."""
    folder = tmp_path / "migrations"
    shutil.copytree(MIGRATIONS_DIR, folder, ignore=shutil.ignore_patterns("post", "__pycache__", "*.md"))
    for migration_id, text in extra.items():
        (folder / f"{migration_id}.sql").write_text(text)
    return folder


def post_steps(tmp_path: Path, **steps: str) -> Path:
    """A folder of post-deploy steps: {id: SQL}."""
    folder = tmp_path / "post"
    folder.mkdir()
    for step_id, text in steps.items():
        (folder / f"{step_id}.sql").write_text(text)
    return folder


def applied_ids(connection: psycopg.Connection) -> set[str]:
    return {row[0] for row in connection.execute("SELECT migration_id FROM public._yoyo_migration")}


def function_oid(connection: psycopg.Connection, signature: str) -> int | None:
    return connection.execute("SELECT to_regprocedure(%s)::oid", (signature,)).fetchone()[0]


GET_WALLET = "wallet.get_wallet(text, uuid)"
# The incident this guards against: a migration drops a function that sql/ re-creates later.
DROP_GET_WALLET = f"-- depends: 0008_history_indexes\nDROP FUNCTION {GET_WALLET};\n"
PROBE_TABLE = "CREATE TABLE wallet.upgrade_probe (id integer);\n"
WALLET_DEFINITIONS = (
    "SELECT oid, pg_get_functiondef(oid) AS definition, proacl::text AS acl FROM pg_proc"
    " WHERE pronamespace = 'wallet'::regnamespace AND prokind = 'f' ORDER BY oid"
)


def test_a_failing_sql_file_leaves_the_pending_migrations_unapplied_and_the_old_functions_in_place(
    as_owner, db, monkeypatch, tmp_path
):
    broken = tmp_path / "zz_broken.sql"
    broken.write_text("SELECT 1 / 0;")
    real_files = core.migrate.sql_files()
    monkeypatch.setattr(core.migrate, "sql_files", lambda: [*real_files, broken])
    monkeypatch.setattr(
        core.migrate,
        "MIGRATIONS_DIR",
        migrations_with(tmp_path, **{"0998_probe": PROBE_TABLE, "0999_drop_get_wallet": DROP_GET_WALLET}),
    )
    before = function_oid(db, GET_WALLET)
    definitions = rows(
        db,
        "SELECT oid, pg_get_functiondef(oid) FROM pg_proc WHERE pronamespace = 'wallet'::regnamespace"
        " ORDER BY oid",
    )

    with pytest.raises(psycopg.errors.DivisionByZero):
        migrate(as_owner)

    assert not {"0998_probe", "0999_drop_get_wallet"} & applied_ids(db)
    assert db.execute("SELECT to_regclass('wallet.upgrade_probe')").fetchone() == (None,)
    assert function_oid(db, GET_WALLET) == before is not None  # never dropped, not even re-created
    assert (
        rows(
            db,
            "SELECT oid, pg_get_functiondef(oid) FROM pg_proc WHERE pronamespace = 'wallet'::regnamespace"
            " ORDER BY oid",
        )
        == definitions
    )
    # With sql/ fixed, the same run applies (and the failed one let go of the lock).
    monkeypatch.setattr(core.migrate, "sql_files", lambda: real_files)
    assert migrate(as_owner, lock_timeout=0) == ["0998_probe", "0999_drop_get_wallet"]


def test_a_function_dropped_by_a_migration_and_recreated_by_sql_is_never_missing(
    as_owner, db, monkeypatch, tmp_path
):
    """Callers keep calling it while the migration runs (the transaction stays open for a
    while after the drop); every call succeeds, before, during and after the commit."""
    slow = tmp_path / "zz_slow.sql"
    slow.write_text("SELECT pg_sleep(1.5);")
    real_files = core.migrate.sql_files()
    monkeypatch.setattr(core.migrate, "sql_files", lambda: [*real_files, slow])
    monkeypatch.setattr(
        core.migrate, "MIGRATIONS_DIR", migrations_with(tmp_path, **{"0999_drop_get_wallet": DROP_GET_WALLET})
    )
    db.execute("SET ROLE wallet_app")
    wallet_id = db.execute("SELECT id FROM wallet.open_wallet('svc', NULL, NULL, 'shop-1')").fetchone()[0]
    before = function_oid(db, GET_WALLET)
    outcome: list[object] = []
    migration = threading.Thread(target=lambda: outcome.append(migrate(as_owner)))

    calls = 0
    migration.start()
    while migration.is_alive() or calls == 0:
        assert db.execute("SELECT id FROM wallet.get_wallet(NULL, %s)", (wallet_id,)).fetchone() == (
            wallet_id,
        )
        calls += 1
        time.sleep(0.01)
    migration.join()

    assert outcome == [["0999_drop_get_wallet"]]
    assert calls > 20
    assert function_oid(db, GET_WALLET) not in (None, before)  # dropped and created again
    assert db.execute("SELECT id FROM wallet.get_wallet(NULL, %s)", (wallet_id,)).fetchone() == (wallet_id,)


OLD_VERSION = """
CREATE FUNCTION wallet.probe_v1(p_amount bigint) RETURNS bigint LANGUAGE sql AS 'SELECT p_amount';
GRANT EXECUTE ON FUNCTION wallet.probe_v1(bigint) TO wallet_app;
CREATE TABLE wallet.probe (id integer, old_note text);
GRANT SELECT ON wallet.probe TO wallet_app;
ALTER TABLE wallet.probe OWNER TO wallet_owner;
ALTER FUNCTION wallet.probe_v1(bigint) OWNER TO wallet_owner;
"""


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ("DROP FUNCTION wallet.probe_v1(bigint);", "function wallet.probe_v1(bigint) returning bigint"),
        (
            "REVOKE EXECUTE ON FUNCTION wallet.probe_v1(bigint) FROM wallet_app;",
            "EXECUTE on function wallet.probe_v1(bigint) to wallet_app",
        ),
        ("ALTER TABLE wallet.probe DROP COLUMN old_note;", "column wallet.probe.old_note text"),
        ("ALTER TABLE wallet.probe ALTER COLUMN id TYPE bigint;", "column wallet.probe.id integer"),
        ("ALTER TABLE wallet.probe RENAME TO probe_renamed;", "table wallet.probe"),
        ("REVOKE SELECT ON wallet.probe FROM wallet_app;", "SELECT on relation wallet.probe to wallet_app"),
    ],
    ids=[
        "drop-function",
        "revoke-execute",
        "drop-column",
        "change-column-type",
        "rename-table",
        "revoke-select",
    ],
)
def test_a_run_without_post_refuses_to_remove_or_change_and_applies_nothing(
    as_owner, db, monkeypatch, tmp_path, change, named
):
    db.execute(OLD_VERSION)
    monkeypatch.setattr(
        core.migrate,
        "MIGRATIONS_DIR",
        migrations_with(tmp_path, **{"0998_probe": PROBE_TABLE, "0999_change": f"{change}\n"}),
    )
    with pytest.raises(MigrationNotAdditive) as refused:
        migrate(as_owner)

    assert named in str(refused.value)
    assert "migrate --post" in str(refused.value)
    assert not {"0998_probe", "0999_change"} & applied_ids(db)
    assert db.execute("SELECT to_regclass('wallet.upgrade_probe')").fetchone() == (None,)
    assert function_oid(db, "wallet.probe_v1(bigint)") is not None


def test_a_post_deploy_step_runs_only_under_post_and_once(as_owner, db, monkeypatch, tmp_path):
    db.execute(OLD_VERSION)
    db.execute("CREATE TABLE public.post_step_runs (at timestamptz DEFAULT now())")
    db.execute("ALTER TABLE public.post_step_runs OWNER TO wallet_owner")
    monkeypatch.setattr(
        core.migrate,
        "POST_MIGRATIONS_DIR",
        post_steps(
            tmp_path,
            post_0001_drop_probe_v1="INSERT INTO public.post_step_runs DEFAULT VALUES;\n"
            "DROP FUNCTION IF EXISTS wallet.probe_v1(bigint);\n",
        ),
    )

    def runs() -> int:
        return db.execute("SELECT count(*) FROM public.post_step_runs").fetchone()[0]

    before_rollout = run_migrations(as_owner)
    assert (before_rollout.applied, before_rollout.post_applied) == ([], [])
    assert before_rollout.post_pending == ["post_0001_drop_probe_v1"]
    assert runs() == 0 and function_oid(db, "wallet.probe_v1(bigint)") is not None

    assert migrate(as_owner, post=True) == ["post_0001_drop_probe_v1"]
    assert runs() == 1 and function_oid(db, "wallet.probe_v1(bigint)") is None
    assert "post_0001_drop_probe_v1" in applied_ids(db)

    assert migrate(as_owner, post=True) == []
    assert run_migrations(as_owner).post_pending == []
    assert runs() == 1


def test_a_failing_post_step_leaves_the_migrations_of_its_run_unapplied(as_owner, db, monkeypatch, tmp_path):
    monkeypatch.setattr(
        core.migrate, "MIGRATIONS_DIR", migrations_with(tmp_path, **{"0998_probe": PROBE_TABLE})
    )
    monkeypatch.setattr(
        core.migrate, "POST_MIGRATIONS_DIR", post_steps(tmp_path, post_0001_broken="SELECT 1 / 0;\n")
    )

    with pytest.raises(psycopg.errors.DivisionByZero):
        migrate(as_owner, post=True)

    assert not {"0998_probe", "post_0001_broken"} & applied_ids(db)
    assert db.execute("SELECT to_regclass('wallet.upgrade_probe')").fetchone() == (None,)


def test_post_steps_must_be_named_post_and_migrations_must_be_transactional(as_owner, monkeypatch, tmp_path):
    monkeypatch.setattr(
        core.migrate, "POST_MIGRATIONS_DIR", post_steps(tmp_path, **{"0001_drop": "SELECT 1;\n"})
    )
    with pytest.raises(UnsupportedMigration, match="post_<number>_<what>"):
        migrate(as_owner, post=True)

    monkeypatch.setattr(core.migrate, "POST_MIGRATIONS_DIR", tmp_path / "none")
    monkeypatch.setattr(
        core.migrate,
        "MIGRATIONS_DIR",
        migrations_with(tmp_path, **{"0999_concurrently": "-- transactional: false\nSELECT 1;\n"}),
    )
    with pytest.raises(UnsupportedMigration, match="not transactional"):
        migrate(as_owner)


def test_this_release_has_nothing_for_post_yet_and_the_command_says_so(as_owner):
    environment = {key: value for key, value in os.environ.items() if not key.startswith("WALLET_")}
    environment["DATABASE_URL"] = as_owner

    def wallet_migrate(*options: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "cli", "migrate", *options],
            cwd=ROOT,
            env=environment,
            capture_output=True,
            text=True,
            timeout=60,
        )

    before, post, again = wallet_migrate(), wallet_migrate("--post"), wallet_migrate("--post")

    assert [before.returncode, post.returncode, again.returncode] == [0, 0, 0], post.stderr
    assert before.stdout == "migrations applied: none (up to date); sql/ functions re-applied\n"
    assert (
        post.stdout
        == again.stdout
        == (
            "migrations applied: none (up to date); sql/ functions re-applied\n"
            "post-deploy steps applied: none (nothing to remove)\n"
        )
    )
    assert not [path for path in core.migrate.POST_MIGRATIONS_DIR.iterdir() if path.suffix in {".sql", ".py"}]


def test_post_is_a_flag_of_migrate():
    parser = build_parser()

    assert parser.parse_args(["migrate"]).post is False
    assert parser.parse_args(["migrate", "--post"]).post is True


def test_wallet_migrate_names_what_it_refuses_in_one_line_and_exits_1(
    as_owner, db, monkeypatch, tmp_path, capsys
):
    db.execute(OLD_VERSION)
    monkeypatch.setattr(
        core.migrate,
        "MIGRATIONS_DIR",
        migrations_with(tmp_path, **{"0999_drop_probe_v1": "DROP FUNCTION wallet.probe_v1(bigint);\n"}),
    )
    for name in [name for name in os.environ if name.startswith("WALLET_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("DATABASE_URL", as_owner)

    code = main(["migrate"])

    out, err = capsys.readouterr()
    assert (code, out) == (1, "")
    [line] = err.splitlines()
    assert line.startswith("wallet migrate: rolled back, nothing applied: "), line
    assert "function wallet.probe_v1(bigint) returning bigint" in line
    assert function_oid(db, "wallet.probe_v1(bigint)") is not None
