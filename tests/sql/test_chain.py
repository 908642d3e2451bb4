"""The ledger is tamper-evident (issue 9, item 4): each rewrite an auditor tried, done here by a
superuser with the triggers out of the way, is named by a check.

Two kinds of attacker: one who edits the facts consistently (balances, entries, sums all
agree) but leaves the hash chain alone, caught by wallet.verify_ledger(); and one who also
recomputes every hash (RECHAIN below, what anyone who read sql/chain.sql can do), caught by
wallet.verify_checkpoint() against a digest kept outside the database before the rewrite.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import psycopg
import pytest

from tests.support.ledger import (
    change_status,
    deposit,
    new_wallet,
    one,
    raises_sqlstate,
    rows,
    scalar,
    set_rule,
    transfer,
    withdraw,
)

# What an attacker who read sql/chain.sql runs after editing the facts: every link, wallet
# head and rule hash recomputed from the rows as they now are.
RECHAIN = """
DO $$
DECLARE
    v_wallet wallet.wallets;
    v_link   record;
    v_head   bytea;
    v_rule   wallet.commission_rules;
BEGIN
    FOR v_wallet IN SELECT * FROM wallet.wallets LOOP
        v_head := wallet.chain_genesis(v_wallet.id, v_wallet.owner_id, v_wallet.currency,
                                       v_wallet.created_at);
        FOR v_link IN
            SELECT l.*, t AS transaction,
                   (SELECT string_agg(coalesce(e.wallet_id::text, e.account) || ':' || e.net_amount, ','
                                      ORDER BY e.wallet_id NULLS LAST, e.account)
                    FROM wallet.entries AS e WHERE e.transaction_id = l.transaction_id) AS legs
            FROM (SELECT 'entry' AS source, id AS entry_id, chain_version, 'posted' AS event,
                         balance_after AS after, transaction_id, created_at
                  FROM wallet.entries WHERE wallet_id = v_wallet.id
                  UNION ALL
                  SELECT 'status', NULL, chain_version, event, pending_after, transaction_id, created_at
                  FROM wallet.status_changes WHERE wallet_id = v_wallet.id) AS l
            LEFT JOIN wallet.transactions AS t ON t.id = l.transaction_id
            ORDER BY l.chain_version
        LOOP
            v_head := wallet.chain_link(v_head,
                CASE WHEN v_link.transaction_id IS NULL THEN sha256(convert_to(v_link.event, 'UTF8'))
                     WHEN v_link.event = 'posted'
                         THEN wallet.transaction_digest(v_link.transaction, v_link.legs)
                     ELSE wallet.transaction_digest(v_link.transaction,
                              wallet.expected_legs((v_link.transaction).kind, (v_link.transaction).wallet_id,
                                                   (v_link.transaction).from_wallet_id,
                                                   (v_link.transaction).to_wallet_id,
                                                   (v_link.transaction).amount,
                                                   (v_link.transaction).fee)) END,
                v_link.chain_version, v_link.after, v_link.event, v_link.created_at);
            IF v_link.source = 'entry' THEN
                UPDATE wallet.entries SET chain_hash = v_head WHERE id = v_link.entry_id;
            ELSE
                UPDATE wallet.status_changes SET chain_hash = v_head
                WHERE wallet_id = v_wallet.id AND chain_version = v_link.chain_version;
            END IF;
        END LOOP;
        UPDATE wallet.wallets SET chain_hash = v_head WHERE id = v_wallet.id;
    END LOOP;
    v_head := wallet.rule_chain_genesis();
    FOR v_rule IN SELECT * FROM wallet.commission_rules ORDER BY id LOOP
        v_head := wallet.chain_link(v_head, wallet.rule_digest(v_rule), 0, 0, 'rule', v_rule.created_at);
        UPDATE wallet.commission_rules SET chain_hash = v_head WHERE id = v_rule.id;
    END LOOP;
END
$$
"""


def checks(db: psycopg.Connection, sql: str = "SELECT * FROM wallet.verify_ledger()", *params) -> set[str]:
    return {row["check_name"] for row in rows(db, sql, *params)}


def checkpoint_checks(db: psycopg.Connection, digest: str) -> set[str]:
    return checks(db, "SELECT * FROM wallet.verify_checkpoint(%s)", digest)


def checkpoint(db: psycopg.Connection) -> str:
    return scalar(db, "SELECT wallet.ledger_checkpoint()")


@pytest.fixture
def ledger(db) -> dict:
    """A small ledger with every kind of link: fees, transfers both ways, a scheduled and a
    canceled deposit, a frozen wallet, and a wallet that only ever received deposits."""
    set_rule(db, "deposit", rate_bps=50, fixed=10)
    set_rule(db, "withdrawal", fixed=700)
    set_rule(db, "transfer", rate_bps=100, min_fee=25)
    a, b, c, d = (new_wallet(db, f"shop-{n}") for n in range(4))
    deposit(db, a, 2_000_000)
    deposit(db, b, 500_000)
    transfer(db, a, b, 300_000)
    transfer(db, b, a, 40_000)
    fee_paid = withdraw(db, a, 100_000)["id"]
    deposit(db, d, 90_000)
    canceled = scheduled_deposit(db, c, 70_000)
    db.execute("SELECT wallet.cancel_deposit('svc', NULL, NULL, NULL, %s)", (canceled,))
    scheduled_deposit(db, c, 30_000)
    change_status(db, "freeze", c)
    last_of_b = deposit(db, b, 12_345)["id"]
    empty = new_wallet(db, "shop-empty")
    return {
        "a": a,
        "b": b,
        "c": c,
        "d": d,
        "empty": empty,
        "withdrawal": fee_paid,
        "canceled": canceled,
        "last_of_b": last_of_b,
    }


def scheduled_deposit(db, wallet_id, amount) -> str:
    at = datetime.now(UTC) + timedelta(hours=1)
    return one(
        db,
        "SELECT id FROM wallet.deposit('svc', NULL, NULL, NULL, %s, %s, NULL, '{}', %s)",
        wallet_id,
        amount,
        at,
    )["id"]


def as_attacker(db: psycopg.Connection) -> None:
    """A superuser session in which no trigger fires (append-only guards, foreign keys)."""
    db.execute("SET session_replication_role = replica")


# --- the tampers the audit tried ----------------------------------------------------------


def change_an_amount_with_its_entries(db, ledger):
    """The only deposit of d made 1,000 larger, with its legs, d's balance and entry."""
    transaction = scalar(db, "SELECT id FROM wallet.transactions WHERE wallet_id = %s", ledger["d"])
    db.execute("UPDATE wallet.transactions SET amount = amount + 1000 WHERE id = %s", (transaction,))
    db.execute(
        "UPDATE wallet.entries SET net_amount = net_amount - 1000"
        " WHERE transaction_id = %s AND account = 'world'",
        (transaction,),
    )
    db.execute(
        "UPDATE wallet.entries SET net_amount = net_amount + 1000, balance_after = balance_after + 1000"
        " WHERE transaction_id = %s AND wallet_id IS NOT NULL",
        (transaction,),
    )
    db.execute("UPDATE wallet.wallets SET balance = balance + 1000 WHERE id = %s", (ledger["d"],))


def delete_the_last_transaction(db, ledger):
    """b's newest deposit gone with its entries, b's balance rolled back (its head left)."""
    net = scalar(
        db,
        "SELECT net_amount FROM wallet.entries WHERE transaction_id = %s AND wallet_id IS NOT NULL",
        ledger["last_of_b"],
    )
    db.execute("DELETE FROM wallet.entries WHERE transaction_id = %s", (ledger["last_of_b"],))
    db.execute("DELETE FROM wallet.transactions WHERE id = %s", (ledger["last_of_b"],))
    db.execute("UPDATE wallet.wallets SET balance = balance - %s WHERE id = %s", (net, ledger["b"]))


def delete_the_last_transaction_and_roll_back_the_head(db, ledger):
    """As above, and b's head put back to its previous link: a consistent rollback."""
    delete_the_last_transaction(db, ledger)
    db.execute(
        "UPDATE wallet.wallets AS w SET chain_version = e.chain_version, chain_hash = e.chain_hash,"
        " updated_at = e.created_at"
        " FROM (SELECT * FROM wallet.entries WHERE wallet_id = %(b)s"
        "       ORDER BY chain_version DESC LIMIT 1) AS e"
        " WHERE w.id = %(b)s",
        {"b": ledger["b"]},
    )


def waive_a_fee(db, ledger):
    """a's withdrawal fee of 700 set to 0, its revenue leg deleted, a's entries and balance adjusted."""
    fee = scalar(db, "SELECT fee FROM wallet.transactions WHERE id = %s", ledger["withdrawal"])
    entry = one(
        db,
        "SELECT id, chain_version FROM wallet.entries WHERE transaction_id = %s AND wallet_id IS NOT NULL",
        ledger["withdrawal"],
    )
    db.execute("UPDATE wallet.transactions SET fee = 0 WHERE id = %s", (ledger["withdrawal"],))
    db.execute(
        "DELETE FROM wallet.entries WHERE transaction_id = %s AND account = 'revenue'",
        (ledger["withdrawal"],),
    )
    db.execute(
        "UPDATE wallet.entries SET net_amount = net_amount + %s, balance_after = balance_after + %s"
        " WHERE id = %s",
        (fee, fee, entry["id"]),
    )
    db.execute(
        "UPDATE wallet.entries SET balance_before = balance_before + %s, balance_after = balance_after + %s"
        " WHERE wallet_id = %s AND id > %s",
        (fee, fee, ledger["a"], entry["id"]),
    )
    db.execute("UPDATE wallet.wallets SET balance = balance + %s WHERE id = %s", (fee, ledger["a"]))


def add_balanced_orphan_entries(db, ledger):
    """Revenue +5,000,000 against the outside world, under a posted transaction of their own."""
    transaction = scalar(
        db,
        "INSERT INTO wallet.transactions (kind, status, wallet_id, currency, amount, fee, posted_at)"
        " VALUES ('withdrawal', 'posted', %s, 'IRR', 5000000, 5000000, now()) RETURNING id",
        ledger["d"],
    )
    db.execute(
        "INSERT INTO wallet.entries (transaction_id, account, currency, kind, net_amount)"
        " VALUES (%(t)s, 'revenue', 'IRR', 'withdrawal', 5000000),"
        "        (%(t)s, 'world', 'IRR', 'withdrawal', -5000000)",
        {"t": transaction},
    )


def add_balanced_entries_to_a_transaction(db, ledger):
    """The same pair added to a's withdrawal, whose own legs stay as they were."""
    db.execute(
        "INSERT INTO wallet.entries (transaction_id, account, currency, kind, net_amount)"
        " VALUES (%(t)s, 'revenue', 'IRR', 'withdrawal', 5000000),"
        "        (%(t)s, 'world', 'IRR', 'withdrawal', -5000000)",
        {"t": ledger["withdrawal"]},
    )


def redirect_a_transfer(db, ledger):
    """b's newest incoming transfer made to go to the empty wallet instead, balances moved."""
    transfer_id = scalar(
        db,
        "SELECT id FROM wallet.transactions WHERE to_wallet_id = %s ORDER BY created_at DESC LIMIT 1",
        ledger["b"],
    )
    entry = one(
        db,
        "SELECT id, net_amount FROM wallet.entries WHERE transaction_id = %s AND wallet_id = %s",
        transfer_id,
        ledger["b"],
    )
    amount = entry["net_amount"]
    db.execute(
        "UPDATE wallet.transactions SET to_wallet_id = %s WHERE id = %s", (ledger["empty"], transfer_id)
    )
    db.execute(
        "UPDATE wallet.entries SET wallet_id = %s, balance_before = 0, balance_after = %s WHERE id = %s",
        (ledger["empty"], amount, entry["id"]),
    )
    db.execute(
        "UPDATE wallet.entries SET balance_before = balance_before - %s, balance_after = balance_after - %s"
        " WHERE wallet_id = %s AND id > %s",
        (amount, amount, ledger["b"], entry["id"]),
    )
    db.execute("UPDATE wallet.wallets SET balance = balance - %s WHERE id = %s", (amount, ledger["b"]))
    db.execute("UPDATE wallet.wallets SET balance = %s WHERE id = %s", (amount, ledger["empty"]))


def change_a_currency(db, ledger):
    """d and everything it ever did in USD instead of IRR."""
    db.execute("UPDATE wallet.wallets SET currency = 'USD' WHERE id = %s", (ledger["d"],))
    db.execute("UPDATE wallet.transactions SET currency = 'USD' WHERE wallet_id = %s", (ledger["d"],))
    db.execute(
        "UPDATE wallet.entries SET currency = 'USD' WHERE transaction_id IN"
        " (SELECT id FROM wallet.transactions WHERE wallet_id = %s)",
        (ledger["d"],),
    )


def backdate_an_entry(db, ledger):
    """d's deposit moved a day back, into another statement period, its wallet's time too."""
    db.execute(
        "UPDATE wallet.entries SET created_at = created_at - interval '1 day' WHERE wallet_id = %s",
        (ledger["d"],),
    )
    db.execute(
        "UPDATE wallet.wallets SET updated_at = updated_at - interval '1 day' WHERE id = %s", (ledger["d"],)
    )


def rewrite_the_rule_history(db, ledger):
    """The first transfer rule made to have charged nothing."""
    db.execute(
        "UPDATE wallet.commission_rules SET rate_bps = 0, min_fee = 0"
        " WHERE id = (SELECT min(id) FROM wallet.commission_rules WHERE operation = 'transfer')"
    )


def reschedule_a_canceled_deposit(db, ledger):
    """c's canceled deposit made scheduled again, its pending restored."""
    net = scalar(db, "SELECT amount - fee FROM wallet.transactions WHERE id = %s", ledger["canceled"])
    db.execute("UPDATE wallet.transactions SET status = 'scheduled' WHERE id = %s", (ledger["canceled"],))
    db.execute("UPDATE wallet.wallets SET pending = pending + %s WHERE id = %s", (net, ledger["c"]))


def unfreeze_a_wallet(db, ledger):
    db.execute("UPDATE wallet.wallets SET status = 'active' WHERE id = %s", (ledger["c"],))


def truncate_the_ledger(db, ledger):
    db.execute(
        "TRUNCATE wallet.entries, wallet.status_changes, wallet.transactions, wallet.holds, wallet.wallets,"
        " wallet.commission_rules, wallet.checkpoint_heads, wallet.checkpoints"
    )


Tamper = Callable[[psycopg.Connection, dict], None]

# Each tamper, what verify_ledger() names when the hashes are left alone, and what
# verify_checkpoint() names when they are recomputed too.
TAMPERS: list[tuple[Tamper, set[str], set[str]]] = [
    (change_an_amount_with_its_entries, {"chain_link_mismatch"}, {"chain_rewritten"}),
    (delete_the_last_transaction, {"chain_head_mismatch"}, {"chain_rewritten"}),
    (delete_the_last_transaction_and_roll_back_the_head, set(), {"chain_rolled_back"}),
    (waive_a_fee, {"chain_link_mismatch"}, {"chain_rewritten"}),
    (add_balanced_orphan_entries, {"transaction_unchained"}, set()),
    (add_balanced_entries_to_a_transaction, {"chain_link_mismatch", "revenue_differs_from_fee"}, None),
    (redirect_a_transfer, {"chain_link_mismatch"}, {"chain_rewritten"}),
    (change_a_currency, {"chain_link_mismatch"}, {"chain_rewritten"}),
    (backdate_an_entry, {"chain_link_mismatch"}, {"chain_rewritten"}),
    (rewrite_the_rule_history, {"rule_chain_broken"}, {"rule_chain_rewritten"}),
    (reschedule_a_canceled_deposit, {"status_differs_from_chain"}, None),
    (unfreeze_a_wallet, {"status_differs_from_chain"}, None),
    (truncate_the_ledger, set(), {"checkpoint_missing"}),
]


def test_an_untouched_ledger_passes_every_check(db, ledger):
    digest = checkpoint(db)

    assert rows(db, "SELECT * FROM wallet.verify_ledger()") == []
    assert rows(db, "SELECT * FROM wallet.verify_checkpoint(%s)", digest) == []
    assert rows(db, "SELECT * FROM wallet.verify_ledger_since(now())") == []


@pytest.mark.parametrize(("tamper", "named", "_"), TAMPERS, ids=[t[0].__name__ for t in TAMPERS])
def test_verify_ledger_names_each_rewrite_that_leaves_the_hashes_alone(db, ledger, tamper, named, _):
    as_attacker(db)
    tamper(db, ledger)

    found = checks(db)

    assert named <= found, f"{tamper.__name__}: {found}"
    # Consistent rewrites: the old checks (sums, balances, entry chain) see nothing wrong,
    # so it is the chain that names them.
    assert found - named <= {"chain_version_gap", "chain_head_mismatch", "chain_link_mismatch"}


@pytest.mark.parametrize(
    ("tamper", "_", "named"),
    [t for t in TAMPERS if t[2] is not None],
    ids=[t[0].__name__ for t in TAMPERS if t[2] is not None],
)
def test_a_kept_checkpoint_names_each_rewrite_even_with_the_hashes_recomputed(db, ledger, tamper, _, named):
    digest = checkpoint(db)
    as_attacker(db)
    tamper(db, ledger)
    if tamper is not truncate_the_ledger:
        db.execute(RECHAIN)

    found = checkpoint_checks(db, digest)

    assert named <= found, f"{tamper.__name__}: {found}"


def test_orphan_entries_under_their_own_transaction_are_found_by_the_full_check_and_since(db, ledger):
    """No wallet chain covers them, so recomputing hashes cannot hide them."""
    digest = checkpoint(db)
    as_attacker(db)
    add_balanced_orphan_entries(db, ledger)
    db.execute(RECHAIN)

    assert "transaction_unchained" in checks(db)
    assert "transaction_unchained" in checks(db, "SELECT * FROM wallet.verify_ledger_since(now())")
    assert checkpoint_checks(db, digest) == set()


def test_the_rechain_helper_reproduces_an_untouched_chain(db, ledger):
    """Guards the tests above: RECHAIN alone changes no hash, so what they catch is the tamper."""
    before = rows(db, "SELECT id, chain_hash FROM wallet.wallets ORDER BY id")
    as_attacker(db)
    db.execute(RECHAIN)

    assert rows(db, "SELECT id, chain_hash FROM wallet.wallets ORDER BY id") == before


def test_an_altered_checkpoint_is_named(db, ledger):
    digest = checkpoint(db)
    as_attacker(db)
    db.execute(
        "UPDATE wallet.checkpoint_heads SET balance = balance + 1 WHERE wallet_id = %s", (ledger["a"],)
    )

    assert "checkpoint_altered" in checkpoint_checks(db, digest)
    assert "checkpoint_altered" in checks(db, "SELECT * FROM wallet.verify_ledger_since(now())")


def test_a_checkpoint_stays_valid_while_the_ledger_grows(db, ledger):
    digest = checkpoint(db)
    deposit(db, ledger["a"], 5_000)
    transfer(db, ledger["a"], ledger["b"], 1_000)
    change_status(db, "unfreeze", ledger["c"])
    set_rule(db, "deposit", fixed=1)

    assert checkpoint_checks(db, digest) == set()
    assert rows(db, "SELECT * FROM wallet.verify_ledger()") == []


def test_a_malformed_checkpoint_digest_is_invalid_request(db):
    for digest in ("", "v1:1:abc", "v2:1:" + "0" * 64, "v1:x:" + "0" * 64):
        with raises_sqlstate("WI400", digest):
            db.execute("SELECT * FROM wallet.verify_checkpoint(%s)", (digest,))


def test_a_checkpoint_from_another_ledger_is_missing_or_altered(db, ledger):
    unknown = "v1:999:" + "ab" * 32
    first = checkpoint(db)
    forged = first[: first.rindex(":") + 1] + "00" * 32

    assert checkpoint_checks(db, unknown) == {"checkpoint_missing"}
    assert checkpoint_checks(db, forged) == {"checkpoint_altered"}


# --- verify_ledger_since ------------------------------------------------------------------


def test_since_checks_what_changed_after_the_checkpoint(db, ledger):
    checkpoint(db)
    later = new_wallet(db, "shop-later")
    deposit(db, later, 10_000)
    deposit(db, ledger["a"], 20_000)
    transfer(db, ledger["a"], later, 3_000)
    new_digest_time = datetime.now(UTC)

    assert rows(db, "SELECT * FROM wallet.verify_ledger_since(%s)", new_digest_time) == []

    as_attacker(db)
    db.execute(
        "UPDATE wallet.entries SET net_amount = net_amount + 1, balance_after = balance_after + 1"
        " WHERE id = (SELECT max(id) FROM wallet.entries WHERE wallet_id = %s)",
        (later,),
    )
    found = checks(db, "SELECT * FROM wallet.verify_ledger_since(%s)", new_digest_time)

    assert {"chain_link_mismatch", "transaction_unbalanced", "balance_differs_from_entries"} <= found


def test_since_trusts_what_the_checkpoint_saw_and_the_full_check_does_not(db, ledger):
    checkpoint(db)
    as_attacker(db)
    change_an_amount_with_its_entries(db, ledger)

    assert checks(db, "SELECT * FROM wallet.verify_ledger_since(now())") == set()
    assert "chain_link_mismatch" in checks(db)


def test_since_needs_a_checkpoint_at_or_before_it(db, ledger):
    with raises_sqlstate("WI400"):
        db.execute("SELECT * FROM wallet.verify_ledger_since(now())")


# --- where the chain lives ----------------------------------------------------------------


def test_every_link_is_written_by_the_function_that_makes_the_change(db, ledger):
    """Versions count every change of each wallet, and a's head is its newest entry's link."""
    links = {
        row["wallet_id"]: row["links"]
        for row in rows(
            db,
            "SELECT wallet_id, count(*) AS links FROM (SELECT wallet_id FROM wallet.entries"
            " WHERE wallet_id IS NOT NULL UNION ALL SELECT wallet_id FROM wallet.status_changes) AS l"
            " GROUP BY wallet_id",
        )
    }
    heads = {row["id"]: row for row in rows(db, "SELECT id, chain_version, chain_hash FROM wallet.wallets")}
    newest_of_a = one(
        db,
        "SELECT chain_version, chain_hash FROM wallet.entries WHERE wallet_id = %s ORDER BY id DESC LIMIT 1",
        ledger["a"],
    )
    events_of_c = [
        row["event"]
        for row in rows(
            db,
            "SELECT event FROM wallet.status_changes WHERE wallet_id = %s ORDER BY chain_version",
            ledger["c"],
        )
    ]

    assert all(heads[wallet]["chain_version"] == count for wallet, count in links.items())
    assert heads[ledger["empty"]]["chain_version"] == 0
    assert dict(newest_of_a) == {"chain_version": 4, "chain_hash": heads[ledger["a"]]["chain_hash"]}
    assert events_of_c == ["deposit_scheduled", "deposit_canceled", "deposit_scheduled", "wallet_frozen"]


def test_the_chain_tables_are_append_only(db, ledger):
    for statement in (
        "UPDATE wallet.status_changes SET pending_after = 0",
        "DELETE FROM wallet.status_changes",
        "TRUNCATE wallet.status_changes",
    ):
        with raises_sqlstate("WR500", statement):
            db.execute(statement)
    checkpoint(db)
    for statement in ("DELETE FROM wallet.checkpoint_heads", "UPDATE wallet.checkpoints SET rule_count = 0"):
        with raises_sqlstate("WR500", statement):
            db.execute(statement)
