"""No path waits for a lower wallet id while holding a higher one (issue 9, item 1).

Every function that locks more than one wallet locks them in wallet id order: transfers,
and settlement with its sweep of other due deposits. The first test replays, step by step,
the interleaving that deadlocked settlement when its sweep locked wallets after its own;
the second runs a mixed load on a few hot wallets, as the worker and the API would.
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from datetime import UTC, datetime, timedelta

import psycopg
import pytest

from tests.support.ledger import deposit, new_wallet, rows, scalar, set_rule

DEADLOCK = "40P01"
# What a movement in the mixed load may meet and is not a failure of the ledger.
EXPECTED_REFUSALS = {
    "WF422",  # insufficient_funds
    "WS409",  # wallet_not_active (a freeze in the mix)
    "WC409",  # transaction_not_cancelable (settled first)
}
# The default sweep of the worker (WALLET_SETTLE_SWEEP_LIMIT).
DEFAULT_SWEEP = 50


def deadlocks(url: str) -> int:
    with psycopg.connect(url, autocommit=True) as connection:
        connection.execute("SELECT pg_stat_clear_snapshot()")
        return connection.execute(
            "SELECT deadlocks FROM pg_stat_database WHERE datname = current_database()"
        ).fetchone()[0]


def wait_until(condition, timeout: float = 30.0, interval: float = 0.02) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(interval)


def schedule(db, wallet_id, amount: int, seconds_ahead: float) -> str:
    at = datetime.now(UTC) + timedelta(seconds=seconds_ahead)
    return scalar(
        db,
        "SELECT id FROM wallet.deposit('svc', NULL, NULL, NULL, %s, %s, NULL, '{}', %s)",
        wallet_id,
        amount,
        at,
    )


def is_due(db, transaction_id) -> bool:
    return scalar(db, "SELECT available_at <= now() FROM wallet.transactions WHERE id = %s", transaction_id)


def waiting_on_a_lock(db, pid: int) -> bool:
    return scalar(db, "SELECT wait_event_type = 'Lock' FROM pg_stat_activity WHERE pid = %s", pid) is True


def test_settlement_sweeping_a_lower_wallet_never_deadlocks_with_a_transfer(db, database_url):
    """Y holds HI; S settles a deposit on HI whose sweep reaches one on LO; X transfers LO -> HI.

    Before the fix S locked HI, then LO for its sweep, while X held LO and waited for HI.
    """
    first, second = new_wallet(db, "shop-1"), new_wallet(db, "shop-2")
    low, high = sorted([first, second])
    deposit(db, low, 1_000_000)
    on_high = schedule(db, high, 50_000, 1.2)
    on_low = schedule(db, low, 70_000, 1.2)
    wait_until(lambda: is_due(db, on_high) and is_due(db, on_low))
    before = deadlocks(database_url)

    errors: list[BaseException] = []
    results: dict[str, object] = {}

    def run(name: str, sql: str, params: tuple) -> None:
        try:
            with psycopg.connect(database_url, autocommit=True) as connection:
                results[name + "_pid"] = connection.info.backend_pid
                results[name] = connection.execute(sql, params).fetchone()[0]
        except BaseException as error:  # reported by the assertion below
            errors.append(error)

    with psycopg.connect(database_url) as holder:  # session Y
        holder.execute("SELECT FROM wallet.wallets WHERE id = %s FOR NO KEY UPDATE", (high,))
        settle = threading.Thread(
            target=run,
            args=("settle", "SELECT wallet.settle_deposit(%s, false, %s)", (on_high, DEFAULT_SWEEP)),
        )
        settle.start()
        wait_until(lambda: "settle_pid" in results and waiting_on_a_lock(db, results["settle_pid"]))
        move = threading.Thread(
            target=run,
            args=(
                "transfer",
                "SELECT (wallet.transfer('svc', NULL, NULL, NULL, %s, %s, 1000)).status",
                (low, high),
            ),
        )
        move.start()
        wait_until(lambda: "transfer_pid" in results and waiting_on_a_lock(db, results["transfer_pid"]))
        holder.rollback()  # both are queued on their locks: now let them collide
    settle.join(30)
    move.join(30)

    assert errors == []
    assert results["settle"] == "posted"
    assert results["transfer"] == "posted"
    assert {row["status"] for row in rows(db, "SELECT status FROM wallet.transactions")} == {"posted"}
    assert deadlocks(database_url) == before
    assert rows(db, "SELECT * FROM wallet.verify_ledger()") == []


@pytest.mark.parametrize("seconds", [10])
def test_mixed_load_on_hot_wallets_never_deadlocks(db, database_url, seconds):
    """8 sessions for 10 s: transfers both ways on 4 hot wallets, deposits scheduled to fall
    due during the run and settled with the default sweep, cancels, freezes and unfreezes."""
    set_rule(db, "transfer", rate_bps=30, min_fee=5)
    hot = sorted(new_wallet(db, f"hot-{n}") for n in range(4))
    for wallet_id in hot:
        deposit(db, wallet_id, 50_000_000)
    before = deadlocks(database_url)
    stop = time.monotonic() + seconds
    outcomes: Counter[str] = Counter()
    unexpected: list[str] = []
    lock = threading.Lock()

    def record(outcome: str) -> None:
        with lock:
            outcomes[outcome] += 1

    def session(number: int) -> None:
        rng = random.Random(number)
        scheduled: list[str] = []
        with psycopg.connect(database_url, autocommit=True) as connection:
            while time.monotonic() < stop:
                action = rng.choice(
                    ["transfer"] * 6 + ["schedule"] * 2 + ["settle"] * 2 + ["cancel", "freeze"]
                )
                try:
                    if action == "transfer":
                        source, target = rng.sample(hot, 2)
                        connection.execute(
                            "SELECT wallet.transfer('svc', NULL, NULL, NULL, %s, %s, %s)",
                            (source, target, rng.randint(1, 20_000)),
                        )
                    elif action == "schedule":
                        at = datetime.now(UTC) + timedelta(seconds=rng.uniform(1.1, 3))
                        scheduled.append(
                            connection.execute(
                                "SELECT id FROM wallet.deposit('svc', NULL, NULL, NULL, %s, %s,"
                                " NULL, '{}', %s)",
                                (rng.choice(hot), rng.randint(100, 5_000), at),
                            ).fetchone()[0]
                        )
                    elif action == "settle" and scheduled:
                        connection.execute(
                            "SELECT wallet.settle_deposit(%s, false, %s)",
                            (rng.choice(scheduled), DEFAULT_SWEEP),
                        )
                    elif action == "cancel" and scheduled:
                        connection.execute(
                            "SELECT wallet.cancel_deposit('svc', NULL, NULL, NULL, %s)", (scheduled.pop(),)
                        )
                    elif action == "freeze":
                        wallet_id = rng.choice(hot)
                        connection.execute(
                            "SELECT wallet.freeze_wallet('svc', NULL, NULL, NULL, %s)", (wallet_id,)
                        )
                        connection.execute(
                            "SELECT wallet.unfreeze_wallet('svc', NULL, NULL, NULL, %s)", (wallet_id,)
                        )
                    record(action)
                except psycopg.Error as error:
                    if error.sqlstate in EXPECTED_REFUSALS:
                        record(f"{action} refused {error.sqlstate}")
                    else:
                        with lock:
                            unexpected.append(f"{action}: {error.sqlstate}: {error}")

    threads = [threading.Thread(target=session, args=(number,)) for number in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(seconds + 60)
    # Whatever fell due and was not settled by a session is settled now, as the worker would.
    wait_until(
        lambda: (
            scalar(
                db,
                "SELECT count(*) FROM wallet.transactions WHERE status = 'scheduled'"
                " AND available_at > now()",
            )
            == 0
        )
    )
    scalar(db, "SELECT wallet.settle_due_deposits(1000)")

    assert unexpected == []
    assert outcomes["transfer"] > 100 and outcomes["settle"] > 10 and outcomes["schedule"] > 10, outcomes
    assert deadlocks(database_url) == before
    assert rows(db, "SELECT * FROM wallet.verify_ledger()") == []
    assert scalar(db, "SELECT count(*) FROM wallet.transactions WHERE status = 'scheduled'") == 0
