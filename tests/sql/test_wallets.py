"""Wallets: open, read, list, the status changes, and tenancy (SPEC 3, 4).

Each test gets a fresh database (conftest.py), which costs about half a second, so a
family of examples that shares one set-up is one test looping over named cases.
"""

from __future__ import annotations

from psycopg.types.json import Jsonb

from tests.support.ledger import (
    change_status,
    deposit,
    funded_wallet,
    get_transaction,
    get_wallet,
    history,
    ledger_state,
    list_wallets,
    metadata_of_size,
    new_wallet,
    one,
    open_wallet,
    raises_sqlstate,
    scalar,
    transfer,
    unknown_id,
    withdraw,
)

# --- open ---------------------------------------------------------------------------------


def test_open_wallet_defaults_to_an_active_empty_irr_wallet(db):
    # Only the required arguments: the SQL defaults decide currency and metadata.
    wallet = one(db, "SELECT * FROM wallet.open_wallet('svc', NULL, NULL, 'merchant-1')")
    explicit_nulls = open_wallet(db, "merchant-2", currency=None, metadata=None)

    assert wallet["owner_id"] == "merchant-1"
    assert wallet["currency"] == "IRR"
    assert wallet["status"] == "active"
    assert (wallet["balance"], wallet["available"], wallet["pending"]) == (0, 0, 0)
    assert wallet["metadata"] == {}
    assert wallet["replayed"] is False
    assert wallet["created_at"] is not None and wallet["updated_at"] is not None
    assert (explicit_nulls["currency"], explicit_nulls["metadata"]) == ("IRR", {})
    assert explicit_nulls["id"] != wallet["id"]


def test_open_wallet_keeps_currency_and_metadata_up_to_their_bounds(db):
    metadata = {"shop": "Tehran 1", "tags": ["a", "b"], "level": 3}

    usd = open_wallet(db, "merchant-1", currency="USD", metadata=metadata)
    largest = open_wallet(db, "o" * 255, metadata=metadata_of_size(4096))

    assert (usd["currency"], usd["metadata"]) == ("USD", metadata)
    stored = one(db, "SELECT currency, metadata FROM wallet.wallets WHERE id = %s", usd["id"])
    assert stored == {"currency": "USD", "metadata": metadata}
    assert len(largest["owner_id"]) == 255
    metadata_bytes = "SELECT octet_length(metadata::text) FROM wallet.wallets WHERE id = %s"
    assert scalar(db, metadata_bytes, largest["id"]) == 4096


def test_open_wallet_rejects_malformed_input(db):
    cases = {
        "empty owner": ("", None, None),
        "owner of 256 characters": ("o" * 256, None, None),
        "null owner": (None, None, None),
        "lower-case currency": ("m", "usd", None),
        "two-letter currency": ("m", "US", None),
        "four-letter currency": ("m", "USDT", None),
        "empty currency": ("m", "", None),
        "metadata array": ("m", None, [1, 2]),
        "metadata string": ("m", None, "text"),
        "metadata of 4097 bytes": ("m", None, metadata_of_size(4097)),
    }
    for case, (owner, currency, metadata) in cases.items():
        with raises_sqlstate("WI400", case):
            open_wallet(db, owner, currency, metadata)
    with raises_sqlstate("WI400", "metadata JSON null"):
        db.execute("SELECT wallet.open_wallet('svc', NULL, NULL, 'm', 'IRR', %s)", (Jsonb(None),))

    assert scalar(db, "SELECT count(*) FROM wallet.wallets") == 0


# --- get ----------------------------------------------------------------------------------


def test_get_wallet_returns_the_wallet_and_available_equals_balance(db):
    opened = open_wallet(db, "merchant-1", metadata={"a": 1})
    assert get_wallet(db, opened["id"]) == opened

    deposit(db, opened["id"], 700)
    wallet = get_wallet(db, opened["id"])

    assert (wallet["balance"], wallet["available"], wallet["pending"]) == (700, 700, 0)


def test_get_wallet_of_an_unknown_id_is_not_found(db):
    new_wallet(db)

    with raises_sqlstate("WN404"):
        get_wallet(db, unknown_id())


# --- list ---------------------------------------------------------------------------------


def test_list_wallets_pages_by_keyset_through_every_wallet_once(db):
    opened = [new_wallet(db, f"merchant-{n % 3}") for n in range(11)]

    seen, after, page_sizes = [], None, []
    while page := list_wallets(db, limit=4, after=after):
        page_sizes.append(len(page))
        seen += [wallet["id"] for wallet in page]
        after = page[-1]["id"]

    assert page_sizes == [4, 4, 3]
    assert seen == sorted(opened)


def test_list_wallets_filters_by_owner_and_pages_within_it(db):
    mine = [new_wallet(db, "mine") for _ in range(5)]
    for _ in range(4):
        new_wallet(db, "theirs")

    first = list_wallets(db, owner="mine", limit=3)
    second = list_wallets(db, owner="mine", limit=3, after=first[-1]["id"])

    assert [wallet["id"] for wallet in first + second] == sorted(mine)
    assert {wallet["owner_id"] for wallet in first + second} == {"mine"}
    assert list_wallets(db, owner="nobody") == []


def test_list_wallets_limit_is_1_to_1000_and_defaults_to_50(db):
    db.execute("SELECT wallet.open_wallet('svc', NULL, NULL, 'm') FROM generate_series(1, 501)")

    assert len(db.execute("SELECT * FROM wallet.list_wallets(NULL)").fetchall()) == 50
    assert len(list_wallets(db, limit=1)) == 1
    assert len(list_wallets(db, limit=500)) == 500
    for limit in (0, -1, 1001, None):
        with raises_sqlstate("WI400", f"limit {limit}"):
            list_wallets(db, limit=limit)


# --- freeze, unfreeze, close --------------------------------------------------------------


def test_freeze_stops_movements_and_unfreeze_restores_them(db):
    wallet = open_wallet(db)
    wallet_id = wallet["id"]
    deposit(db, wallet_id, 100)

    frozen = change_status(db, "freeze", wallet_id)
    assert (frozen["status"], frozen["balance"]) == ("frozen", 100)
    assert frozen["updated_at"] > wallet["updated_at"]
    assert frozen["created_at"] == wallet["created_at"]
    assert get_wallet(db, wallet_id)["status"] == "frozen"
    with raises_sqlstate("WS409"):
        deposit(db, wallet_id, 10)

    active = change_status(db, "unfreeze", wallet_id)
    assert active["status"] == "active"
    deposit(db, wallet_id, 10)
    withdraw(db, wallet_id, 30)
    assert get_wallet(db, wallet_id)["balance"] == 80


def test_a_change_to_the_status_a_wallet_already_has_succeeds_and_changes_nothing(db):
    cases = {
        "freeze a frozen wallet": (["freeze"], "freeze", "frozen"),
        "unfreeze an active wallet": ([], "unfreeze", "active"),
        "close a closed wallet": (["close"], "close", "closed"),
    }
    for case, (set_up, action, status) in cases.items():
        wallet_id = new_wallet(db)
        for step in set_up:
            change_status(db, step, wallet_id)
        before = ledger_state(db)

        result = change_status(db, action, wallet_id)

        assert result["status"] == status, case
        assert ledger_state(db) == before, case  # updated_at included


def test_a_closed_wallet_stays_closed(db):
    wallet_id = new_wallet(db)
    change_status(db, "close", wallet_id)
    before = ledger_state(db)

    for action in ("freeze", "unfreeze"):
        with raises_sqlstate("WS409", action):
            change_status(db, action, wallet_id)
    with raises_sqlstate("WS409", "deposit"):
        deposit(db, wallet_id, 10)

    assert ledger_state(db) == before
    assert get_wallet(db, wallet_id)["status"] == "closed"


def test_only_an_empty_wallet_can_close(db):
    active_with_money = funded_wallet(db, 1)
    frozen_with_money = funded_wallet(db, 1)
    change_status(db, "freeze", frozen_with_money)
    before = ledger_state(db)

    for wallet_id in (active_with_money, frozen_with_money):
        with raises_sqlstate("WE409", wallet_id):
            change_status(db, "close", wallet_id)
    assert ledger_state(db) == before

    withdraw(db, active_with_money, 1)
    assert change_status(db, "close", active_with_money)["status"] == "closed"
    frozen_empty = new_wallet(db)
    change_status(db, "freeze", frozen_empty)
    assert change_status(db, "close", frozen_empty)["status"] == "closed"


def test_status_change_of_an_unknown_wallet_is_not_found(db):
    new_wallet(db)

    for action in ("freeze", "unfreeze", "close"):
        with raises_sqlstate("WN404", action):
            change_status(db, action, unknown_id())


# --- tenancy ------------------------------------------------------------------------------


def _act_on_alices_wallet(db, operation, acting, wallet_id, transaction_id, bob_wallet_id):
    if operation == "get":
        return get_wallet(db, wallet_id, acting=acting)
    if operation in {"freeze", "unfreeze", "close"}:
        return change_status(db, operation, wallet_id, acting=acting)
    if operation == "deposit":
        return deposit(db, wallet_id, 10, acting=acting)
    if operation == "withdraw":
        return withdraw(db, wallet_id, 10, acting=acting)
    if operation == "transfer from":
        return transfer(db, wallet_id, bob_wallet_id, 10, acting=acting)
    if operation == "history":
        return history(db, wallet_id, acting=acting)
    if operation == "get transaction":
        return get_transaction(db, transaction_id, acting=acting)
    raise AssertionError(operation)


def test_another_owners_wallet_is_not_found_but_its_owner_may_act(db):
    bob_wallet = new_wallet(db, "bob")
    operations = [
        "get",
        "freeze",
        "unfreeze",
        "close",
        "deposit",
        "withdraw",
        "transfer from",
        "history",
        "get transaction",
    ]
    for operation in operations:
        alice_wallet = new_wallet(db, "alice")
        transaction_id = deposit(db, alice_wallet, 100)["id"]
        if operation == "unfreeze":
            change_status(db, "freeze", alice_wallet)
        if operation == "close":
            withdraw(db, alice_wallet, 100)
        before = ledger_state(db)

        with raises_sqlstate("WN404", operation):
            _act_on_alices_wallet(db, operation, "bob", alice_wallet, transaction_id, bob_wallet)
        assert ledger_state(db) == before, operation

        # The same call succeeds for alice: the 404 above is about tenancy, nothing else.
        result = _act_on_alices_wallet(db, operation, "alice", alice_wallet, transaction_id, bob_wallet)
        assert result, operation


def test_an_owner_may_transfer_to_another_owners_wallet(db):
    alice_wallet = funded_wallet(db, 100, owner="alice")
    bob_wallet = new_wallet(db, "bob")

    transaction = transfer(db, alice_wallet, bob_wallet, 30, acting="alice")

    assert transaction["to_wallet_id"] == bob_wallet
    assert get_wallet(db, bob_wallet)["balance"] == 30
    assert get_wallet(db, alice_wallet)["balance"] == 70


def test_a_transfer_is_visible_to_both_owners_and_no_one_else(db):
    alice_wallet = funded_wallet(db, 100, owner="alice")
    bob_wallet = new_wallet(db, "bob")
    transaction_id = transfer(db, alice_wallet, bob_wallet, 30, acting="alice")["id"]

    assert get_transaction(db, transaction_id, acting="alice")["id"] == transaction_id
    assert get_transaction(db, transaction_id, acting="bob")["id"] == transaction_id
    assert get_transaction(db, transaction_id)["id"] == transaction_id
    with raises_sqlstate("WN404", "a third owner"):
        get_transaction(db, transaction_id, acting="carol")
    with raises_sqlstate("WN404", "an unknown transaction"):
        get_transaction(db, unknown_id())
