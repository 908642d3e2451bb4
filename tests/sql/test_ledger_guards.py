"""What the database itself guarantees, whoever connects (SPEC 8, STYLE).

Append-only facts, CHECK constraints, roles and grants, verify_ledger, and the drift
between migrations/, sql/ and what `wallet migrate` builds.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import psycopg
import pytest
from yoyo import read_migrations

from core.database import with_database
from core.migrate import MIGRATIONS_DIR, SQL_DIR, apply_sql_functions, migrate
from tests.support.databases import create_database, drop_database, unique_name
from tests.support.ledger import (
    change_status,
    deposit,
    funded_wallet,
    ledger_state,
    new_wallet,
    one,
    raises_sqlstate,
    rows,
    scalar,
    set_rule,
    transfer,
    withdraw,
)

WALLET_TABLES = """
    SELECT c.oid::regclass::text AS name
    FROM pg_class AS c
    WHERE c.relnamespace = 'wallet'::regnamespace AND c.relkind IN ('r', 'p', 'v', 'm')
    ORDER BY 1
"""

WALLET_FUNCTIONS = """
    SELECT p.oid, p.proname AS name, pg_get_function_identity_arguments(p.oid) AS arguments,
           md5(p.prosrc) AS source_hash, p.prosecdef AS security_definer, p.provolatile,
           p.proconfig, p.proacl::text AS grants
    FROM pg_proc AS p
    WHERE p.pronamespace = 'wallet'::regnamespace
    ORDER BY p.proname, 3
"""

# The functions that move money or change wallets and rules: for wallet_app, not auditors.
WRITING_FUNCTIONS = [
    "wallet.open_wallet(text, text, text, text, text, jsonb)",
    "wallet.freeze_wallet(text, text, text, text, uuid)",
    "wallet.unfreeze_wallet(text, text, text, text, uuid)",
    "wallet.close_wallet(text, text, text, text, uuid)",
    "wallet.deposit(text, text, text, text, uuid, bigint, text, jsonb, timestamp with time zone)",
    "wallet.cancel_deposit(text, text, text, text, uuid)",
    "wallet.settle_deposit(uuid, boolean, integer)",
    "wallet.settle_due_deposits(integer)",
    "wallet.reconcile_scheduled_deposits(interval)",
    "wallet.withdraw(text, text, text, text, uuid, bigint, text, jsonb)",
    "wallet.transfer(text, text, text, text, uuid, uuid, bigint, text, jsonb)",
    "wallet.set_commission_rule(text, text, text, integer, bigint, bigint, bigint)",
    "wallet.prune_idempotency_keys(interval)",
    "wallet.place_hold(text, text, text, text, uuid, bigint, timestamp with time zone, text, jsonb)",
    "wallet.capture_hold(text, text, text, text, uuid, bigint, uuid, boolean)",
    "wallet.void_hold(text, text, text, text, uuid)",
    "wallet.expire_hold(uuid)",
    "wallet.expire_due_holds(integer)",
    "wallet.reconcile_hold_expiries(interval)",
]


@contextlib.contextmanager
def acting_as(db: psycopg.Connection, role: str) -> Iterator[None]:
    db.execute(f"SET ROLE {role}")
    try:
        yield
    finally:
        db.execute("RESET ROLE")


def _busy_ledger(db):
    set_rule(db, "deposit", rate_bps=25, fixed=1)
    set_rule(db, "withdrawal", fixed=3)
    set_rule(db, "transfer", rate_bps=10, min_fee=2, max_fee=50)
    wallets = [new_wallet(db, f"merchant-{n}") for n in range(4)]
    for n, wallet_id in enumerate(wallets):
        deposit(db, wallet_id, 10_000 * (n + 1))
    for n in range(12):
        transfer(db, wallets[n % 4], wallets[(n + 1) % 4], 100 * (n + 1))
    for wallet_id in wallets:
        withdraw(db, wallet_id, 999)
    emptied = funded_wallet(db, 500, owner="leaver")
    withdraw(db, emptied, 495)  # deposit fee 2, withdrawal fee 3
    change_status(db, "close", emptied)
    change_status(db, "freeze", wallets[0])
    return wallets


# --- append-only facts --------------------------------------------------------------------


def test_entries_refuse_update_delete_and_truncate_even_for_the_superuser(db):
    funded_wallet(db, 100)
    before = rows(db, "SELECT * FROM wallet.entries ORDER BY id")

    for statement in (
        "UPDATE wallet.entries SET net_amount = net_amount * 2",
        "UPDATE wallet.entries SET created_at = now()",
        "DELETE FROM wallet.entries",
        "TRUNCATE wallet.entries",
    ):
        with raises_sqlstate("WR500", statement):
            db.execute(statement)

    assert scalar(db, "SELECT current_setting('is_superuser')") == "on"
    assert rows(db, "SELECT * FROM wallet.entries ORDER BY id") == before


def test_transactions_refuse_delete_and_truncate_and_a_posted_one_refuses_update(db):
    wallet_id = funded_wallet(db, 100)
    withdraw(db, wallet_id, 40)
    before = rows(db, "SELECT * FROM wallet.transactions ORDER BY id")

    for statement in (
        "DELETE FROM wallet.transactions",
        "TRUNCATE wallet.transactions, wallet.entries, wallet.status_changes",
        "TRUNCATE wallet.transactions CASCADE",
        "UPDATE wallet.transactions SET amount = amount + 1",
        "UPDATE wallet.transactions SET reference = 'rewritten'",
        "UPDATE wallet.transactions SET metadata = '{\"a\": 1}'",
        "UPDATE wallet.transactions SET status = 'canceled', posted_at = NULL",
    ):
        with raises_sqlstate("WR500", statement):
            db.execute(statement)
    # Alone, TRUNCATE is already stopped by the foreign key from entries.
    with pytest.raises(psycopg.Error):
        db.execute("TRUNCATE wallet.transactions")

    assert rows(db, "SELECT * FROM wallet.transactions ORDER BY id") == before


def test_commission_rules_and_wallets_refuse_rewrites_of_history(db):
    set_rule(db, "deposit", fixed=1)
    set_rule(db, "deposit", fixed=2)
    new_wallet(db)
    before = ledger_state(db)
    rules_before = rows(db, "SELECT * FROM wallet.commission_rules ORDER BY id")

    for statement in (
        "UPDATE wallet.commission_rules SET fixed = 0",
        "DELETE FROM wallet.commission_rules",
        "TRUNCATE wallet.commission_rules",
        "DELETE FROM wallet.wallets",
        "TRUNCATE wallet.wallets CASCADE",
    ):
        with raises_sqlstate("WR500", statement):
            db.execute(statement)

    assert rows(db, "SELECT * FROM wallet.commission_rules ORDER BY id") == rules_before
    assert ledger_state(db) == before


def test_check_constraints_reject_what_the_functions_would_refuse(db):
    wallet_id = funded_wallet(db, 100)
    transaction_id = scalar(db, "SELECT id FROM wallet.transactions")
    before = ledger_state(db)
    statements = {
        "negative balance": "UPDATE wallet.wallets SET balance = -1",
        "negative pending": "UPDATE wallet.wallets SET pending = -1",
        "closed with money": "UPDATE wallet.wallets SET status = 'closed'",
        "unknown status": "UPDATE wallet.wallets SET status = 'deleted'",
        "lower-case currency": "UPDATE wallet.wallets SET currency = 'irr'",
        "metadata array": "UPDATE wallet.wallets SET metadata = '[]'",
        "entry below zero": (
            "INSERT INTO wallet.entries (transaction_id, wallet_id, currency, kind, net_amount,"
            " balance_before, balance_after, chain_version, chain_hash) VALUES"
            f" ('{transaction_id}', '{wallet_id}', 'IRR', 'deposit', -101, 100, -1, 2, sha256(''))"
        ),
        "a chain hash that is no SHA-256": (
            "INSERT INTO wallet.entries (transaction_id, wallet_id, currency, kind, net_amount,"
            " balance_before, balance_after, chain_version, chain_hash) VALUES"
            f" ('{transaction_id}', '{wallet_id}', 'IRR', 'deposit', 5, 100, 105, 2, 'short')"
        ),
        "a wallet head that is no SHA-256": "UPDATE wallet.wallets SET chain_hash = 'short'",
        "entry whose balances do not add up": (
            "INSERT INTO wallet.entries (transaction_id, wallet_id, currency, kind, net_amount,"
            " balance_before, balance_after, chain_version, chain_hash) VALUES"
            f" ('{transaction_id}', '{wallet_id}', 'IRR', 'deposit', 5, 100, 106, 2, sha256(''))"
        ),
        "zero entry": (
            "INSERT INTO wallet.entries (transaction_id, account, currency, kind, net_amount)"
            f" VALUES ('{transaction_id}', 'world', 'IRR', 'deposit', 0)"
        ),
        "deposit with fee not below amount": (
            "INSERT INTO wallet.transactions (kind, status, wallet_id, currency, amount, fee,"
            f" posted_at) VALUES ('deposit', 'posted', '{wallet_id}', 'IRR', 10, 10, now())"
        ),
        "amount above 10^15": (
            "INSERT INTO wallet.transactions (kind, status, wallet_id, currency, amount, fee,"
            f" posted_at) VALUES ('deposit', 'posted', '{wallet_id}', 'IRR', 1000000000000001,"
            " 0, now())"
        ),
        "rule with min_fee above max_fee": (
            "INSERT INTO wallet.commission_rules (operation, rate_bps, fixed, min_fee, max_fee)"
            " VALUES ('deposit', 0, 0, 10, 5)"
        ),
        "rule rate above 100%": (
            "INSERT INTO wallet.commission_rules (operation, rate_bps, fixed, min_fee)"
            " VALUES ('deposit', 10001, 0, 0)"
        ),
    }
    for case, statement in statements.items():
        with raises_sqlstate("23514", case):
            db.execute(statement)

    assert ledger_state(db) == before


# --- roles and grants ---------------------------------------------------------------------


def test_the_roles_cannot_log_in(db):
    roles = rows(
        db,
        "SELECT rolname, rolcanlogin, rolsuper FROM pg_roles"
        " WHERE rolname IN ('wallet_app', 'wallet_auditor') ORDER BY 1",
    )

    assert roles == [
        {"rolname": "wallet_app", "rolcanlogin": False, "rolsuper": False},
        {"rolname": "wallet_auditor", "rolcanlogin": False, "rolsuper": False},
    ]


def test_wallet_app_has_no_privilege_on_any_table_or_sequence_of_schema_wallet(db):
    tables = [row["name"] for row in rows(db, WALLET_TABLES)]
    assert {"wallet.wallets", "wallet.transactions", "wallet.entries"} <= set(tables)

    granted = rows(
        db,
        "SELECT c.oid::regclass::text AS name, privilege FROM pg_class AS c,"
        " unnest(ARRAY['SELECT', 'INSERT', 'UPDATE', 'DELETE', 'TRUNCATE', 'REFERENCES',"
        "              'TRIGGER']) AS privilege"
        " WHERE c.relnamespace = 'wallet'::regnamespace AND c.relkind IN ('r', 'p', 'v', 'm')"
        "   AND has_table_privilege('wallet_app', c.oid, privilege)"
        " UNION ALL"
        " SELECT c.oid::regclass::text, privilege FROM pg_class AS c,"
        " unnest(ARRAY['USAGE', 'SELECT', 'UPDATE']) AS privilege"
        " WHERE c.relnamespace = 'wallet'::regnamespace AND c.relkind = 'S'"
        "   AND has_sequence_privilege('wallet_app', c.oid, privilege)",
    )
    assert granted == []


def test_wallet_app_is_refused_direct_reads_and_writes(db):
    wallet_id = funded_wallet(db, 100)
    before = ledger_state(db)
    tables = [row["name"] for row in rows(db, WALLET_TABLES)]

    with acting_as(db, "wallet_app"):
        for table in tables:
            with raises_sqlstate("42501", f"SELECT {table}"):
                db.execute(f"SELECT * FROM {table} LIMIT 1")
        for case, statement in {
            "insert a wallet": "INSERT INTO wallet.wallets (owner_id) VALUES ('m')",
            "update a balance": f"UPDATE wallet.wallets SET balance = 1 WHERE id = '{wallet_id}'",
            "delete a key": "DELETE FROM wallet.idempotency_keys",
            "insert a rule": (
                "INSERT INTO wallet.commission_rules (operation, rate_bps, fixed, min_fee)"
                " VALUES ('deposit', 0, 0, 0)"
            ),
            "draw an entry id": "SELECT nextval('wallet.history_seq')",
        }.items():
            with raises_sqlstate("42501", case):
                db.execute(statement)

    assert ledger_state(db) == before


def test_wallet_app_moves_money_through_the_functions(db):
    with acting_as(db, "wallet_app"):
        first = one(db, "SELECT * FROM wallet.open_wallet('api', NULL, NULL, 'm-1')")["id"]
        second = one(db, "SELECT * FROM wallet.open_wallet('api', 'k', 'fp', 'm-2')")["id"]
        set_rule(db, "withdrawal", fixed=1, caller="api")
        deposit(db, first, 1000, caller="api", key="d-1")
        withdraw(db, first, 100, caller="api")
        transfer(db, first, second, 200, caller="api")
        change_status(db, "freeze", second, caller="api")
        balance = one(db, "SELECT balance FROM wallet.get_wallet(NULL, %s)", first)["balance"]
        history = rows(db, "SELECT * FROM wallet.wallet_history(NULL, %s)", first)
        # An unbounded read of the whole ledger is the auditor's, not a request's.
        for audit in ("verify_ledger()", "ledger_checkpoint()", "verify_ledger_since(now())"):
            with raises_sqlstate("42501", audit):
                db.execute(f"SELECT * FROM wallet.{audit}")

    assert balance == 699
    assert len(history) == 3
    assert rows(db, "SELECT * FROM wallet.verify_ledger()") == []
    assert scalar(db, "SELECT status FROM wallet.wallets WHERE id = %s", second) == "frozen"


def test_wallet_auditor_reads_every_table_and_runs_the_checks_but_moves_no_money(db):
    wallet_id = funded_wallet(db, 100)
    tables = [row["name"] for row in rows(db, WALLET_TABLES)]
    before = ledger_state(db)

    with acting_as(db, "wallet_auditor"):
        counts = {table: scalar(db, f"SELECT count(*) FROM {table}") for table in tables}
        violations = rows(db, "SELECT * FROM wallet.verify_ledger()")
        with raises_sqlstate("42501", "deposit"):
            deposit(db, wallet_id, 10)
        with raises_sqlstate("42501", "update a balance"):
            db.execute("UPDATE wallet.wallets SET balance = 0")
    executable = {
        function: scalar(db, "SELECT has_function_privilege('wallet_auditor', %s, 'EXECUTE')", function)
        for function in WRITING_FUNCTIONS
    }

    assert counts["wallet.wallets"] == 1
    assert counts["wallet.entries"] == 2
    assert violations == []
    assert executable == dict.fromkeys(WRITING_FUNCTIONS, False)
    assert ledger_state(db) == before


def test_public_may_execute_no_function_in_schema_wallet(db):
    # A NULL proacl means the built-in default, which lets PUBLIC execute.
    executable_by_public = rows(
        db,
        "SELECT p.oid::regprocedure::text AS function FROM pg_proc AS p,"
        " aclexplode(coalesce(p.proacl, acldefault('f', p.proowner))) AS grant_"
        " WHERE p.pronamespace = 'wallet'::regnamespace AND grant_.grantee = 0"
        "   AND grant_.privilege_type = 'EXECUTE'",
    )

    assert executable_by_public == []
    assert scalar(db, "SELECT has_schema_privilege('public', 'wallet', 'USAGE')") is False


# Internal helpers: executed by their owner only, from inside a SECURITY DEFINER function
# whose search_path is pinned, so they do not set it again (sql/posting.sql says why).
INTERNAL_HELPERS = {
    "append_status_link",
    "apply_to_wallet",
    "chain_genesis",
    "chain_link",
    "checkpoint_digest",
    "epoch_us",
    "expected_legs",
    "fail_scheduled_deposit",
    "history_cursor_at",
    "parse_checkpoint",
    "require_read_committed",
    "rule_chain_genesis",
    "rule_digest",
    "transaction_digest",
    "transaction_kinds",
    "change_wallet_status",
    "check_metadata",
    "check_movement_request",
    "claim_idempotency_key",
    "commission_fee",
    "compute_fee",
    "find_wallet",
    "post_scheduled_deposit",
    "record_idempotent_response",
    "replayed_transaction",
    "replayed_wallet",
    "settlement_blocker",
    "to_transaction_result",
    "to_wallet_result",
    "uuid_v7",
    "verify_pending_signs_and_rules",
    # Holds (issue 12) and the posting shared with captures.
    "find_hold",
    "find_transaction",
    "post_transfer",
    "post_withdrawal",
    "release_from_hold",
    "replayed_hold",
    "replayed_transaction_v2",
    "to_hold_result",
    "to_transaction_result_v2",
}


def _executable_by_others(db) -> list[dict]:
    """Every wallet function with whether a role other than its owner may execute it."""
    return rows(
        db,
        "SELECT p.proname AS name, p.prosecdef AS security_definer, p.proconfig,"
        "       EXISTS (SELECT FROM aclexplode(coalesce(p.proacl, acldefault('f', p.proowner))) AS grant_"
        "               WHERE grant_.grantee <> p.proowner AND grant_.privilege_type = 'EXECUTE')"
        "         AS shared"
        " FROM pg_proc AS p WHERE p.pronamespace = 'wallet'::regnamespace",
    )


def test_every_function_wallet_app_may_execute_runs_as_its_definer(db):
    functions = rows(
        db,
        "SELECT p.proname AS name, p.prosecdef AS security_definer"
        " FROM pg_proc AS p WHERE p.pronamespace = 'wallet'::regnamespace"
        "   AND has_function_privilege('wallet_app', p.oid, 'EXECUTE')",
    )
    # wallet_app holds no table privilege, so a function it calls must run as its definer.
    invokers = {f["name"] for f in functions if not f["security_definer"]}

    assert {f["name"] for f in functions} >= {"deposit", "withdraw", "transfer", "open_wallet"}
    assert invokers == set()


def test_only_internal_helpers_leave_their_search_path_to_the_caller(db):
    functions = _executable_by_others(db)
    unpinned = {
        f["name"]
        for f in functions
        if not any(setting.startswith("search_path=") for setting in f["proconfig"] or [])
    }
    shared = {f["name"] for f in functions if f["shared"]}
    definers = {f["name"] for f in functions if f["security_definer"]}
    paths = {
        setting for f in functions for setting in f["proconfig"] or [] if setting.startswith("search_path=")
    }
    # public may be writable by others (item 2 of issue 9): no function resolves through it.
    with_public = {f["name"] for f in functions for setting in f["proconfig"] or [] if "public" in setting}

    assert unpinned == INTERNAL_HELPERS
    assert unpinned & shared == set(), "a helper others may execute must pin its search_path"
    assert unpinned & definers == set(), "a SECURITY DEFINER function must pin its search_path"
    assert with_public == set()
    assert all(path.startswith("search_path=pg_catalog,") for path in paths), paths
    assert all("$user" not in path for path in paths), paths


# --- verify_ledger ------------------------------------------------------------------------


def _checks(db) -> set[str]:
    return {row["check_name"] for row in rows(db, "SELECT * FROM wallet.verify_ledger()")}


def test_verify_ledger_finds_nothing_on_a_busy_ledger(db):
    _busy_ledger(db)

    assert scalar(db, "SELECT count(*) FROM wallet.entries") > 50
    assert rows(db, "SELECT * FROM wallet.verify_ledger()") == []
    with acting_as(db, "wallet_auditor"):
        assert rows(db, "SELECT * FROM wallet.verify_ledger()") == []


def test_verify_ledger_reports_a_balance_rewritten_by_hand(db):
    wallets = _busy_ledger(db)

    db.execute("UPDATE wallet.wallets SET balance = balance + 1 WHERE id = %s", (wallets[1],))

    violations = rows(db, "SELECT * FROM wallet.verify_ledger()")
    assert [row["check_name"] for row in violations] == ["balance_differs_from_entries"]
    assert str(wallets[1]) in violations[0]["detail"]


def test_verify_ledger_reports_every_kind_of_corruption(db):
    """Each corruption is made deliberately (triggers and a constraint out of the way),
    checked, and undone, so each check is seen alone."""
    wallets = _busy_ledger(db)
    db.execute("ALTER TABLE wallet.entries DISABLE TRIGGER entries_append_only")
    db.execute("ALTER TABLE wallet.wallets DROP CONSTRAINT wallets_balance_check")
    db.execute("ALTER TABLE wallet.wallets DROP CONSTRAINT wallets_pending_check")
    db.execute("ALTER TABLE wallet.wallets DROP CONSTRAINT held_within_balance")  # balance - held >= 0
    wallet_entry = scalar(db, "SELECT max(id) FROM wallet.entries WHERE wallet_id = %s", wallets[2])
    earlier_entry = scalar(db, "SELECT min(id) FROM wallet.entries WHERE wallet_id = %s", wallets[2])
    world_entry = scalar(db, "SELECT max(id) FROM wallet.entries WHERE account = 'world'")
    revenue_entry = scalar(db, "SELECT max(id) FROM wallet.entries WHERE account = 'revenue'")
    empty_wallet = new_wallet(db, "nobody")
    corruptions = [
        (
            "UPDATE wallet.wallets SET pending = pending + 5 WHERE id = %(w)s",
            "UPDATE wallet.wallets SET pending = pending - 5 WHERE id = %(w)s",
            {"pending_differs_from_scheduled"},
        ),
        (
            "UPDATE wallet.wallets SET balance = -1 WHERE id = %(empty)s",
            "UPDATE wallet.wallets SET balance = 0 WHERE id = %(empty)s",
            {"negative_balance", "balance_differs_from_entries"},
        ),
        (
            "UPDATE wallet.entries SET balance_before = balance_before + 1,"
            " balance_after = balance_after + 1 WHERE id = %(earlier)s",
            "UPDATE wallet.entries SET balance_before = balance_before - 1,"
            " balance_after = balance_after - 1 WHERE id = %(earlier)s",
            {"entry_chain_broken", "chain_link_mismatch"},
        ),
        (
            "UPDATE wallet.entries SET net_amount = net_amount - 1 WHERE id = %(world)s",
            "UPDATE wallet.entries SET net_amount = net_amount + 1 WHERE id = %(world)s",
            {"transaction_unbalanced", "chain_link_mismatch"},
        ),
        (
            "UPDATE wallet.entries SET net_amount = net_amount + 1 WHERE id = %(revenue)s",
            "UPDATE wallet.entries SET net_amount = net_amount - 1 WHERE id = %(revenue)s",
            {"transaction_unbalanced", "revenue_differs_from_fee", "chain_link_mismatch"},
        ),
        (
            "UPDATE wallet.entries SET net_amount = net_amount + 1,"
            " balance_after = balance_after + 1 WHERE id = %(last)s",
            "UPDATE wallet.entries SET net_amount = net_amount - 1,"
            " balance_after = balance_after - 1 WHERE id = %(last)s",
            {"transaction_unbalanced", "balance_differs_from_entries", "chain_link_mismatch"},
        ),
    ]
    names = {
        "w": wallets[3],
        "empty": empty_wallet,
        "earlier": earlier_entry,
        "world": world_entry,
        "revenue": revenue_entry,
        "last": wallet_entry,
    }
    assert _checks(db) == set()
    for corrupt, repair, expected in corruptions:
        db.execute(corrupt, names)
        assert _checks(db) == expected, corrupt
        db.execute(repair, names)
        assert _checks(db) == set(), repair

    db.execute(
        "INSERT INTO wallet.transactions (kind, status, wallet_id, currency, amount, fee,"
        " posted_at) VALUES ('deposit', 'posted', %s, 'IRR', 10, 0, now())",
        (wallets[3],),
    )
    assert _checks(db) == {"transaction_entries"}


# --- drift between migrations/, sql/ and the database -------------------------------------


def _functions(connection: psycopg.Connection) -> list[tuple]:
    return [
        (
            f["name"],
            f["arguments"],
            f["source_hash"],
            f["security_definer"],
            f["provolatile"],
            tuple(f["proconfig"] or ()),
            f["grants"],
        )
        for f in rows(connection, WALLET_FUNCTIONS)
    ]


def _defined_in_files() -> dict[str, int]:
    """How many times each wallet.<name> function is created in sql/ and migrations/."""
    pattern = re.compile(r"CREATE\s+(?:OR\s+REPLACE\s+)?FUNCTION\s+wallet\.(\w+)\s*\(", re.I)
    counts: dict[str, int] = {}
    for path in [*SQL_DIR.glob("*.sql"), *MIGRATIONS_DIR.glob("*.sql")]:
        for name in pattern.findall(path.read_text()):
            counts[name] = counts.get(name, 0) + 1
    return counts


def test_reapplying_sql_changes_no_function(db):
    before = _functions(db)

    apply_sql_functions(db)

    assert _functions(db) == before
    assert len(before) >= 30


def test_every_function_in_schema_wallet_is_defined_in_sql_or_migrations(db):
    in_files = _defined_in_files()
    in_database: dict[str, int] = {}
    for function in rows(db, WALLET_FUNCTIONS):
        in_database[function["name"]] = in_database.get(function["name"], 0) + 1

    orphans = {name for name in in_database if name not in in_files}
    # A signature changed in sql/ leaves the old overload behind: more functions of that
    # name in the database than definitions in the files.
    stale_overloads = {name: count for name, count in in_database.items() if count > in_files.get(name, 0)}
    never_applied = {name for name in in_files if name not in in_database}

    assert orphans == set()
    assert stale_overloads == {}
    assert never_applied == set()


@pytest.fixture
def empty_database_url(postgres_url: str, owner_url: str) -> Iterator[str]:
    """A database with nothing in it, as `wallet migrate` meets it on a new install: owned by
    the ledger's owner, who migrates it (as the template was)."""
    name = unique_name("wallet_empty")
    create_database(postgres_url, name, owner="wallet_owner")
    try:
        yield with_database(owner_url, name)
    finally:
        drop_database(postgres_url, name)


def _migration_ids() -> list[str]:
    return sorted(migration.id for migration in read_migrations(str(MIGRATIONS_DIR)))


def test_migrate_applies_every_migration_once_and_builds_the_template_schema(db, empty_database_url):
    first = migrate(empty_database_url)
    second = migrate(empty_database_url)

    assert sorted(first) == _migration_ids()
    assert second == []
    with psycopg.connect(empty_database_url, autocommit=True) as fresh:
        assert _functions(fresh) == _functions(db)
        wallet_id = new_wallet(fresh)
        deposit(fresh, wallet_id, 10)
        assert rows(fresh, "SELECT * FROM wallet.verify_ledger()") == []


def test_two_concurrent_migrations_of_an_empty_database_both_succeed(db, empty_database_url):
    with ThreadPoolExecutor(max_workers=2) as pool:
        runs = [pool.submit(migrate, empty_database_url) for _ in range(2)]
        applied = [run.result(timeout=120) for run in runs]

    # The advisory lock makes them take turns: one applies everything, the other nothing.
    assert sorted(applied, key=len)[0] == []
    assert sorted(sorted(applied, key=len)[1]) == _migration_ids()
    with psycopg.connect(empty_database_url, autocommit=True) as fresh:
        assert _functions(fresh) == _functions(db)
