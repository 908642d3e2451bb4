"""Deposits, withdrawals and transfers: balances, entries, history and every error (SPEC 5).

Each test gets a fresh database (conftest.py), which costs about half a second, so a
family of examples that shares one set-up is one test looping over named cases.
"""

from __future__ import annotations

from tests.support.ledger import (
    MAX_AMOUNT,
    change_status,
    deposit,
    entries_of,
    funded_wallet,
    get_transaction,
    get_wallet,
    history,
    ledger_state,
    metadata_of_size,
    new_wallet,
    raises_sqlstate,
    rows,
    set_rule,
    transfer,
    unknown_id,
    withdraw,
)


def _balance(db, wallet_id) -> int:
    return get_wallet(db, wallet_id)["balance"]


# --- deposit ------------------------------------------------------------------------------


def test_deposit_credits_the_wallet_and_returns_the_posted_transaction(db):
    wallet_id = new_wallet(db)

    transaction = deposit(db, wallet_id, 1000, reference="order-1", metadata={"psp": "x"})

    assert _balance(db, wallet_id) == 1000
    assert transaction["kind"] == "deposit"
    assert transaction["status"] == "posted"
    assert transaction["wallet_id"] == wallet_id
    assert (transaction["from_wallet_id"], transaction["to_wallet_id"]) == (None, None)
    assert (transaction["currency"], transaction["amount"], transaction["fee"]) == ("IRR", 1000, 0)
    assert (transaction["reference"], transaction["metadata"]) == ("order-1", {"psp": "x"})
    assert transaction["available_at"] is None
    assert transaction["posted_at"] == transaction["created_at"]
    assert transaction["failure_reason"] is None
    assert transaction["replayed"] is False
    assert get_transaction(db, transaction["id"]) == transaction


def test_a_deposit_without_fee_has_a_world_leg_and_a_wallet_leg_only(db):
    wallet_id = funded_wallet(db, 300)

    transaction = deposit(db, wallet_id, 200)

    assert entries_of(db, transaction["id"]) == [
        {
            "wallet_id": None,
            "account": "world",
            "currency": "IRR",
            "net_amount": -200,
            "balance_before": None,
            "balance_after": None,
        },
        {
            "wallet_id": wallet_id,
            "account": None,
            "currency": "IRR",
            "net_amount": 200,
            "balance_before": 300,
            "balance_after": 500,
        },
    ]


def test_a_deposit_with_fee_credits_amount_minus_fee_and_books_the_fee_as_revenue(db):
    set_rule(db, "deposit", rate_bps=100, fixed=5)  # 1% + 5
    wallet_id = new_wallet(db)

    transaction = deposit(db, wallet_id, 1000)

    assert transaction["fee"] == 15
    assert _balance(db, wallet_id) == 985
    legs = {(e["account"], e["wallet_id"]): e for e in entries_of(db, transaction["id"])}
    assert legs[("world", None)]["net_amount"] == -1000
    assert legs[("revenue", None)]["net_amount"] == 15
    assert legs[(None, wallet_id)]["net_amount"] == 985
    assert (legs[(None, wallet_id)]["balance_before"], legs[(None, wallet_id)]["balance_after"]) == (
        0,
        985,
    )
    assert len(legs) == 3


# --- withdraw -----------------------------------------------------------------------------


def test_withdraw_debits_amount_plus_fee_and_pays_the_world_the_amount(db):
    set_rule(db, "withdrawal", fixed=7, owner="payer")
    payer = funded_wallet(db, 1000, owner="payer")
    free = funded_wallet(db, 1000, owner="free")

    with_fee = withdraw(db, payer, 300)
    without_fee = withdraw(db, free, 300)

    assert (with_fee["kind"], with_fee["status"], with_fee["wallet_id"]) == (
        "withdrawal",
        "posted",
        payer,
    )
    assert (with_fee["amount"], with_fee["fee"]) == (300, 7)
    assert _balance(db, payer) == 693
    assert sorted(
        (e["account"] or "wallet", e["net_amount"], e["balance_before"], e["balance_after"])
        for e in entries_of(db, with_fee["id"])
    ) == [("revenue", 7, None, None), ("wallet", -307, 1000, 693), ("world", 300, None, None)]

    assert without_fee["fee"] == 0
    assert _balance(db, free) == 700
    assert sorted((e["account"] or "wallet", e["net_amount"]) for e in entries_of(db, without_fee["id"])) == [
        ("wallet", -300),
        ("world", 300),
    ]


def test_withdraw_may_empty_the_wallet_exactly(db):
    set_rule(db, "withdrawal", fixed=10)
    wallet_id = funded_wallet(db, 110)

    withdraw(db, wallet_id, 100)

    assert _balance(db, wallet_id) == 0


# --- transfer -----------------------------------------------------------------------------


def test_transfer_moves_the_amount_and_charges_the_sender_the_fee(db):
    set_rule(db, "transfer", rate_bps=50, owner="payer")  # 0.5%
    sender = funded_wallet(db, 10_000, owner="payer")
    receiver = funded_wallet(db, 5, owner="other")

    transaction = transfer(db, sender, receiver, 2000, reference="invoice-9")

    assert transaction["kind"] == "transfer"
    assert transaction["status"] == "posted"
    assert transaction["wallet_id"] is None
    assert (transaction["from_wallet_id"], transaction["to_wallet_id"]) == (sender, receiver)
    assert (transaction["amount"], transaction["fee"]) == (2000, 10)
    assert transaction["reference"] == "invoice-9"
    assert (_balance(db, sender), _balance(db, receiver)) == (7990, 2005)
    legs = {e["wallet_id"] or e["account"]: e for e in entries_of(db, transaction["id"])}
    assert set(legs) == {sender, receiver, "revenue"}  # no world leg
    assert (legs[sender]["net_amount"], legs[sender]["balance_after"]) == (-2010, 7990)
    assert (legs[receiver]["net_amount"], legs[receiver]["balance_before"]) == (2000, 5)
    assert legs["revenue"]["net_amount"] == 10


def test_a_transfer_without_fee_has_two_wallet_legs_only(db):
    sender = funded_wallet(db, 100, owner="a")
    receiver = new_wallet(db, "b")

    transaction = transfer(db, sender, receiver, 100)

    assert transaction["fee"] == 0
    assert sorted((e["wallet_id"] == sender, e["net_amount"]) for e in entries_of(db, transaction["id"])) == [
        (False, 100),
        (True, -100),
    ]
    assert (_balance(db, sender), _balance(db, receiver)) == (0, 100)


# --- the ledger as a whole ----------------------------------------------------------------


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
    return wallets


def test_every_wallet_balance_is_the_end_of_its_entry_chain(db):
    wallets = _busy_ledger(db)

    for wallet_id in wallets:
        chain = rows(
            db,
            "SELECT net_amount, balance_before, balance_after FROM wallet.entries"
            " WHERE wallet_id = %s ORDER BY id",
            wallet_id,
        )
        previous = 0
        for entry in chain:
            assert entry["balance_before"] == previous
            assert entry["balance_after"] == previous + entry["net_amount"]
            previous = entry["balance_after"]
        assert previous == _balance(db, wallet_id)


def test_every_transaction_sums_to_zero_and_system_accounts_mirror_the_wallets(db):
    wallets = _busy_ledger(db)

    unbalanced = rows(
        db,
        "SELECT transaction_id FROM wallet.entries GROUP BY transaction_id HAVING sum(net_amount) <> 0",
    )
    assert unbalanced == []
    system = {
        row["account"]: row["balance"]
        for row in rows(db, "SELECT account, balance FROM wallet.system_account_balances")
    }
    total_fees = sum(row["fee"] for row in rows(db, "SELECT fee FROM wallet.transactions"))
    assert system["revenue"] == total_fees > 0
    assert system["world"] == -(sum(_balance(db, w) for w in wallets) + total_fees)
    assert rows(db, "SELECT * FROM wallet.verify_ledger()") == []


# --- history ------------------------------------------------------------------------------


def test_history_is_newest_first_with_signed_amounts_fees_for_the_payer_and_balance_after(db):
    set_rule(db, "deposit", fixed=10)
    set_rule(db, "withdrawal", fixed=5)
    set_rule(db, "transfer", fixed=7)
    mine = new_wallet(db, "me")
    other = funded_wallet(db, 500, owner="you")  # credited 490

    put_in = deposit(db, mine, 1000, reference="r-1")
    taken_out = withdraw(db, mine, 200)
    sent = transfer(db, mine, other, 100)
    received = transfer(db, other, mine, 50)

    items = history(db, mine)
    assert [
        (i["transaction_id"], i["kind"], i["status"], i["amount"], i["fee"], i["balance_after"])
        for i in items
    ] == [
        (received["id"], "transfer", "posted", 50, 0, 728),
        (sent["id"], "transfer", "posted", -107, 7, 678),
        (taken_out["id"], "withdrawal", "posted", -205, 5, 785),
        (put_in["id"], "deposit", "posted", 990, 10, 990),
    ]
    assert items[-1]["reference"] == "r-1"
    assert [i["seq"] for i in items] == sorted((i["seq"] for i in items), reverse=True)
    assert sum(i["amount"] for i in items if i["status"] == "posted") == _balance(db, mine)

    theirs = history(db, other)
    assert [(i["amount"], i["fee"]) for i in theirs] == [(-57, 7), (100, 0), (490, 10)]
    assert sum(i["amount"] for i in theirs) == _balance(db, other)


def test_history_pages_by_keyset_without_gaps_or_repeats(db):
    wallet_id = new_wallet(db)
    for amount in range(1, 8):
        deposit(db, wallet_id, amount)

    pages, before = [], None
    while page := history(db, wallet_id, limit=3, before_seq=before):
        pages.append([item["amount"] for item in page])
        before = page[-1]["seq"]

    assert pages == [[7, 6, 5], [4, 3, 2], [1]]


def test_history_filters_by_kind(db):
    wallet_id = funded_wallet(db, 1000)
    other = new_wallet(db, "other")
    withdraw(db, wallet_id, 1)
    transfer(db, wallet_id, other, 2)
    withdraw(db, wallet_id, 3)

    assert [i["amount"] for i in history(db, wallet_id, kind="withdrawal")] == [-3, -1]
    assert [i["amount"] for i in history(db, wallet_id, kind="transfer")] == [-2]
    assert [i["amount"] for i in history(db, wallet_id, kind="deposit")] == [1000]


def test_history_since_is_inclusive_and_until_exclusive(db):
    wallet_id = new_wallet(db)
    for amount in (1, 2, 3):
        deposit(db, wallet_id, amount)
    at = {item["amount"]: item["created_at"] for item in history(db, wallet_id)}
    assert at[1] < at[2] < at[3]

    def amounts(**bounds):
        return [item["amount"] for item in history(db, wallet_id, **bounds)]

    assert amounts(since=at[2]) == [3, 2]
    assert amounts(until=at[2]) == [1]
    assert amounts(since=at[2], until=at[3]) == [2]
    assert amounts(since=at[2], until=at[2]) == []


def test_history_rejects_bad_arguments(db):
    wallet_id = funded_wallet(db, 10)
    item = history(db, wallet_id)[0]

    assert len(history(db, wallet_id, limit=1)) == len(history(db, wallet_id, limit=500)) == 1
    for limit in (0, -1, 1001, None):
        with raises_sqlstate("WI400", f"limit {limit}"):
            history(db, wallet_id, limit=limit)
    for kind in ("refund", "", "Deposit"):
        with raises_sqlstate("WI400", f"kind {kind!r}"):
            history(db, wallet_id, kind=kind)
    with raises_sqlstate("WI400", "since after until"):
        history(db, wallet_id, since=item["created_at"], until=item["created_at"].replace(year=2000))
    with raises_sqlstate("WN404", "unknown wallet"):
        history(db, unknown_id())


# --- errors -------------------------------------------------------------------------------


def _movements(db):
    """Each movement as a call taking only the request fields, on funded active wallets."""
    source = funded_wallet(db, 10_000, owner="a")
    target = new_wallet(db, "b")
    return {
        "deposit": lambda amount, **kw: deposit(db, source, amount, **kw),
        "withdraw": lambda amount, **kw: withdraw(db, source, amount, **kw),
        "transfer": lambda amount, **kw: transfer(db, source, target, amount, **kw),
    }


def test_movements_reject_an_invalid_request_and_change_nothing(db):
    movements = _movements(db)
    cases = {
        "amount 0": {"amount": 0},
        "amount -1": {"amount": -1},
        "amount 10^15 + 1": {"amount": MAX_AMOUNT + 1},
        "amount None": {"amount": None},
        "empty reference": {"reference": ""},
        "reference of 256 characters": {"reference": "r" * 256},
        "metadata array": {"metadata": ["a"]},
        "metadata number": {"metadata": 3},
        "metadata string": {"metadata": "x"},
        "metadata of 4097 bytes": {"metadata": metadata_of_size(4097)},
    }
    before = ledger_state(db)
    for name, call in movements.items():
        for case, request in cases.items():
            arguments = {"amount": 10, **request}
            with raises_sqlstate("WI400", f"{name}: {case}"):
                call(**arguments)
            assert ledger_state(db) == before, f"{name}: {case}"


def test_movements_accept_the_bounds_of_amount_reference_and_metadata(db):
    movements = _movements(db)
    for name, call in movements.items():
        transaction = call(10, reference="r" * 255, metadata=metadata_of_size(4096))
        assert len(transaction["reference"]) == 255, name
    wallet_id = new_wallet(db, "rich")

    deposit(db, wallet_id, MAX_AMOUNT)
    deposit(db, wallet_id, MAX_AMOUNT)
    withdraw(db, wallet_id, MAX_AMOUNT)

    assert _balance(db, wallet_id) == MAX_AMOUNT


def test_movements_on_an_unknown_wallet_are_not_found_and_change_nothing(db):
    known = funded_wallet(db, 100)
    missing = unknown_id()
    calls = {
        "deposit": lambda: deposit(db, missing, 10),
        "withdraw": lambda: withdraw(db, missing, 10),
        "transfer from": lambda: transfer(db, missing, known, 10),
        "transfer to": lambda: transfer(db, known, missing, 10),
    }
    before = ledger_state(db)
    for case, call in calls.items():
        with raises_sqlstate("WN404", case):
            call()
        assert ledger_state(db) == before, case


def test_a_transfer_to_the_same_wallet_is_refused(db):
    wallet_id = funded_wallet(db, 100)
    before = ledger_state(db)

    with raises_sqlstate("WW422"):
        transfer(db, wallet_id, wallet_id, 10)

    assert ledger_state(db) == before


def test_a_transfer_between_currencies_is_refused(db):
    rials = funded_wallet(db, 100)
    dollars = new_wallet(db, "merchant-1", currency="USD")
    deposit(db, dollars, 100)
    before = ledger_state(db)

    with raises_sqlstate("WM422", "IRR to USD"):
        transfer(db, rials, dollars, 10)
    with raises_sqlstate("WM422", "USD to IRR"):
        transfer(db, dollars, rials, 10)

    assert ledger_state(db) == before


def test_a_movement_touching_a_frozen_or_closed_wallet_is_refused(db):
    active = funded_wallet(db, 1000, owner="active")
    for status in ("frozen", "closed"):
        inactive = new_wallet(db, status)
        if status == "frozen":
            deposit(db, inactive, 500)
            change_status(db, "freeze", inactive)
        else:
            change_status(db, "close", inactive)
        calls = {
            "deposit": lambda w=inactive: deposit(db, w, 10),
            "withdraw": lambda w=inactive: withdraw(db, w, 10),
            "transfer from": lambda w=inactive: transfer(db, w, active, 10),
            "transfer to": lambda w=inactive: transfer(db, active, w, 10),
        }
        before = ledger_state(db)
        for case, call in calls.items():
            with raises_sqlstate("WS409", f"{status}: {case}"):
                call()
            assert ledger_state(db) == before, f"{status}: {case}"


def test_a_withdrawal_or_transfer_beyond_the_balance_is_refused(db):
    wallet_id = funded_wallet(db, 100)
    other = new_wallet(db, "other")
    before = ledger_state(db)

    with raises_sqlstate("WF422", "withdraw 101"):
        withdraw(db, wallet_id, 101)
    with raises_sqlstate("WF422", "transfer 101"):
        transfer(db, wallet_id, other, 101)
    with raises_sqlstate("WF422", "withdraw from an empty wallet"):
        withdraw(db, other, 1)
    # Wallets are locked in id order, so each direction credits or debits first.
    with raises_sqlstate("WF422", "transfer from an empty wallet"):
        transfer(db, other, wallet_id, 1)

    assert ledger_state(db) == before


def test_an_amount_that_fits_but_not_with_its_fee_is_refused(db):
    set_rule(db, "withdrawal", fixed=10)
    set_rule(db, "transfer", fixed=10)
    wallet_id = funded_wallet(db, 100)
    other = new_wallet(db, "other")
    before = ledger_state(db)

    with raises_sqlstate("WF422", "withdraw 91 + fee 10"):
        withdraw(db, wallet_id, 91)
    with raises_sqlstate("WF422", "transfer 91 + fee 10"):
        transfer(db, wallet_id, other, 91)
    assert ledger_state(db) == before

    transfer(db, wallet_id, other, 90)
    assert (_balance(db, wallet_id), _balance(db, other)) == (0, 90)


def test_a_deposit_whose_fee_is_not_below_its_amount_is_refused(db):
    set_rule(db, "deposit", min_fee=100, owner="min-fee")
    set_rule(db, "deposit", rate_bps=10_000, owner="whole-amount")
    min_fee = new_wallet(db, "min-fee")
    whole_amount = new_wallet(db, "whole-amount")
    before = ledger_state(db)

    for case, wallet_id, amount in [
        ("fee equals amount", min_fee, 100),
        ("fee above amount", min_fee, 1),
        ("rate of 100%", whole_amount, 5000),
    ]:
        with raises_sqlstate("WB422", case):
            deposit(db, wallet_id, amount)
    assert ledger_state(db) == before

    assert deposit(db, min_fee, 101)["fee"] == 100
    assert _balance(db, min_fee) == 1


# --- limits (issue 9, item 8) -------------------------------------------------------------


def test_scheduled_deposits_cannot_push_pending_past_10_to_the_18(db):
    wallet_id = new_wallet(db)
    # 1,000 deposits of 10^15 reach the bound exactly, which is allowed.
    db.execute(
        "SELECT wallet.deposit('svc', NULL, NULL, NULL, %s, %s, NULL, '{}', now() + interval '1 hour')"
        " FROM generate_series(1, 1000)",
        (wallet_id, MAX_AMOUNT),
    )
    assert get_wallet(db, wallet_id)["pending"] == 10**18
    before = ledger_state(db)

    with raises_sqlstate("WL422"):
        db.execute(
            "SELECT wallet.deposit('svc', NULL, NULL, NULL, %s, 1, NULL, '{}', now() + interval '1 hour')",
            (wallet_id,),
        )

    assert ledger_state(db) == before


def test_system_account_balances_sum_past_the_range_of_bigint(db):
    """Ten wallets at 10^18 put the outside world at -10^19, past bigint's -9.2 * 10^18."""
    wallet_id = new_wallet(db)
    db.execute("SET session_replication_role = replica")  # a ledger that size, written directly
    transaction = db.execute(
        "INSERT INTO wallet.transactions (kind, status, wallet_id, currency, amount, fee, posted_at)"
        " VALUES ('deposit', 'posted', %s, 'IRR', 1, 0, now()) RETURNING id",
        (wallet_id,),
    ).fetchone()[0]
    db.execute(
        "INSERT INTO wallet.entries (transaction_id, account, currency, kind, net_amount)"
        " SELECT %s, 'world', 'IRR', 'deposit', -1000000000000000000 FROM generate_series(1, 10)",
        (transaction,),
    )
    db.execute("RESET session_replication_role")

    world = rows(db, "SELECT balance FROM wallet.system_account_balances WHERE account = 'world'")

    assert world == [{"balance": -(10**19)}]


def test_an_infinite_available_at_is_refused(db):
    wallet_id = new_wallet(db)
    before = ledger_state(db)
    for at in ("infinity", "-infinity"):
        with raises_sqlstate("WI400", at):
            db.execute(
                "SELECT wallet.deposit('svc', NULL, NULL, NULL, %s, 100, NULL, '{}', %s::timestamptz)",
                (wallet_id, at),
            )

    assert ledger_state(db) == before
