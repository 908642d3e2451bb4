"""sql/bootstrap/roles.sql as an operator runs it, and the logins it makes doing what the README's
secret table says each one does, and nothing more.

The operator's steps (roles.sql's header, README "Deploying on Kubernetes"): roles.sql as a
superuser, `CREATE DATABASE ... OWNER wallet_owner`, roles.sql again from inside it (as the
postgres image's init does; it is idempotent), REVOKE CREATE ON SCHEMA public, then `wallet
migrate` logged in as wallet_owner. Roles belong to the cluster, which the test session
shares, so the from-nothing run and the repair of altered roles happen on a private embedded
cluster of their own; the logins are put to work on a fresh database of the test server.

    login          secret key               may
    wallet_owner   MIGRATION_DATABASE_URL   migrate: own and change the schema; no role, no database
    wallet_api     DATABASE_URL             the ledger functions (wallet_app); verify as
                                            wallet_auditor for one transaction (SET LOCAL ROLE)
    wallet_worker  WORKER_DATABASE_URL      the ledger functions and the queue (wallet_app): settle
    wallet_audit   AUDIT_DATABASE_URL       read everything, run the checks, record a checkpoint
                                            (wallet_auditor); never move money or write a table
"""

from __future__ import annotations

import contextlib
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml
from psycopg import sql

from core.database import with_database, with_user
from core.migrate import migrate
from tests.support.databases import create_database, drop_database, unique_name
from tests.support.ledger import (
    SERVICE,
    deposit,
    deposit_at,
    new_wallet,
    one,
    raises_sqlstate,
    rows,
    scalar,
    transfer,
    wait_until_due,
)

ROOT = Path(__file__).resolve().parents[2]
ROLES_SQL = ROOT / "sql" / "bootstrap" / "roles.sql"
README = ROOT / "README.md"
SECRET_EXAMPLE = ROOT / "k8s" / "secret.example.yaml"
VERIFY_CRONJOB = ROOT / "k8s" / "overlays" / "production" / "verify-cronjob.yaml"

OWNER, API, WORKER, AUDIT = "wallet_owner", "wallet_api", "wallet_worker", "wallet_audit"
LOGINS = {OWNER, API, WORKER, AUDIT}
GROUPS = {"wallet_app", "wallet_auditor"}
# (member, granted, inherited on PostgreSQL 16+): 15 has no per-membership option.
MEMBERSHIPS = {
    (API, "wallet_app", True),
    (API, "wallet_auditor", False),
    (WORKER, "wallet_app", True),
    (AUDIT, "wallet_auditor", True),
}
# The README's secret table: key -> the login and the roles it is granted.
SECRET_LOGINS = {
    "DATABASE_URL": (API, {"wallet_app", "wallet_auditor"}),
    "WORKER_DATABASE_URL": (WORKER, {"wallet_app"}),
    "MIGRATION_DATABASE_URL": (OWNER, set()),
    "AUDIT_DATABASE_URL": (AUDIT, {"wallet_auditor"}),
}
# Passwords for the logins tests/conftest.py does not log in as, on servers that ask for one;
# set only on a role without a password, as conftest does, under roles.sql's lock.
TEST_PASSWORDS = {API: "wallet-test-api", AUDIT: "wallet-test-audit"}
ROLES_LOCK_KEY = int.from_bytes(b"walletro")
DENIED = "42501"  # insufficient_privilege
SCHEMAS = ("wallet", "procrastinate", "public")
PG16 = 160000


def run_roles_sql(url: str) -> None:
    with psycopg.connect(url, autocommit=True) as connection:
        connection.execute(ROLES_SQL.read_text())


def version(url: str) -> int:
    with psycopg.connect(url, autocommit=True) as connection:
        return int(scalar(connection, "SHOW server_version_num"))


def role_catalog(url: str) -> dict[str, Any]:
    """Everything roles.sql sets: the wallet roles' attributes, memberships (with their options
    where the server has them) and per-role settings."""
    with psycopg.connect(url, autocommit=True) as connection:
        options = (
            ", m.inherit_option, m.set_option, m.admin_option"
            if int(scalar(connection, "SHOW server_version_num")) >= PG16
            else ", m.admin_option"
        )
        return {
            "roles": rows(
                connection,
                "SELECT rolname::text, rolsuper, rolinherit, rolcreaterole, rolcreatedb, rolcanlogin,"
                " rolreplication, rolbypassrls, rolconnlimit, rolvaliduntil"
                " FROM pg_roles WHERE rolname::text LIKE 'wallet\\_%%' ORDER BY 1",
            ),
            "memberships": rows(
                connection,
                "SELECT m.member::regrole::text AS member, m.roleid::regrole::text AS granted"
                f"{options} FROM pg_auth_members AS m"
                " WHERE m.member::regrole::text LIKE 'wallet\\_%%' ORDER BY 1, 2",
            ),
            "settings": rows(
                connection,
                "SELECT s.setrole::regrole::text AS role, s.setdatabase, s.setconfig"
                " FROM pg_db_role_setting AS s WHERE s.setrole::regrole::text LIKE 'wallet\\_%%'"
                " ORDER BY 1, 2",
            ),
        }


# The script itself ----------------------------------------------------------------------------------


def _code() -> str:
    return "\n".join(line.split("--", 1)[0] for line in ROLES_SQL.read_text().splitlines())


def test_roles_sql_is_plain_sql_that_psql_and_a_driver_run_alike():
    code = _code()
    assert not [line for line in code.splitlines() if line.lstrip().startswith("\\")], "a psql meta-command"
    assert not re.search(r"(?<![:\w]):(?![:=])['\"]?[A-Za-z_]", code), "a psql variable"
    assert "password" not in code.lower()


def test_the_readme_and_the_secret_example_name_the_logins_roles_sql_makes():
    readme = README.read_text()
    section = readme[readme.index("## Deploying on Kubernetes") :]
    table = {
        match[1]: match[2]
        for match in re.finditer(r"^\| `([A-Z_]+)` \|[^|]*\|([^\n]*)\|$", section, flags=re.MULTILINE)
    }
    example = yaml.safe_load(SECRET_EXAMPLE.read_text())["stringData"]
    roles = set(re.findall(r"\('(wallet_\w+)',\s*(?:true|false)\s*\)", _code()))
    assert roles == LOGINS | GROUPS
    for key, (login, granted) in SECRET_LOGINS.items():
        assert key in table, f"README's secret table has no row for {key}"
        assert f"`{login}`" in table[key], (key, table[key])
        for role in granted:
            assert f"`{role}`" in table[key], (key, role)
        assert example[key].startswith(f"postgresql://{login}:"), key
    assert {member for member, _, _ in MEMBERSHIPS} | {OWNER} == LOGINS


# From nothing, twice, and after drift: a private cluster ---------------------------------------


@pytest.fixture
def empty_cluster() -> Iterator[str]:
    """The URL of a new embedded PostgreSQL with no wallet role (a second or so to start)."""
    pgserver = pytest.importorskip("pgserver", reason="the embedded PostgreSQL (extra `embedded`)")
    with tempfile.TemporaryDirectory(prefix="wallet-roles-pg-") as folder:
        server = pgserver.get_server(Path(folder) / "pgdata", cleanup_mode="delete")
        try:
            yield server.get_uri()
        finally:
            server.cleanup()


def test_on_an_empty_cluster_it_makes_the_roles_and_a_second_run_changes_nothing(empty_cluster):
    assert role_catalog(empty_cluster)["roles"] == []

    run_roles_sql(empty_cluster)
    first = role_catalog(empty_cluster)
    run_roles_sql(empty_cluster)

    assert role_catalog(empty_cluster) == first
    assert {role["rolname"]: role["rolcanlogin"] for role in first["roles"]} == {
        **dict.fromkeys(LOGINS, True),
        **dict.fromkeys(GROUPS, False),
    }
    for role in first["roles"]:
        powers = ("rolsuper", "rolcreaterole", "rolcreatedb", "rolreplication", "rolbypassrls")
        assert not any(role[power] for power in powers), role
        assert role["rolinherit"], role
    assert {
        (m["member"], m["granted"], m.get("inherit_option", True)) for m in first["memberships"]
    } == MEMBERSHIPS
    assert all(m.get("set_option", True) and not m["admin_option"] for m in first["memberships"])
    assert first["settings"] == [{"role": AUDIT, "setdatabase": 0, "setconfig": ["statement_timeout=15min"]}]


def test_it_puts_back_what_was_changed_on_a_role(empty_cluster):
    run_roles_sql(empty_cluster)
    wanted = role_catalog(empty_cluster)
    with psycopg.connect(empty_cluster, autocommit=True) as connection:
        connection.execute("ALTER ROLE wallet_api CREATEDB NOINHERIT")
        connection.execute("ALTER ROLE wallet_app LOGIN")
        connection.execute("ALTER ROLE wallet_owner CREATEROLE")
        connection.execute("REVOKE wallet_app FROM wallet_worker")
        connection.execute("ALTER ROLE wallet_audit RESET statement_timeout")
        connection.execute("GRANT wallet_auditor TO wallet_api WITH INHERIT TRUE")
    assert role_catalog(empty_cluster) != wanted

    run_roles_sql(empty_cluster)

    assert role_catalog(empty_cluster) == wanted


@pytest.mark.skipif(shutil.which("psql") is None, reason="no psql client")
def test_psql_runs_it_as_the_header_says(empty_cluster):
    run_roles_sql(empty_cluster)
    wanted = role_catalog(empty_cluster)
    result = subprocess.run(
        ["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-f", str(ROLES_SQL), empty_cluster],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert role_catalog(empty_cluster) == wanted


# The logins at work: a fresh database of the test server ---------------------------------------


def _set_test_passwords(postgres_url: str) -> None:
    with psycopg.connect(postgres_url, autocommit=True) as connection, connection.transaction():
        connection.execute("SELECT pg_advisory_xact_lock(%s)", (ROLES_LOCK_KEY,))
        for role, password in TEST_PASSWORDS.items():
            if scalar(connection, "SELECT rolpassword IS NULL FROM pg_authid WHERE rolname = %s", role):
                connection.execute(
                    sql.SQL("ALTER ROLE {} PASSWORD {}").format(sql.Identifier(role), sql.Literal(password))
                )


@pytest.fixture(scope="module")
def fresh(postgres_url: str, logins: dict[str, str]) -> Iterator[dict[str, str]]:
    """A database bootstrapped as the README says, migrated by wallet_owner: the URL of it for
    each login, and for the superuser under "postgres"."""
    run_roles_sql(postgres_url)
    _set_test_passwords(postgres_url)
    name = unique_name("wallet_bootstrap")
    create_database(postgres_url, name, owner=OWNER)
    try:
        superuser = with_database(postgres_url, name)
        run_roles_sql(superuser)
        with psycopg.connect(superuser, autocommit=True) as connection:
            connection.execute("REVOKE CREATE ON SCHEMA public FROM PUBLIC")
        urls = {
            OWNER: with_database(logins[OWNER], name),
            WORKER: with_database(logins[WORKER], name),
            **{role: with_user(superuser, role, password) for role, password in TEST_PASSWORDS.items()},
            "postgres": superuser,
        }
        applied = migrate(urls[OWNER])
        assert applied, "the owner applied no migration to an empty database"
        yield urls
    finally:
        drop_database(postgres_url, name)


@contextlib.contextmanager
def session(fresh: dict[str, str], role: str) -> Iterator[psycopg.Connection]:
    with psycopg.connect(fresh[role], autocommit=True) as connection:
        assert scalar(connection, "SELECT session_user::text") == role
        yield connection


def _server_version(fresh: dict[str, str]) -> int:
    return version(fresh["postgres"])


DDL = [
    "CREATE TABLE wallet.planted (id integer)",
    "CREATE TABLE public.planted (id integer)",
    "CREATE FUNCTION wallet.planted() RETURNS integer LANGUAGE sql AS 'SELECT 1'",
    "ALTER TABLE wallet.wallets ADD COLUMN planted integer",
    "DROP FUNCTION wallet.verify_ledger()",
    "CREATE SCHEMA planted",
]
WRITES = [
    "INSERT INTO wallet.wallets (owner_id) VALUES ('planted')",
    "UPDATE wallet.wallets SET balance = balance + 1",
    "DELETE FROM wallet.transactions",
    "TRUNCATE wallet.entries",
]


def _denied(connection: psycopg.Connection, statements: list[str]) -> None:
    for statement in statements:
        with raises_sqlstate(DENIED, statement):
            connection.execute(statement)


def test_the_owner_migrated_and_owns_the_ledger_but_makes_no_role_or_database(fresh):
    with session(fresh, OWNER) as owner:
        owners = rows(
            owner,
            "SELECT nspname::text AS schema, nspowner::regrole::text AS owner FROM pg_namespace"
            " WHERE nspname IN ('wallet', 'procrastinate') ORDER BY 1",
        )
        foreign = scalar(
            owner,
            "SELECT count(*) FROM pg_class"
            " WHERE relnamespace::regnamespace::text IN ('wallet', 'procrastinate')"
            " AND relowner <> 'wallet_owner'::regrole",
        )
        assert not scalar(owner, "SELECT rolsuper FROM pg_roles WHERE rolname = current_user")
        _denied(
            owner,
            [
                "CREATE ROLE wallet_planted",
                "CREATE DATABASE wallet_planted",
                "ALTER ROLE wallet_api SUPERUSER",
            ],
        )

    assert owners == [{"schema": "procrastinate", "owner": OWNER}, {"schema": "wallet", "owner": OWNER}]
    assert foreign == 0


def test_the_api_login_moves_money_through_the_functions_and_writes_no_table(fresh):
    with session(fresh, API) as api:
        source, target = new_wallet(api, "shop-1"), new_wallet(api, "shop-2")
        assert deposit(api, source, 10_000)["status"] == "posted"
        assert transfer(api, source, target, 2_500)["status"] == "posted"
        assert one(api, "SELECT balance FROM wallet.get_wallet(NULL, %s::uuid)", target)["balance"] == 2_500
        _denied(api, WRITES + DDL)
        with raises_sqlstate(DENIED):
            api.execute("SELECT * FROM wallet.compute_fee('transfer', 'shop-1', 100)")  # internal


def test_the_api_login_verifies_as_the_auditor_for_one_transaction_only(fresh):
    """As api/audit.py does: a read-only transaction, SET LOCAL ROLE wallet_auditor."""
    with session(fresh, API) as api:
        with api.transaction():
            api.execute("SET TRANSACTION READ ONLY")
            api.execute("SET LOCAL ROLE wallet_auditor")
            assert rows(api, "SELECT * FROM wallet.verify_ledger()") == []
            assert scalar(api, "SELECT count(*) FROM wallet.wallets") >= 0
        assert scalar(api, "SELECT current_user::text") == API
        if _server_version(fresh) >= PG16:
            # The membership is not inherited: outside that transaction, nothing is read.
            for statement in ("SELECT * FROM wallet.verify_ledger()", "SELECT count(*) FROM wallet.wallets"):
                with raises_sqlstate(DENIED, statement):
                    api.execute(statement)
        else:
            # PostgreSQL 15 has no per-membership INHERIT: the login reads what wallet_auditor reads.
            assert scalar(api, "SELECT count(*) FROM wallet.wallets") >= 0


def test_the_worker_login_settles_a_due_deposit_and_reads_nothing(fresh):
    with session(fresh, API) as api, session(fresh, "postgres") as superuser:
        wallet_id = new_wallet(api, "shop-3")
        due = scalar(superuser, "SELECT clock_timestamp()") + timedelta(seconds=1.5)
        scheduled = deposit_at(api, wallet_id, 7_000, due)
        assert scheduled["status"] == "scheduled"
        wait_until_due(superuser, scheduled["id"])
    with session(fresh, WORKER) as worker:
        assert scalar(worker, "SELECT wallet.settle_deposit(%s::uuid, false, 0)", scheduled["id"]) == "posted"
        assert scalar(worker, "SELECT count(*) FROM procrastinate.procrastinate_jobs") >= 0  # its queue
        _denied(worker, WRITES + DDL)
        for statement in (
            "SELECT count(*) FROM wallet.wallets",
            "SELECT * FROM wallet.verify_ledger()",
            "SET ROLE wallet_auditor",
        ):
            with raises_sqlstate(DENIED, statement):
                worker.execute(statement)
    with session(fresh, API) as api:
        assert (
            one(api, "SELECT balance FROM wallet.get_wallet(NULL, %s::uuid)", wallet_id)["balance"] == 7_000
        )


def test_the_audit_login_reads_and_verifies_and_moves_no_money(fresh):
    with session(fresh, API) as api:
        wallet_id = new_wallet(api, "shop-4")
    with session(fresh, AUDIT) as audit:
        assert scalar(audit, "SHOW statement_timeout") == "15min"
        assert rows(audit, "SELECT * FROM wallet.verify_ledger()") == []
        digest = scalar(audit, "SELECT wallet.ledger_checkpoint()")
        assert re.fullmatch(r"v1:\d+:[0-9a-f]{64}", digest), digest
        assert rows(audit, "SELECT * FROM wallet.verify_checkpoint(%s)", digest) == []
        assert scalar(audit, "SELECT count(*) FROM wallet.transactions") >= 1
        _denied(audit, WRITES + DDL)
        for statement, parameters in (
            ("SELECT wallet.open_wallet(%s, NULL, NULL, 'shop-5', NULL, NULL)", (SERVICE,)),
            (
                "SELECT wallet.deposit(%s, NULL, NULL, NULL, %s::uuid, 1::bigint, NULL, NULL, NULL)",
                (SERVICE, wallet_id),
            ),
            ("SELECT wallet.settle_due_deposits(10)", None),
            ("SELECT count(*) FROM procrastinate.procrastinate_jobs", None),
            ("SET ROLE wallet_app", None),
        ):
            with raises_sqlstate(DENIED, statement):
                audit.execute(statement, parameters)


def test_the_cronjobs_command_runs_as_the_audit_login(fresh, monkeypatch, capsys):
    """What the production overlay's CronJob runs, with the key it reads, passes as wallet_audit."""
    from cli.main import main

    (cronjob,) = [item for item in yaml.safe_load_all(VERIFY_CRONJOB.read_text()) if item]
    (container,) = cronjob["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"]
    (database,) = [variable for variable in container["env"] if variable["name"] == "DATABASE_URL"]
    assert SECRET_LOGINS[database["valueFrom"]["secretKeyRef"]["key"]][0] == AUDIT
    monkeypatch.setenv("DATABASE_URL", fresh[AUDIT])

    code = main(container["args"])

    assert code == 0
    assert re.search(r"^checkpoint: v1:\d+:[0-9a-f]{64}$", capsys.readouterr().out, flags=re.MULTILINE)


# Nothing more: every privilege of a login comes from the roles it inherits -------------------------

PRIVILEGES = """
    SELECT 'relation' AS kind, c.oid::regclass::text AS name, p.privilege
    FROM pg_class AS c
    CROSS JOIN unnest(ARRAY['SELECT', 'INSERT', 'UPDATE', 'DELETE', 'TRUNCATE', 'REFERENCES', 'TRIGGER'])
        AS p (privilege)
    WHERE c.relnamespace::regnamespace::text = ANY (%(schemas)s) AND c.relkind IN ('r', 'p', 'v', 'm', 'f')
      AND has_table_privilege(%(role)s, c.oid, p.privilege)
    UNION ALL
    SELECT 'sequence', c.oid::regclass::text, p.privilege
    FROM pg_class AS c CROSS JOIN unnest(ARRAY['USAGE', 'SELECT', 'UPDATE']) AS p (privilege)
    WHERE c.relnamespace::regnamespace::text = ANY (%(schemas)s) AND c.relkind = 'S'
      AND has_sequence_privilege(%(role)s, c.oid, p.privilege)
    UNION ALL
    SELECT 'function', f.oid::regprocedure::text, 'EXECUTE'
    FROM pg_proc AS f
    WHERE f.pronamespace::regnamespace::text = ANY (%(schemas)s)
      AND has_function_privilege(%(role)s, f.oid, 'EXECUTE')
    UNION ALL
    SELECT 'schema', n.nspname::text, p.privilege
    FROM pg_namespace AS n CROSS JOIN unnest(ARRAY['USAGE', 'CREATE']) AS p (privilege)
    WHERE n.nspname::text = ANY (%(schemas)s) AND has_schema_privilege(%(role)s, n.oid, p.privilege)
    UNION ALL
    SELECT 'database', current_database()::text, p.privilege
    FROM unnest(ARRAY['CREATE', 'CONNECT', 'TEMPORARY']) AS p (privilege)
    WHERE has_database_privilege(%(role)s, current_database(), p.privilege)
"""


def _privileges(connection: psycopg.Connection, role: str) -> set[tuple[str, str, str]]:
    found = connection.execute(PRIVILEGES, {"role": role, "schemas": list(SCHEMAS)}).fetchall()
    return {tuple(row) for row in found}


def test_each_login_holds_exactly_the_privileges_of_the_roles_it_inherits(fresh):
    inherits_option = _server_version(fresh) >= PG16
    with session(fresh, "postgres") as superuser:
        database = superuser.info.dbname
        of_group = {group: _privileges(superuser, group) for group in GROUPS}
        held = {login: _privileges(superuser, login) for login in LOGINS - {OWNER}}
        named = {
            row[0]
            for row in superuser.execute(
                "SELECT DISTINCT a.grantee::regrole::text FROM ("
                " SELECT relacl AS acl FROM pg_class UNION ALL SELECT proacl FROM pg_proc"
                " UNION ALL SELECT nspacl FROM pg_namespace UNION ALL SELECT typacl FROM pg_type"
                " UNION ALL SELECT datacl FROM pg_database WHERE datname = current_database()"
                " UNION ALL SELECT defaclacl FROM pg_default_acl) AS o, aclexplode(o.acl) AS a"
                " WHERE a.grantee <> 0"
            ).fetchall()
        }

    assert not named & (LOGINS - {OWNER}), "a privilege granted to a login itself"
    for login, privileges in held.items():
        inherited = [
            granted
            for member, granted, inherit in MEMBERSHIPS
            if member == login and (inherit or not inherits_option)
        ]
        assert privileges == set().union(*(of_group[group] for group in inherited)), login
        assert not {p for p in privileges if p[0] == "schema" and p[2] == "CREATE"}, login
        assert ("database", database, "CREATE") not in privileges, login
    assert ("function", "wallet.settle_deposit(uuid,boolean,integer)", "EXECUTE") in held[WORKER]
    assert ("function", "wallet.verify_ledger()", "EXECUTE") in held[AUDIT]
    assert ("function", "wallet.verify_ledger()", "EXECUTE") not in held[WORKER]
    assert not {p for p in held[WORKER] if p[0] == "relation" and p[1].startswith("wallet.")}
    assert not {p for p in held[AUDIT] if p[0] == "relation" and p[2] != "SELECT"}
