"""Holds (issue 12), called as the API and the worker call them: place, capture, void, expire,
read, list, reconcile and stats; how they change a wallet's held and available (never its
balance, until a capture posts), the codes each refusal raises, the tenancy, the idempotency,
the history, the bounds, the constraints behind them, and what verify_ledger names.
tests/sql/test_hold_concurrency.py races them."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from datetime import timedelta

import psycopg
import pytest

from tests.sql.public_schema_attack import plant, planted_calls
from tests.sql.test_bounds import COLUMN_CHECKS, RANGE_CHECK, _fill
from tests.sql.test_history import history_v2, without_hold_id
from tests.support.holds import (
    active_remaining,
    capture_hold,
    expire_hold,
    expiry_jobs,
    get_hold,
    held,
    list_holds,
    lose_expiry_job,
    make_due,
    place_hold,
    void_hold,
)
from tests.support.ledger import (
    MAX_AMOUNT,
    change_status,
    deposit,
    deposit_at,
    entries_of,
    funded_wallet,
    get_wallet,
    history,
    ledger_state,
    new_wallet,
    one,
    open_wallet,
    raises_sqlstate,
    rows,
    scalar,
    set_rule,
    transfer,
    unknown_id,
    withdraw,
)

MAX_BALANCE = 10**18
WEEK = timedelta(days=7)


def money(db: psycopg.Connection, wallet_id) -> tuple[int, int, int]:
    """(balance, held, available) as wallet.get_wallet shows them (held = balance - available)."""
    wallet = get_wallet(db, wallet_id)
    return wallet["balance"], wallet["balance"] - wallet["available"], wallet["available"]


def violations(db: psycopg.Connection) -> list[dict]:
    return rows(db, "SELECT * FROM wallet.verify_ledger()")


def hold_state(db: psycopg.Connection) -> list[dict]:
    """Every hold and every wallet's held: what a refused call must leave as it was."""
    return rows(
        db,
        "SELECT h.id, h.status, h.captured_amount, h.remaining, h.closed_at, w.held"
        " FROM wallet.holds AS h JOIN wallet.wallets AS w ON w.id = h.wallet_id ORDER BY h.id",
    )


def get_transaction_v2(db: psycopg.Connection, transaction_id, *, acting: str | None = None) -> dict:
    return one(db, "SELECT * FROM wallet.get_transaction_v2(%s::text, %s::uuid)", acting, transaction_id)


# --- placing ---------------------------------------------------------------------------------


def test_a_hold_reserves_available_money_and_moves_none(db):
    wallet_id = funded_wallet(db, 1_000)
    history_before = history(db, wallet_id)
    transactions_before = scalar(db, "SELECT count(*) FROM wallet.transactions")

    hold = place_hold(db, wallet_id, 600, reference="order-7", metadata={"cart": 3}, key="h-1")

    assert {key: hold[key] for key in ("wallet_id", "status", "amount", "captured_amount", "remaining")} == {
        "wallet_id": wallet_id,
        "status": "active",
        "amount": 600,
        "captured_amount": 0,
        "remaining": 600,
    }
    assert (hold["reference"], hold["metadata"], hold["closed_at"], hold["replayed"]) == (
        "order-7",
        {"cart": 3},
        None,
        False,
    )
    assert hold["expires_at"] - hold["created_at"] == WEEK  # the default
    assert get_hold(db, hold["id"]) == hold
    assert money(db, wallet_id) == (1_000, 600, 400)
    assert history(db, wallet_id) == history_before
    assert scalar(db, "SELECT count(*) FROM wallet.transactions") == transactions_before
    # Its expiry job, enqueued in the same transaction for expires_at.
    [job] = expiry_jobs(db, hold["id"])
    assert job == {
        "queue_name": "holds",
        "task_name": "wallet:expire_hold",
        "args": {"hold_id": str(hold["id"])},
        "scheduled_at": hold["expires_at"],
        "status": "todo",
    }
    assert violations(db) == []


def test_withdrawals_and_transfers_cannot_spend_held_money(db):
    wallet_id, other = funded_wallet(db, 1_000), new_wallet(db, "other")
    set_rule(db, "withdrawal", fixed=5)
    place_hold(db, wallet_id, 600)
    before = ledger_state(db)

    with raises_sqlstate("WF422", "withdraw"):
        withdraw(db, wallet_id, 396)  # 396 + 5 > 400 available
    with raises_sqlstate("WF422", "transfer"):
        transfer(db, wallet_id, other, 401)
    with raises_sqlstate("WF422", "another hold"):
        place_hold(db, wallet_id, 401)
    assert ledger_state(db) == before

    withdraw(db, wallet_id, 395)
    assert money(db, wallet_id) == (600, 600, 0)
    with raises_sqlstate("WF422", "the last rial"):
        transfer(db, wallet_id, other, 1)
    # Deposits and settlements do not touch held.
    deposit(db, wallet_id, 50)
    assert money(db, wallet_id) == (650, 600, 50)
    assert violations(db) == []


def test_a_hold_needs_enough_available_and_an_active_wallet_of_the_acting_owner(db):
    wallet_id = funded_wallet(db, 1_000, owner="shop-a")
    place_hold(db, wallet_id, 700)
    frozen = funded_wallet(db, 1_000, owner="shop-a")
    change_status(db, "freeze", frozen)
    closed = new_wallet(db, "shop-a")
    change_status(db, "close", closed)
    before, holds_before = ledger_state(db), hold_state(db)

    for case, sqlstate, call in [
        ("more than available", "WF422", lambda: place_hold(db, wallet_id, 301)),
        ("frozen", "WS409", lambda: place_hold(db, frozen, 1)),
        ("closed", "WS409", lambda: place_hold(db, closed, 1)),
        ("unknown wallet", "WN404", lambda: place_hold(db, unknown_id(), 1)),
        ("another owner's", "WN404", lambda: place_hold(db, wallet_id, 1, acting="shop-b")),
    ]:
        with raises_sqlstate(sqlstate, case):
            call()

    assert ledger_state(db) == before and hold_state(db) == holds_before
    assert place_hold(db, wallet_id, 300, acting="shop-a")["remaining"] == 300
    assert money(db, wallet_id) == (1_000, 1_000, 0)


def _place_expiring(db: psycopg.Connection, wallet_id, expires_at_sql: str) -> dict:
    """A hold whose expires_at is an SQL expression (read with the function's own now())."""
    return one(
        db,
        f"SELECT * FROM wallet.place_hold('svc', NULL, NULL, NULL, %s::uuid, 10::bigint, {expires_at_sql},"
        " NULL::text, NULL::jsonb)",
        wallet_id,
    )


def test_expires_at_is_a_second_to_366_days_ahead(db):
    wallet_id = funded_wallet(db, 1_000)
    before = ledger_state(db)

    for expires_at in (
        "now() + interval '999 milliseconds'",
        "now()",
        "now() - interval '1 day'",
        "now() + interval '8784 hours 1 millisecond'",  # 366 days, in any time zone
        "'infinity'::timestamptz",
        "'-infinity'::timestamptz",
    ):
        with raises_sqlstate("WI400", expires_at):
            _place_expiring(db, wallet_id, expires_at)
    assert ledger_state(db) == before and hold_state(db) == []

    shortest = _place_expiring(db, wallet_id, "now() + interval '1 second'")
    longest = _place_expiring(db, wallet_id, "now() + interval '8784 hours'")
    assert shortest["expires_at"] - shortest["created_at"] == timedelta(seconds=1)
    assert longest["expires_at"] - longest["created_at"] == timedelta(days=366)


def test_a_hold_of_max_amount_is_valid_and_one_more_is_not(db):
    wallet_id = funded_wallet(db, MAX_AMOUNT)
    deposit(db, wallet_id, 1)
    before = ledger_state(db)

    for amount in (0, -1, MAX_AMOUNT + 1):
        with raises_sqlstate("WI400", amount):
            place_hold(db, wallet_id, amount)
    with raises_sqlstate("WI400", "reference"):
        place_hold(db, wallet_id, 1, reference="")
    with raises_sqlstate("WI400", "metadata"):
        place_hold(db, wallet_id, 1, metadata=["not", "an", "object"])
    assert ledger_state(db) == before

    hold = place_hold(db, wallet_id, MAX_AMOUNT)
    with raises_sqlstate("WI400"):
        capture_hold(db, hold["id"], MAX_AMOUNT + 1)
    assert capture_hold(db, hold["id"], MAX_AMOUNT)["amount"] == MAX_AMOUNT


def test_held_reaches_max_balance_and_no_further(db):
    wallet_id = new_wallet(db)
    _fill(db, wallet_id, MAX_BALANCE)
    db.execute(
        "SELECT wallet.place_hold('svc', NULL, NULL, NULL, %s::uuid, %s::bigint) FROM generate_series(1, %s)",
        (wallet_id, MAX_AMOUNT, MAX_BALANCE // MAX_AMOUNT),
    )

    with raises_sqlstate("WF422"):
        place_hold(db, wallet_id, 1)
    assert money(db, wallet_id) == (MAX_BALANCE, MAX_BALANCE, 0)
    assert violations(db) == []


def test_the_bound_on_held_is_max_balance(db):
    [definition] = [row[0] for row in db.execute(COLUMN_CHECKS, ("wallet.wallets", "held")).fetchall()]
    # NOT VALID: added without reading the table under migration 0009's lock (every row held 0).
    match = RANGE_CHECK.fullmatch(definition.removesuffix(" NOT VALID"))

    assert definition.endswith(" NOT VALID")
    assert match and (int(match[2]), int(match[3])) == (0, scalar(db, "SELECT wallet.max_balance()"))


# --- capturing -------------------------------------------------------------------------------


def test_partial_captures_repeat_until_nothing_remains(db):
    wallet_id = funded_wallet(db, 5_000)
    hold = place_hold(db, wallet_id, 1_000, reference="order-9", metadata={"cart": 1})

    first = capture_hold(db, hold["id"], 300)
    after_first = get_hold(db, hold["id"])
    second = capture_hold(db, hold["id"], 200)
    balance_between = money(db, wallet_id)
    last = capture_hold(db, hold["id"])  # what remains

    assert [(t["kind"], t["status"], t["amount"], t["fee"], t["hold_id"]) for t in (first, second, last)] == [
        ("withdrawal", "posted", amount, 0, hold["id"]) for amount in (300, 200, 500)
    ]
    assert (first["wallet_id"], first["reference"], first["metadata"]) == (wallet_id, "order-9", {"cart": 1})
    assert (after_first["status"], after_first["captured_amount"], after_first["remaining"]) == (
        "active",
        300,
        700,
    )
    assert after_first["closed_at"] is None
    assert balance_between == (4_500, 500, 4_000)
    closed = get_hold(db, hold["id"])
    assert (closed["status"], closed["captured_amount"], closed["remaining"]) == ("captured", 1_000, 0)
    assert closed["closed_at"] is not None
    assert money(db, wallet_id) == (4_000, 0, 4_000)
    assert [job["status"] for job in expiry_jobs(db, hold["id"])] == []  # deleted when it closed
    assert entries_of(db, first["id"]) == [
        {"wallet_id": wallet_id, "account": None, "currency": "IRR", "net_amount": -300,
         "balance_before": 5_000, "balance_after": 4_700},
        {"wallet_id": None, "account": "world", "currency": "IRR", "net_amount": 300,
         "balance_before": None, "balance_after": None},
    ]  # fmt: skip
    with raises_sqlstate("WH409"):
        capture_hold(db, hold["id"], 1)
    assert violations(db) == []


def test_a_final_capture_releases_the_rest(db):
    wallet_id = funded_wallet(db, 2_000)
    hold = place_hold(db, wallet_id, 1_000)

    captured = capture_hold(db, hold["id"], 250, final=True)

    closed = get_hold(db, hold["id"])
    assert captured["amount"] == 250
    assert (closed["status"], closed["captured_amount"], closed["remaining"]) == ("captured", 250, 0)
    assert money(db, wallet_id) == (1_750, 0, 1_750)
    assert violations(db) == []


def test_a_capture_above_what_remains_is_refused(db):
    wallet_id = funded_wallet(db, 2_000)
    hold = place_hold(db, wallet_id, 1_000)
    capture_hold(db, hold["id"], 400)
    before, holds_before = ledger_state(db), hold_state(db)

    with raises_sqlstate("WA422"):
        capture_hold(db, hold["id"], 601)
    with raises_sqlstate("WA422", "final"):
        capture_hold(db, hold["id"], 601, final=True)

    assert ledger_state(db) == before and hold_state(db) == holds_before


def test_a_voided_or_expired_hold_is_not_active_any_more(db):
    wallet_id = funded_wallet(db, 3_000)
    voided, expired, overdue = (place_hold(db, wallet_id, 1_000)["id"] for _ in range(3))
    void_hold(db, voided)
    make_due(db, expired)
    assert expire_hold(db, expired) == "expired"
    # Past its expires_at a hold is expiring, even before its job has run: not capturable.
    make_due(db, overdue)
    before = ledger_state(db)

    for hold_id in (voided, expired, overdue):
        with raises_sqlstate("WH409", hold_id):
            capture_hold(db, hold_id)
    for hold_id in (voided, expired):
        with raises_sqlstate("WH409", hold_id):
            void_hold(db, hold_id)

    assert ledger_state(db) == before
    assert money(db, wallet_id) == (3_000, 1_000, 2_000)
    # An overdue hold may still be voided: its money is released either way.
    assert void_hold(db, overdue)["status"] == "voided"
    assert money(db, wallet_id) == (3_000, 0, 3_000)


def test_the_fee_is_paid_from_available_never_from_the_hold(db):
    set_rule(db, "withdrawal", fixed=10)
    wallet_id = funded_wallet(db, 1_000)
    hold = place_hold(db, wallet_id, 1_000)  # available 0
    before, holds_before = ledger_state(db), hold_state(db)

    with raises_sqlstate("WF422", "partial"):
        capture_hold(db, hold["id"], 500)
    # Releasing the rest does not pay for the fee either: it is checked before the capture.
    with raises_sqlstate("WF422", "final"):
        capture_hold(db, hold["id"], 500, final=True)
    assert ledger_state(db) == before and hold_state(db) == holds_before

    deposit(db, wallet_id, 10)
    captured = capture_hold(db, hold["id"], 500)
    assert (captured["amount"], captured["fee"]) == (500, 10)
    assert money(db, wallet_id) == (500, 500, 0)
    assert violations(db) == []


def test_a_capture_to_another_wallet_is_a_transfer_of_any_owner_in_the_same_currency(db):
    set_rule(db, "transfer", fixed=7)
    set_rule(db, "withdrawal", fixed=1_000)  # not the rule of a capture to a wallet
    payer = funded_wallet(db, 10_000, owner="shop-a")
    payee = new_wallet(db, "shop-b")
    hold = place_hold(db, payer, 4_000, acting="shop-a", reference="order-1")

    captured = capture_hold(db, hold["id"], 1_500, to_wallet_id=payee, acting="shop-a")

    assert {key: captured[key] for key in ("kind", "wallet_id", "from_wallet_id", "to_wallet_id")} == {
        "kind": "transfer",
        "wallet_id": None,
        "from_wallet_id": payer,
        "to_wallet_id": payee,
    }
    assert (captured["amount"], captured["fee"], captured["hold_id"], captured["reference"]) == (
        1_500,
        7,
        hold["id"],
        "order-1",
    )
    assert money(db, payer) == (10_000 - 1_507, 2_500, 10_000 - 1_507 - 2_500)
    assert money(db, payee) == (1_500, 0, 1_500)
    assert get_transaction_v2(db, captured["id"]) == captured
    assert get_transaction_v2(db, captured["id"], acting="shop-b")["hold_id"] == hold["id"]
    assert get_transaction_v2(db, captured["id"], acting="shop-a")["hold_id"] == hold["id"]
    v1 = one(db, "SELECT * FROM wallet.get_transaction(NULL, %s::uuid)", captured["id"])
    assert {key: value for key, value in captured.items() if key != "hold_id"} == v1
    # Every other transaction has no hold.
    plain = transfer(db, payer, payee, 1)
    assert get_transaction_v2(db, plain["id"])["hold_id"] is None
    assert violations(db) == []


def test_a_capture_to_a_wallet_is_refused_where_a_transfer_would_be(db):
    payer = funded_wallet(db, 10_000)
    hold = place_hold(db, payer, 4_000)
    dollars = open_wallet(db, "shop-usd", "USD")["id"]
    frozen = new_wallet(db, "frozen")
    change_status(db, "freeze", frozen)
    closed = new_wallet(db, "closed")
    change_status(db, "close", closed)
    full = new_wallet(db, "full")
    _fill(db, full, MAX_BALANCE - 999)
    before, holds_before = ledger_state(db), hold_state(db)

    for case, sqlstate, to_wallet_id in [
        ("its own wallet", "WW422", payer),
        ("another currency", "WM422", dollars),
        ("unknown", "WN404", unknown_id()),
        ("frozen", "WS409", frozen),
        ("closed", "WS409", closed),
        ("past the maximum balance", "WL422", full),
    ]:
        with raises_sqlstate(sqlstate, case):
            capture_hold(db, hold["id"], 1_000, to_wallet_id=to_wallet_id)

    assert ledger_state(db) == before and hold_state(db) == holds_before
    assert capture_hold(db, hold["id"], 999, to_wallet_id=full)["kind"] == "transfer"
    assert get_wallet(db, full)["balance"] == MAX_BALANCE


def test_another_owners_hold_is_not_found(db):
    mine = funded_wallet(db, 1_000, owner="shop-a")
    theirs = funded_wallet(db, 1_000, owner="shop-b")
    hold = place_hold(db, theirs, 500)
    before, holds_before = ledger_state(db), hold_state(db)

    for case, call in {
        "get": lambda: get_hold(db, hold["id"], acting="shop-a"),
        "capture": lambda: capture_hold(db, hold["id"], acting="shop-a"),
        "capture to my wallet": lambda: capture_hold(db, hold["id"], to_wallet_id=mine, acting="shop-a"),
        "void": lambda: void_hold(db, hold["id"], acting="shop-a"),
        "list": lambda: list_holds(db, theirs, acting="shop-a"),
        "unknown hold": lambda: get_hold(db, unknown_id()),
        "capture an unknown hold": lambda: capture_hold(db, unknown_id()),
        "void an unknown hold": lambda: void_hold(db, unknown_id()),
    }.items():
        with raises_sqlstate("WN404", case):
            call()

    assert ledger_state(db) == before and hold_state(db) == holds_before
    assert get_hold(db, hold["id"], acting="shop-b")["id"] == hold["id"]
    assert capture_hold(db, hold["id"], 100, acting="shop-b")["hold_id"] == hold["id"]


def test_on_a_frozen_wallet_a_hold_may_be_voided_but_not_placed_or_captured(db):
    wallet_id, payee = funded_wallet(db, 1_000), new_wallet(db, "payee")
    voided, captured = place_hold(db, wallet_id, 300), place_hold(db, wallet_id, 300)
    change_status(db, "freeze", wallet_id)
    before = ledger_state(db)

    with raises_sqlstate("WS409", "place"):
        place_hold(db, wallet_id, 1)
    with raises_sqlstate("WS409", "capture"):
        capture_hold(db, captured["id"], 100)
    with raises_sqlstate("WS409", "capture to a wallet"):
        capture_hold(db, captured["id"], 100, to_wallet_id=payee)
    assert void_hold(db, voided["id"])["status"] == "voided"

    assert ledger_state(db) == before
    assert money(db, wallet_id) == (1_000, 300, 700)
    change_status(db, "unfreeze", wallet_id)
    assert capture_hold(db, captured["id"], 100)["amount"] == 100


def test_a_wallet_with_an_active_hold_cannot_close(db):
    wallet_id = funded_wallet(db, 500)
    hold = place_hold(db, wallet_id, 500)

    with raises_sqlstate("WE409"):
        change_status(db, "close", wallet_id)
    capture_hold(db, hold["id"])
    assert change_status(db, "close", wallet_id)["status"] == "closed"


# --- voiding, expiring -----------------------------------------------------------------------


def test_a_void_releases_what_remains_and_keeps_what_was_captured(db):
    wallet_id = funded_wallet(db, 2_000)
    hold = place_hold(db, wallet_id, 1_000)
    capture_hold(db, hold["id"], 300)
    history_before = history(db, wallet_id)

    voided = void_hold(db, hold["id"])

    assert (voided["status"], voided["captured_amount"], voided["remaining"]) == ("voided", 300, 0)
    assert voided["closed_at"] is not None and voided["replayed"] is False
    assert money(db, wallet_id) == (1_700, 0, 1_700)
    assert history(db, wallet_id) == history_before
    assert expiry_jobs(db, hold["id"]) == []
    assert violations(db) == []


def test_expire_hold_expires_an_active_hold_once_it_is_due_and_only_then(db):
    wallet_id = funded_wallet(db, 3_000)
    hold = place_hold(db, wallet_id, 1_000)
    capture_hold(db, hold["id"], 100)
    captured, voided = place_hold(db, wallet_id, 500), place_hold(db, wallet_id, 500)
    capture_hold(db, captured["id"])
    void_hold(db, voided["id"])
    history_before = history(db, wallet_id)

    early = expire_hold(db, hold["id"])
    still = get_hold(db, hold["id"])
    make_due(db, hold["id"])
    first, second = expire_hold(db, hold["id"]), expire_hold(db, hold["id"])

    assert (early, still["status"], still["remaining"]) == ("not_due", "active", 900)
    assert (first, second) == ("expired", "expired")
    expired = get_hold(db, hold["id"])
    assert (expired["status"], expired["captured_amount"], expired["remaining"]) == ("expired", 100, 0)
    assert expired["closed_at"] >= expired["expires_at"]
    assert money(db, wallet_id) == (2_400, 0, 2_400)
    assert history(db, wallet_id) == history_before
    assert (expire_hold(db, captured["id"]), expire_hold(db, voided["id"])) == ("captured", "voided")
    with raises_sqlstate("WN404"):
        expire_hold(db, unknown_id())
    assert violations(db) == []


def test_expire_due_holds_expires_a_batch_of_due_holds_no_one_else_holds(db, database_url):
    first, second = funded_wallet(db, 10_000), funded_wallet(db, 10_000, owner="other")
    due = [place_hold(db, wallet_id, 1_000)["id"] for wallet_id in (first, second, first, second, first)]
    not_due = place_hold(db, first, 1_000)["id"]
    for hold_id in due:
        make_due(db, hold_id)

    with psycopg.connect(database_url) as capture:  # a capture (void, job) has taken one of them
        capture.execute("SELECT FROM wallet.holds WHERE id = %s FOR UPDATE", (due[0],))
        one_only = scalar(db, "SELECT wallet.expire_due_holds(1)")
        the_rest = scalar(db, "SELECT wallet.expire_due_holds()")
        capture.rollback()
    none_left = (
        scalar(db, "SELECT wallet.expire_due_holds(0)"),
        scalar(db, "SELECT wallet.expire_due_holds()"),
    )

    assert (one_only, the_rest, none_left) == (1, 3, (0, 1))
    statuses = [get_hold(db, hold_id)["status"] for hold_id in [*due, not_due]]
    assert statuses == ["expired"] * 5 + ["active"]
    assert (money(db, first), money(db, second)) == ((10_000, 1_000, 9_000), (10_000, 0, 10_000))
    assert all(expiry_jobs(db, hold_id) == [] for hold_id in due)
    for limit in (-1, 1_001, None):
        with raises_sqlstate("WI400", limit):
            scalar(db, "SELECT wallet.expire_due_holds(%s::integer)", limit)
    assert violations(db) == []


def test_reconcile_re_enqueues_the_expiry_of_an_overdue_hold_whose_job_is_gone(db):
    wallet_id = funded_wallet(db, 3_000)
    lost, kept, not_due = (place_hold(db, wallet_id, 100)["id"] for _ in range(3))
    lose_expiry_job(db, lost)
    lose_expiry_job(db, not_due)
    for hold_id in (lost, kept):
        db.execute(
            "UPDATE wallet.holds SET created_at = created_at - interval '1 day',"
            " expires_at = now() - interval '1 minute' WHERE id = %s",
            (hold_id,),
        )

    within_grace = scalar(db, "SELECT wallet.reconcile_hold_expiries(interval '2 minutes')")
    enqueued = scalar(db, "SELECT wallet.reconcile_hold_expiries(interval '30 seconds')")
    again = scalar(db, "SELECT wallet.reconcile_hold_expiries(interval '30 seconds')")

    assert (within_grace, enqueued, again) == (0, 1, 0)
    [job] = expiry_jobs(db, lost)
    assert (job["status"], job["args"]) == ("todo", {"hold_id": str(lost)})
    assert [job["status"] for job in expiry_jobs(db, kept)] == ["todo"]
    assert expiry_jobs(db, not_due) == []  # not overdue: nothing to do yet


# --- idempotency -----------------------------------------------------------------------------


def test_place_capture_and_void_replay_with_their_key(db):
    wallet_id = funded_wallet(db, 5_000)

    placed = place_hold(db, wallet_id, 1_000, key="place-1")
    placed_again = place_hold(db, wallet_id, 1_000, key="place-1")
    captured = capture_hold(db, placed["id"], 200, key="capture-1")
    captured_again = capture_hold(db, placed["id"], 200, key="capture-1")
    voided = void_hold(db, placed["id"], key="void-1")
    voided_again = void_hold(db, placed["id"], key="void-1")

    assert placed_again == {**placed, "replayed": True}
    assert captured_again == {**captured, "replayed": True}
    assert voided_again == {**voided, "replayed": True}
    assert scalar(db, "SELECT count(*) FROM wallet.holds") == 1
    assert scalar(db, "SELECT count(*) FROM wallet.transactions WHERE hold_id IS NOT NULL") == 1
    assert money(db, wallet_id) == (4_800, 0, 4_800)
    for case, call in {
        "place, another amount": lambda: place_hold(db, wallet_id, 999, key="place-1", fingerprint="other"),
        "capture, another request": lambda: capture_hold(
            db, placed["id"], 1, key="capture-1", fingerprint="x"
        ),
        "a key of a place for a void": lambda: void_hold(db, placed["id"], key="place-1"),
    }.items():
        with raises_sqlstate("WK409", case):
            call()
    assert violations(db) == []


def test_a_refused_capture_leaves_no_key(db):
    wallet_id = funded_wallet(db, 1_000)
    hold = place_hold(db, wallet_id, 500)

    with raises_sqlstate("WA422"):
        capture_hold(db, hold["id"], 501, key="capture-1")
    captured = capture_hold(db, hold["id"], 500, key="capture-1", fingerprint="retried")

    assert (captured["amount"], captured["replayed"]) == (500, False)


# --- reading ---------------------------------------------------------------------------------


def test_list_holds_pages_a_wallets_holds_newest_first_by_status(db):
    wallet_id = funded_wallet(db, 10_000, owner="shop-a")
    other = funded_wallet(db, 10_000, owner="shop-a")
    placed = [place_hold(db, wallet_id, 100 + n)["id"] for n in range(7)]
    place_hold(db, other, 1)
    for hold_id in placed[1::3]:
        void_hold(db, hold_id)
    newest_first = sorted(placed, reverse=True)  # placing order, to the millisecond (see below)

    pages, before_id = [], None
    while True:
        page = list_holds(db, wallet_id, acting="shop-a", limit=3, before_id=before_id)
        pages.append([hold["id"] for hold in page])
        if len(page) < 3:
            break
        before_id = page[-1]["id"]

    assert pages == [newest_first[0:3], newest_first[3:6], newest_first[6:7]]
    assert [hold["id"] for hold in list_holds(db, wallet_id, status="voided")] == [
        hold_id for hold_id in newest_first if hold_id in placed[1::3]
    ]
    active = list_holds(db, wallet_id, status="active", limit=2, before_id=newest_first[0])
    assert [hold["id"] for hold in active] == [h for h in newest_first[1:] if h not in placed[1::3]][:2]
    assert list_holds(db, wallet_id, status="expired") == []
    assert len(list_holds(db, wallet_id, limit=501)) == 7
    assert {hold["replayed"] for hold in list_holds(db, wallet_id)} == {False}
    for case, call in {
        "limit 0": lambda: list_holds(db, wallet_id, limit=0),
        "limit 502": lambda: list_holds(db, wallet_id, limit=502),
        "no limit": lambda: list_holds(db, wallet_id, limit=None),
        "unknown status": lambda: list_holds(db, wallet_id, status="pending"),
    }.items():
        with raises_sqlstate("WI400", case):
            call()
    with raises_sqlstate("WN404"):
        list_holds(db, unknown_id())


def test_ids_of_holds_are_time_ordered_to_the_millisecond(db):
    """list_holds' order and cursor: the id alone (wallet.uuid_v7: 48 bits of Unix milliseconds,
    then random bits), so holds are listed in placing order, those of one millisecond in a
    fixed order of their own."""
    wallet_id = funded_wallet(db, 10_000)
    holds = [place_hold(db, wallet_id, 1) for _ in range(30)]
    milliseconds = [hold["id"].int >> 80 for hold in holds]

    assert all(hold["id"].version == 7 for hold in holds)
    assert milliseconds == sorted(milliseconds)
    assert [hold["id"] for hold in list_holds(db, wallet_id)] == sorted(
        (hold["id"] for hold in holds), reverse=True
    )
    for hold in holds:
        created_ms = int(hold["created_at"].timestamp() * 1000)
        assert created_ms <= hold["id"].int >> 80 <= created_ms + 1_000


def test_history_shows_captures_as_their_transactions_and_nothing_else_of_a_hold(db):
    wallet_id, payee = funded_wallet(db, 10_000), new_wallet(db, "payee")
    placed = history(db, wallet_id)
    voided, expired, captured = (place_hold(db, wallet_id, 1_000)["id"] for _ in range(3))
    void_hold(db, voided)
    make_due(db, expired)
    expire_hold(db, expired)
    assert history(db, wallet_id) == placed

    withdrawal = capture_hold(db, captured, 300)
    moved = capture_hold(db, captured, 200, to_wallet_id=payee, final=True)

    items = history(db, wallet_id)
    assert [(item["kind"], item["amount"], item["balance_after"]) for item in items[:2]] == [
        ("transfer", -200, 9_500),
        ("withdrawal", -300, 9_700),
    ]
    assert [item["transaction_id"] for item in items[:2]] == [moved["id"], withdrawal["id"]]
    assert items[2:] == placed
    assert {get_transaction_v2(db, item["transaction_id"])["hold_id"] for item in items[:2]} == {captured}
    assert [(item["kind"], item["amount"]) for item in history(db, payee)] == [("transfer", 200)]


def test_history_v2_carries_the_hold_id_of_each_capture_and_null_on_every_other_item(db):
    wallet_id, payee = funded_wallet(db, 10_000, owner="payer"), funded_wallet(db, 500, owner="payee")
    withdraw(db, wallet_id, 100)
    transfer(db, wallet_id, payee, 50)
    transfer(db, payee, wallet_id, 20)
    scheduled = deposit_at(db, wallet_id, 700, scalar(db, "SELECT now() + interval '1 day'"))
    first, second = place_hold(db, wallet_id, 1_000)["id"], place_hold(db, wallet_id, 2_000)["id"]
    withdrawal = capture_hold(db, first, 300)
    moved = capture_hold(db, second, 400, to_wallet_id=payee)
    last = capture_hold(db, first, final=True)
    void_hold(db, place_hold(db, wallet_id, 100)["id"])
    captures = {withdrawal["id"]: first, moved["id"]: second, last["id"]: first}

    items = history_v2(db, wallet_id)

    assert [(item["transaction_id"], item["hold_id"]) for item in items[:3]] == [
        (last["id"], first),
        (moved["id"], second),
        (withdrawal["id"], first),
    ]
    assert [(item["kind"], item["amount"]) for item in items[:3]] == [
        ("withdrawal", -700),
        ("transfer", -400),
        ("withdrawal", -300),
    ]
    others = items[3:]
    assert {item["transaction_id"] for item in others} >= {scheduled["id"]}
    assert {item["status"] for item in others} == {"posted", "scheduled"}
    assert {item["kind"] for item in others} == {"deposit", "withdrawal", "transfer"}
    assert [item["hold_id"] for item in others] == [None] * 5
    # The hold id each item carries is its transaction's (wallet.get_transaction_v2).
    for item in items:
        assert item["hold_id"] == get_transaction_v2(db, item["transaction_id"])["hold_id"]
        assert item["hold_id"] == captures.get(item["transaction_id"])
    # The payee sees the capture to it as its transfer, with the hold it drew on.
    received = history_v2(db, payee, acting="payee")
    assert [(item["transaction_id"], item["amount"], item["hold_id"]) for item in received[:1]] == [
        (moved["id"], 400, second)
    ]
    assert {item["hold_id"] for item in received[1:]} == {None}
    # Filtered and paged, the same items; and wallet.wallet_history is the page less hold_id.
    assert [item["hold_id"] for item in history_v2(db, wallet_id, kind="withdrawal")] == [first, first, None]
    assert history_v2(db, wallet_id, limit=2, before_seq=items[0]["seq"]) == items[1:3]
    assert history_v2(db, wallet_id, kind="deposit") == [item for item in items if item["kind"] == "deposit"]
    assert history(db, wallet_id) == without_hold_id(items)
    assert history(db, wallet_id, kind="transfer") == without_hold_id(
        history_v2(db, wallet_id, kind="transfer")
    )


def test_hold_stats_count_holds_and_the_lag_of_their_expiry(db):
    wallet_id = funded_wallet(db, 10_000)
    soon = place_hold(db, wallet_id, 100, expires_at=scalar(db, "SELECT now() + interval '10 minutes'"))
    place_hold(db, wallet_id, 200)
    overdue, expired = place_hold(db, wallet_id, 300)["id"], place_hold(db, wallet_id, 400)["id"]
    make_due(db, overdue)
    make_due(db, expired)
    db.execute("UPDATE wallet.holds SET expires_at = now() - interval '2 seconds' WHERE id = %s", (expired,))
    expire_hold(db, expired)

    stats = one(db, "SELECT * FROM wallet.hold_stats()")

    assert {key: stats[key] for key in ("active", "held_total", "expiring_soon", "overdue", "expired")} == {
        "active": 3,
        "held_total": 600,
        "expiring_soon": 1,
        "overdue": 1,
        "expired": 1,
    }
    assert 2_000 <= stats["expiry_lag_p50_ms"] == stats["expiry_lag_p99_ms"] == stats["expiry_lag_max_ms"]
    # One waiting job per active hold (the expired one's was deleted as it closed).
    assert stats["queue_depth"] == 3
    assert soon["remaining"] == 100
    assert one(db, "SELECT * FROM wallet.hold_stats(interval '1 millisecond')")["expired"] == 0


# --- grants, constraints, the audit ----------------------------------------------------------


def test_wallet_app_calls_the_hold_functions_and_the_auditor_only_reads_them(db):
    db.execute("SET ROLE wallet_app")
    try:
        wallet_id = funded_wallet(db, 1_000)
        hold = place_hold(db, wallet_id, 500)
        capture_hold(db, hold["id"], 100)
        assert get_hold(db, hold["id"])["remaining"] == 400
        assert len(list_holds(db, wallet_id)) == 1
        assert void_hold(db, hold["id"])["status"] == "voided"
        assert expire_hold(db, hold["id"]) == "voided"
        assert scalar(db, "SELECT wallet.reconcile_hold_expiries()") == 0
        assert scalar(db, "SELECT wallet.expire_due_holds()") == 0
        assert one(db, "SELECT * FROM wallet.hold_stats()")["active"] == 0
    finally:
        db.execute("RESET ROLE")
    db.execute("SET ROLE wallet_auditor")
    try:
        assert get_hold(db, hold["id"])["status"] == "voided"
        assert one(db, "SELECT * FROM wallet.hold_stats()")["active"] == 0
        assert scalar(db, "SELECT count(*) FROM wallet.holds") == 1
        with raises_sqlstate("42501"):
            place_hold(db, wallet_id, 1)
    finally:
        db.execute("RESET ROLE")


def test_the_constraints_refuse_what_the_hold_functions_would(db):
    wallet_id = funded_wallet(db, 1_000)
    hold = place_hold(db, wallet_id, 600)
    capture = capture_hold(db, hold["id"], 100)  # balance 900, held 500; the hold: 100 + 500 of 600
    closed = place_hold(db, wallet_id, 100)
    void_hold(db, closed["id"])
    before, holds_before = ledger_state(db), hold_state(db)
    w, h, c = wallet_id, hold["id"], closed["id"]

    for case, statement in {
        "held above the balance": f"UPDATE wallet.wallets SET held = 901 WHERE id = '{w}'",
        "held below zero": f"UPDATE wallet.wallets SET held = -1 WHERE id = '{w}'",
        "balance below held": f"UPDATE wallet.wallets SET balance = 499 WHERE id = '{w}'",
        "remaining above amount": f"UPDATE wallet.holds SET remaining = 501 WHERE id = '{h}'",
        "active and released": f"UPDATE wallet.holds SET remaining = 400 WHERE id = '{h}'",
        "active with nothing left": f"UPDATE wallet.holds SET remaining = 0 WHERE id = '{h}'",
        "active and closed": f"UPDATE wallet.holds SET closed_at = now() WHERE id = '{h}'",
        "closed and reserving": f"UPDATE wallet.holds SET remaining = 1 WHERE id = '{c}'",
        "captured without a capture": f"UPDATE wallet.holds SET status = 'captured' WHERE id = '{c}'",
        "closed without closed_at": f"UPDATE wallet.holds SET closed_at = NULL WHERE id = '{c}'",
        "unknown status": f"UPDATE wallet.holds SET status = 'pending' WHERE id = '{h}'",
        "expiring in 367 days": (
            f"UPDATE wallet.holds SET expires_at = created_at + interval '367 days' WHERE id = '{h}'"
        ),
        "expiring as it is placed": f"UPDATE wallet.holds SET expires_at = created_at WHERE id = '{h}'",
        "a deposit naming a hold": (
            "INSERT INTO wallet.transactions (kind, status, wallet_id, currency, amount, fee, posted_at,"
            f" hold_id) VALUES ('deposit', 'posted', '{w}', 'IRR', 10, 0, now(), '{h}')"
        ),
    }.items():
        with raises_sqlstate("23514", case):
            db.execute(statement)
    with raises_sqlstate("23503", "a capture of an unknown hold"):
        db.execute(
            "INSERT INTO wallet.transactions (kind, status, wallet_id, currency, amount, fee, posted_at,"
            " hold_id) VALUES ('withdrawal', 'posted', %s, 'IRR', 10, 0, now(), %s)",
            (w, uuid.uuid4()),
        )
    with raises_sqlstate("WR500", "a posted capture's hold rewritten"):
        db.execute("UPDATE wallet.transactions SET hold_id = %s WHERE id = %s", (c, capture["id"]))
    for statement in ("DELETE FROM wallet.holds", "TRUNCATE wallet.holds CASCADE"):
        with raises_sqlstate("WR500", statement):
            db.execute(statement)

    assert ledger_state(db) == before and hold_state(db) == holds_before


def _checks(db: psycopg.Connection) -> list[tuple[str, str]]:
    return [(row["check_name"], row["detail"]) for row in violations(db)]


def test_verify_ledger_names_a_wallet_whose_held_or_a_hold_whose_captures_were_tampered_with(db):
    wallet_id, other = funded_wallet(db, 5_000), funded_wallet(db, 5_000, owner="other")
    hold = place_hold(db, wallet_id, 1_000)
    capture_hold(db, hold["id"], 300)
    closed = place_hold(db, wallet_id, 500)
    capture_hold(db, closed["id"], 200, final=True)
    checkpoint = scalar(db, "SELECT wallet.ledger_checkpoint()")
    assert checkpoint and _checks(db) == []

    db.execute("UPDATE wallet.wallets SET held = held + 1 WHERE id = %s", (wallet_id,))
    [(name, detail)] = _checks(db)
    since = rows(db, "SELECT * FROM wallet.verify_ledger_since(now())")
    db.execute("UPDATE wallet.wallets SET held = held - 1 WHERE id = %s", (wallet_id,))
    assert name == "held_differs_from_holds" and str(wallet_id) in detail
    assert [row["check_name"] for row in since] == ["held_differs_from_holds"]

    shift = (
        "UPDATE wallet.holds SET remaining = remaining - %s, captured_amount = captured_amount + %s"
        " WHERE id = %s"
    )
    db.execute(shift, (1, 1, hold["id"]))
    assert {name for name, _ in _checks(db)} == {"held_differs_from_holds", "hold_captures_differ"}
    db.execute(shift, (-1, -1, hold["id"]))

    db.execute("UPDATE wallet.holds SET captured_amount = 199 WHERE id = %s", (closed["id"],))
    [(name, detail)] = _checks(db)
    assert name == "hold_captures_differ" and str(closed["id"]) in detail
    db.execute("UPDATE wallet.holds SET captured_amount = 200 WHERE id = %s", (closed["id"],))

    # A capture re-pointed (triggers off, as a superuser could) at a hold of another wallet.
    foreign = place_hold(db, other, 300)
    db.execute("ALTER TABLE wallet.transactions DISABLE TRIGGER transactions_only_scheduled_change")
    db.execute(
        "UPDATE wallet.transactions SET hold_id = %s WHERE hold_id = %s", (foreign["id"], closed["id"])
    )
    db.execute("ALTER TABLE wallet.transactions ENABLE TRIGGER transactions_only_scheduled_change")
    found = _checks(db)
    assert {name for name, _ in found} == {"hold_captures_differ"}
    assert {re.search(r"hold (\S+)", detail)[1] for _, detail in found} == {
        str(closed["id"]),
        str(foreign["id"]),
    }


@pytest.mark.parametrize("status", ["active", "voided"])
def test_a_hold_changes_no_chain_link_and_no_updated_at(db, status):
    wallet_id = funded_wallet(db, 1_000)
    head = one(
        db, "SELECT chain_version, chain_hash, updated_at FROM wallet.wallets WHERE id = %s", wallet_id
    )

    hold = place_hold(db, wallet_id, 400)
    if status == "voided":
        void_hold(db, hold["id"])

    assert (
        one(db, "SELECT chain_version, chain_hash, updated_at FROM wallet.wallets WHERE id = %s", wallet_id)
        == head
    )
    assert held(db, wallet_id) == active_remaining(db, wallet_id) == (400 if status == "active" else 0)


@pytest.fixture
def app(database_url: str) -> Iterator[psycopg.Connection]:
    """A wallet_app session (the API's or the worker's privileges) with the default search_path."""
    with psycopg.connect(database_url, autocommit=True) as connection:
        connection.execute("SET ROLE wallet_app")
        yield connection


def test_objects_planted_in_public_by_wallet_app_never_run_through_holds(db, app):
    """As tests/sql/test_privileges.py proves for deposits: where PUBLIC may create in public
    (databases from PostgreSQL 14 or older), nothing planted there runs as the ledger's owner
    when holds are placed (their expiry job enqueued), captured, voided, expired, reconciled."""
    db.execute("GRANT CREATE ON SCHEMA public TO PUBLIC")
    plant(app, "procrastinate")
    db.execute("SET search_path = pg_catalog, procrastinate")  # run no planted code here either
    wallet_id, payee = new_wallet(app, "merchant-1"), new_wallet(app, "merchant-2")
    deposit(app, wallet_id, 10_000)

    captured, voided, expired, lost = (place_hold(app, wallet_id, 1_000)["id"] for _ in range(4))
    capture_hold(app, captured, 400, to_wallet_id=payee)
    capture_hold(app, captured)
    void_hold(app, voided)
    make_due(db, expired)
    outcome = expire_hold(app, expired)
    lose_expiry_job(db, lost)
    db.execute(
        "UPDATE wallet.holds SET created_at = created_at - interval '1 day',"
        " expires_at = now() - interval '1 hour' WHERE id = %s",
        (lost,),
    )
    reenqueued = scalar(app, "SELECT wallet.reconcile_hold_expiries()")
    stats = one(app, "SELECT active, queue_depth FROM wallet.hold_stats()")

    assert planted_calls(db) == []
    assert (outcome, reenqueued, stats) == ("expired", 1, {"active": 1, "queue_depth": 1})
    assert [job["args"] for job in expiry_jobs(db, lost)] == [{"hold_id": str(lost)}]
    assert violations(db) == []
