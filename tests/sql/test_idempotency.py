"""Idempotency keys (SPEC 6): a replay returns the first response and moves no money."""

from __future__ import annotations

import threading

import psycopg

from tests.support.ledger import (
    change_status,
    deposit,
    funded_wallet,
    get_wallet,
    ledger_state,
    new_wallet,
    open_wallet,
    raises_sqlstate,
    scalar,
    transfer,
    withdraw,
)


def _without_replayed(result: dict) -> dict:
    return {name: value for name, value in result.items() if name != "replayed"}


def _movement_calls(db):
    """Each movement as a call taking idempotency arguments, on funded active wallets."""
    source = funded_wallet(db, 10_000, owner="a")
    target = new_wallet(db, "b")
    return {
        "deposit": lambda **kw: deposit(db, source, 100, **kw),
        "withdraw": lambda **kw: withdraw(db, source, 100, **kw),
        "transfer": lambda **kw: transfer(db, source, target, 100, **kw),
    }


def test_a_replayed_movement_returns_the_first_transaction_and_moves_money_once(db):
    for name, call in _movement_calls(db).items():
        first = call(key=f"key-{name}")
        after_first = ledger_state(db)

        replay = call(key=f"key-{name}")

        assert first["replayed"] is False, name
        assert replay["replayed"] is True, name
        assert _without_replayed(replay) == _without_replayed(first), name
        assert ledger_state(db) == after_first, name


def test_a_replayed_open_wallet_returns_the_same_wallet(db):
    first = open_wallet(db, "merchant-1", metadata={"a": 1}, key="open-1")

    replay = open_wallet(db, "merchant-1", metadata={"a": 1}, key="open-1")

    assert (first["replayed"], replay["replayed"]) == (False, True)
    assert _without_replayed(replay) == _without_replayed(first)
    assert scalar(db, "SELECT count(*) FROM wallet.wallets") == 1


def test_a_replayed_freeze_returns_the_first_response_and_freezes_nothing_again(db):
    wallet_id = new_wallet(db)
    first = change_status(db, "freeze", wallet_id, key="freeze-1")
    change_status(db, "unfreeze", wallet_id)
    after_unfreeze = ledger_state(db)

    replay = change_status(db, "freeze", wallet_id, key="freeze-1")

    assert (first["status"], replay["status"]) == ("frozen", "frozen")
    assert replay["replayed"] is True
    assert _without_replayed(replay) == _without_replayed(first)
    assert get_wallet(db, wallet_id)["status"] == "active"
    assert ledger_state(db) == after_unfreeze


def test_a_key_reused_for_another_request_is_refused(db):
    calls = _movement_calls(db)
    for name, call in calls.items():
        call(key=f"key-{name}", fingerprint="request-1")
    wallet_id = new_wallet(db)
    change_status(db, "freeze", wallet_id, key="freeze-key", fingerprint="request-1")
    before = ledger_state(db)

    for name, call in calls.items():
        with raises_sqlstate("WK409", f"{name} with another fingerprint"):
            call(key=f"key-{name}", fingerprint="request-2")
    with raises_sqlstate("WK409", "a deposit's key on a withdrawal, same fingerprint"):
        calls["withdraw"](key="key-deposit", fingerprint="request-1")
    with raises_sqlstate("WK409", "a freeze's key on an unfreeze, same fingerprint"):
        change_status(db, "unfreeze", wallet_id, key="freeze-key", fingerprint="request-1")
    with raises_sqlstate("WK409", "a deposit's key on open_wallet"):
        open_wallet(db, "m", key="key-deposit", fingerprint="request-1")

    assert ledger_state(db) == before


def test_keys_are_scoped_to_the_caller(db):
    wallet_id = new_wallet(db)

    first = deposit(db, wallet_id, 100, caller="service-a", key="shared-key")
    second = deposit(db, wallet_id, 100, caller="service-b", key="shared-key")
    replay = deposit(db, wallet_id, 100, caller="service-a", key="shared-key")

    assert second["replayed"] is False
    assert second["id"] != first["id"]
    assert replay["id"] == first["id"]
    assert get_wallet(db, wallet_id)["balance"] == 200
    assert scalar(db, "SELECT count(*) FROM wallet.idempotency_keys") == 2


def test_a_failed_request_leaves_no_key_so_a_retry_executes(db):
    wallet_id = funded_wallet(db, 50)
    before = ledger_state(db)

    with raises_sqlstate("WF422"):
        withdraw(db, wallet_id, 100, key="retry-me")
    assert ledger_state(db) == before  # no key stored either

    deposit(db, wallet_id, 50)
    retry = withdraw(db, wallet_id, 100, key="retry-me")

    assert retry["replayed"] is False
    assert get_wallet(db, wallet_id)["balance"] == 0


def test_a_replay_wins_even_after_the_wallet_was_frozen(db):
    wallet_id = funded_wallet(db, 1000)
    first_deposit = deposit(db, wallet_id, 100, key="d")
    first_withdrawal = withdraw(db, wallet_id, 100, key="w")
    change_status(db, "freeze", wallet_id)
    before = ledger_state(db)

    deposit_replay = deposit(db, wallet_id, 100, key="d")
    withdrawal_replay = withdraw(db, wallet_id, 100, key="w")

    assert (deposit_replay["id"], deposit_replay["replayed"]) == (first_deposit["id"], True)
    assert (withdrawal_replay["id"], withdrawal_replay["replayed"]) == (
        first_withdrawal["id"],
        True,
    )
    assert ledger_state(db) == before
    with raises_sqlstate("WS409", "a new key still meets the frozen wallet"):
        deposit(db, wallet_id, 100, key="new")


def test_a_malformed_key_is_refused(db):
    wallet_id = new_wallet(db)
    before = ledger_state(db)
    keys = {
        "empty": "",
        "256 characters": "k" * 256,
        "control character": "abc\x01",
        "newline": "abc\ndef",
        "tab": "abc\tdef",
        "DEL": "abc\x7f",
        "non-ASCII": "caf\u00e9",
    }
    for case, key in keys.items():
        with raises_sqlstate("WI400", case):
            deposit(db, wallet_id, 10, key=key)
        with raises_sqlstate("WI400", f"open_wallet, {case}"):
            open_wallet(db, "m", key=key)
    assert ledger_state(db) == before

    for key in ("k" * 255, "x", " !~ printable ASCII, spaces included "):
        assert deposit(db, wallet_id, 10, key=key)["replayed"] is False, key
    assert get_wallet(db, wallet_id)["balance"] == 30


def test_pruning_keeps_keys_at_least_24_hours(db):
    wallet_id = new_wallet(db)
    deposit(db, wallet_id, 10, key="k")
    before = ledger_state(db)

    for interval in ("23 hours 59 minutes", "1 hour", "0", "-48 hours"):
        with raises_sqlstate("WI400", interval):
            db.execute("SELECT wallet.prune_idempotency_keys(%s::interval)", (interval,))
    assert ledger_state(db) == before
    # Fresh keys survive the shortest allowed prune.
    assert scalar(db, "SELECT wallet.prune_idempotency_keys(interval '24 hours')") == 0


def test_pruning_removes_old_keys_and_a_pruned_key_executes_anew(db):
    wallet_id = new_wallet(db)
    deposit(db, wallet_id, 10, key="old-1")
    deposit(db, wallet_id, 10, key="old-2")
    deposit(db, wallet_id, 10, key="recent")
    db.execute(
        "UPDATE wallet.idempotency_keys SET created_at = now() - interval '49 hours' WHERE key LIKE 'old-%'"
    )
    db.execute(
        "UPDATE wallet.idempotency_keys SET created_at = now() - interval '30 hours' WHERE key = 'recent'"
    )

    assert scalar(db, "SELECT wallet.prune_idempotency_keys()") == 2  # default: 48 hours
    assert scalar(db, "SELECT array_agg(key) FROM wallet.idempotency_keys") == ["recent"]
    assert deposit(db, wallet_id, 10, key="old-1")["replayed"] is False
    assert deposit(db, wallet_id, 10, key="recent")["replayed"] is True
    assert get_wallet(db, wallet_id)["balance"] == 40


def test_concurrent_requests_with_one_key_execute_once(db, database_url):
    wallet_id = funded_wallet(db, 1000)
    results, errors = [], []

    with psycopg.connect(database_url) as first:
        first.execute("SELECT wallet.withdraw('svc', 'same-key', 'fp', NULL, %s, 100)", (wallet_id,))

        def second_request():
            try:
                with psycopg.connect(database_url, autocommit=True) as second:
                    row = second.execute(
                        "SELECT replayed FROM wallet.withdraw('svc', 'same-key', 'fp', NULL, %s, 100)",
                        (wallet_id,),
                    ).fetchone()
                    results.append(row[0])
            except Exception as error:  # reported below, in the test's thread
                errors.append(error)

        thread = threading.Thread(target=second_request)
        thread.start()
        thread.join(timeout=0.5)
        assert thread.is_alive(), "the second request did not wait for the first"
        first.commit()
        thread.join(timeout=10)

    assert errors == []
    assert results == [True]
    assert get_wallet(db, wallet_id)["balance"] == 900


def test_a_replay_of_a_status_change_or_cancel_checks_the_owner_first(db):
    """Issue 9, item 11: owner b's caller reusing owner a's caller id and key gets not_found,
    never a's stored wallet or deposit (with its balance)."""
    wallet_id = funded_wallet(db, 5_000, owner="a")
    scheduled = scalar(
        db,
        "SELECT id FROM wallet.deposit('svc', NULL, NULL, 'a', %s, 700, NULL, '{}',"
        " now() + interval '1 hour')",
        wallet_id,
    )
    db.execute("SELECT wallet.cancel_deposit('svc', 'cancel-1', 'fingerprint-1', 'a', %s)", (scheduled,))
    for action in ("freeze", "unfreeze", "close"):
        if action == "close":
            withdraw(db, wallet_id, 5_000)
        change_status(db, action, wallet_id, acting="a", key=f"{action}-1")
    before = ledger_state(db)

    for action in ("freeze", "unfreeze", "close"):
        with raises_sqlstate("WN404", action):
            change_status(db, action, wallet_id, acting="b", key=f"{action}-1")
    with raises_sqlstate("WN404", "cancel"):
        db.execute("SELECT wallet.cancel_deposit('svc', 'cancel-1', 'fingerprint-1', 'b', %s)", (scheduled,))

    assert ledger_state(db) == before
    # The owner itself still gets its replay.
    assert change_status(db, "close", wallet_id, acting="a", key="close-1")["replayed"] is True
