"""Concurrency invariants of holds, proven on many connections at once (issue 12).

Placing holds races on the wallet row; capturing, voiding and expiring one hold race on the
hold row, then on its wallet. Each test is named after the invariant it proves.
"""

from __future__ import annotations

import random
import threading
import time
import uuid
from collections import Counter
from datetime import timedelta
from typing import Any

import psycopg
from asyncpg import Pool, PostgresError, Record

from tests.sql.test_concurrency import (
    assert_ledger_sound,
    connections,
    errors_by_sqlstate,
    fingerprint,
    fire_together,
    new_key,
    open_funded_wallets,
    set_rule,
    successes,
    wallet_balances,
    withdraw_call,
)
from tests.support.holds import get_hold
from tests.support.ledger import funded_wallet, rows, scalar

CALLER = "svc-load"
PLACE_HOLD = "SELECT * FROM wallet.place_hold($1, $2, $3, $4, $5, $6, $7, $8, $9)"
INSUFFICIENT_FUNDS = "WF422"
HOLD_NOT_ACTIVE = "WH409"


def place_hold_call(wallet_id: uuid.UUID, amount: int, key: str | None = None) -> tuple[str, tuple]:
    request = fingerprint("POST", f"/v1/wallets/{wallet_id}/holds", amount)
    return PLACE_HOLD, (CALLER, key, request, None, wallet_id, amount, None, None, None)


async def held_and_active_remaining(pool: Pool, wallet_id: uuid.UUID) -> tuple[int, int]:
    async with pool.acquire() as connection:
        return await connection.fetchrow(
            "SELECT w.held, (SELECT coalesce(sum(remaining), 0) FROM wallet.holds"
            "                WHERE wallet_id = w.id AND status = 'active')"
            " FROM wallet.wallets AS w WHERE w.id = $1",
            wallet_id,
        )


async def test_parallel_holds_never_reserve_more_than_available(pool: Pool) -> None:
    calls_count, affordable, amount = 64, 40, 100
    leftover = amount - 1  # one rial short of one more hold
    async with pool.acquire() as connection:
        [wallet_id] = await open_funded_wallets(connection, [affordable * amount + leftover])

    async with connections(pool, calls_count) as conns:
        outcomes = await fire_together(
            conns, [place_hold_call(wallet_id, amount, new_key()) for _ in range(calls_count)]
        )

    assert errors_by_sqlstate(outcomes) == {INSUFFICIENT_FUNDS: calls_count - affordable}
    placed = successes(outcomes)
    assert len(placed) == affordable
    assert {(hold["status"], hold["remaining"], hold["replayed"]) for hold in placed} == {
        ("active", amount, False)
    }
    assert len({hold["id"] for hold in placed}) == affordable
    assert await held_and_active_remaining(pool, wallet_id) == (affordable * amount, affordable * amount)
    async with pool.acquire() as connection:
        wallet = await connection.fetchrow("SELECT * FROM wallet.get_wallet(NULL, $1)", wallet_id)
        assert (wallet["balance"], wallet["available"]) == (affordable * amount + leftover, leftover)
        jobs = await connection.fetchval(
            "SELECT count(*) FROM procrastinate.procrastinate_jobs WHERE task_name = 'wallet:expire_hold'"
        )
        assert jobs == affordable
        await assert_ledger_sound(connection)


async def test_parallel_holds_and_withdrawals_never_spend_the_same_rial_twice(pool: Pool) -> None:
    calls_count, amount, fee = 64, 100, 10
    initial = 20 * amount + 10 * (amount + fee) + 57  # room for some of each, and a remainder
    async with pool.acquire() as connection:
        [wallet_id] = await open_funded_wallets(connection, [initial])
        await set_rule(connection, "withdrawal", rate_bps=0, fixed=fee, max_fee=None)

    calls = [
        place_hold_call(wallet_id, amount, new_key())
        if n % 2
        else withdraw_call(wallet_id, amount, new_key())
        for n in range(calls_count)
    ]
    async with connections(pool, calls_count) as conns:
        outcomes = await fire_together(conns, calls)

    assert set(errors_by_sqlstate(outcomes)) <= {INSUFFICIENT_FUNDS}
    holds = [
        o for o, (sql, _) in zip(outcomes, calls, strict=True) if sql == PLACE_HOLD and isinstance(o, Record)
    ]
    withdrawals = [
        o for o, (sql, _) in zip(outcomes, calls, strict=True) if sql != PLACE_HOLD and isinstance(o, Record)
    ]
    spent = len(holds) * amount + len(withdrawals) * (amount + fee)
    assert spent <= initial
    # Every refusal came when nothing was left for it: the smaller of the two no longer fitted.
    assert initial - spent < amount + fee
    async with pool.acquire() as connection:
        assert await wallet_balances(connection, [wallet_id]) == {
            wallet_id: initial - len(withdrawals) * (amount + fee)
        }
        await assert_ledger_sound(connection)
    assert await held_and_active_remaining(pool, wallet_id) == (len(holds) * amount, len(holds) * amount)


# --- capture, void and expiry of one hold ----------------------------------------------------

HOLD_AMOUNT = 1_000
PARTIAL = 150
FEE = 4
HOLDS_PER_ROUND = 12
ROUNDS = 3
LEAD = timedelta(seconds=1.3)  # a hold's life: placed, then raced as it falls due
JITTER = 0.02


def _racer(
    database_url: str,
    action: str,
    hold_id: uuid.UUID,
    start: threading.Barrier,
    jitter: float,
    outcomes: dict[tuple[uuid.UUID, str], Any],
) -> None:
    """One racer on its own connection: a partial capture, a final capture (all that remains),
    a void, or the expiry job (which, like the worker, tries again while it is not due yet).
    It starts jitter seconds after the start."""
    try:
        with psycopg.connect(database_url, autocommit=True) as connection:
            start.wait(timeout=60)
            time.sleep(jitter)
            if action == "expire":
                expire = "SELECT wallet.expire_hold(%s)"
                while (outcome := connection.execute(expire, (hold_id,)).fetchone()[0]) == "not_due":
                    time.sleep(0.005)
                outcomes[hold_id, action] = outcome
                return
            capture = "SELECT amount, fee FROM wallet.capture_hold('svc', NULL, NULL, NULL, %s, {}, NULL, {})"
            sql = {
                "partial": capture.format(PARTIAL, "false"),
                "final": capture.format("NULL", "true"),
                "void": "SELECT remaining, 0 FROM wallet.void_hold('svc', NULL, NULL, NULL, %s)",
            }[action]
            outcomes[hold_id, action] = connection.execute(sql, (hold_id,)).fetchone()
    except psycopg.Error as error:
        outcomes[hold_id, action] = error.sqlstate
    except BaseException as error:  # reported by the caller's assertions
        outcomes[hold_id, action] = repr(error)


def test_capture_void_and_expiry_racing_end_each_hold_exactly_once(db, database_url):
    """Rounds of holds, each raced by four sessions as it falls due: a partial capture, a
    capture of all that remains (final), a void, and its expiry. Whoever takes the hold row
    first decides; each hold ends captured, voided or expired exactly once (after a partial
    capture or not), and the money moves exactly as the winners say."""
    db.execute("SELECT wallet.set_commission_rule('svc', 'withdrawal', NULL, 0, %s, 0, NULL)", (FEE,))
    wallet_id = funded_wallet(db, 10**9)
    actions = ("partial", "final", "void", "expire")
    jitter = random.Random(ROUNDS * HOLDS_PER_ROUND)
    outcomes: dict[tuple[uuid.UUID, str], Any] = {}
    hold_ids: list[uuid.UUID] = []

    for _ in range(ROUNDS):
        expires_at = scalar(db, "SELECT now() + %s::interval", LEAD)
        placed = [
            scalar(
                db,
                "SELECT id FROM wallet.place_hold('svc', NULL, NULL, NULL, %s, %s, %s)",
                wallet_id,
                HOLD_AMOUNT,
                expires_at,
            )
            for _ in range(HOLDS_PER_ROUND)
        ]
        hold_ids += placed
        start = threading.Barrier(len(placed) * len(actions) + 1)
        threads = [
            threading.Thread(
                target=_racer,
                args=(database_url, action, hold_id, start, jitter.uniform(0, 2 * JITTER), outcomes),
            )
            for hold_id in placed
            for action in actions
        ]
        for thread in threads:
            thread.start()
        # Released JITTER before the holds fall due, each racer within twice that: some
        # captures and voids come first, some meet the expiry, some a hold past its time.
        time.sleep(max((expires_at - scalar(db, "SELECT clock_timestamp()")).total_seconds() - JITTER, 0))
        start.wait(timeout=60)
        for thread in threads:
            thread.join(timeout=60)
        assert not any(thread.is_alive() for thread in threads)

    ends: Counter[str] = Counter()
    captured_total = fees_total = 0
    for hold_id in hold_ids:
        partial, final, void, expire = (outcomes[hold_id, action] for action in actions)
        assert partial in (HOLD_NOT_ACTIVE,) or isinstance(partial, tuple), partial
        assert final in (HOLD_NOT_ACTIVE,) or isinstance(final, tuple), final
        assert void in (HOLD_NOT_ACTIVE,) or isinstance(void, tuple), void
        winners = [
            name for name, outcome in (("captured", final), ("voided", void)) if isinstance(outcome, tuple)
        ]
        if expire == "expired":
            winners.append("expired")
        assert len(winners) == 1, (hold_id, partial, final, void, expire)
        [end] = winners
        ends[end] += 1
        hold = get_hold(db, hold_id)
        assert (hold["status"], hold["remaining"]) == (end, 0)
        assert expire == end  # the expiry job reports the outcome whoever won
        captures = [outcome for outcome in (partial, final) if isinstance(outcome, tuple)]
        assert hold["captured_amount"] == sum(amount for amount, _ in captures)
        captured_total += sum(amount for amount, _ in captures)
        fees_total += sum(fee for _, fee in captures)
        db_captures = rows(
            db, "SELECT amount, fee FROM wallet.transactions WHERE hold_id = %s ORDER BY id", hold_id
        )
        assert sorted((c["amount"], c["fee"]) for c in db_captures) == sorted(captures)

    assert sum(ends.values()) == ROUNDS * HOLDS_PER_ROUND
    # The races straddled the due time (else this test proves less than it says).
    assert ends["expired"] > 0 and ends["captured"] + ends["voided"] > 0, ends
    wallet = one_wallet(db, wallet_id)
    assert wallet == {"balance": 10**9 - captured_total - fees_total, "held": 0}
    assert rows(db, "SELECT * FROM wallet.verify_ledger()") == []


def one_wallet(db: psycopg.Connection, wallet_id: uuid.UUID) -> dict[str, int]:
    return rows(db, "SELECT balance, held FROM wallet.wallets WHERE id = %s", wallet_id)[0]


async def test_parallel_captures_of_one_hold_never_take_more_than_it_reserves(pool: Pool) -> None:
    calls_count, hold_amount, amount = 32, 1_000, 70  # 14 captures fit, 20 would not
    async with pool.acquire() as connection:
        [wallet_id] = await open_funded_wallets(connection, [5_000])
        sql, arguments = place_hold_call(wallet_id, hold_amount)
        hold = await connection.fetchrow(sql, *arguments)
    capture = "SELECT * FROM wallet.capture_hold($1, $2, $3, $4, $5, $6, $7, $8)"
    calls = [
        (capture, (CALLER, new_key(), "fp", None, hold["id"], amount, None, False))
        for _ in range(calls_count)
    ]

    async with connections(pool, calls_count) as conns:
        outcomes = await fire_together(conns, calls)

    captured: list[Record] = successes(outcomes)
    refused = errors_by_sqlstate(outcomes)
    assert len(captured) == hold_amount // amount
    assert refused == {"WA422": calls_count - len(captured)}
    assert {row["hold_id"] for row in captured} == {hold["id"]}
    async with pool.acquire() as connection:
        after = await connection.fetchrow("SELECT * FROM wallet.get_hold(NULL, $1)", hold["id"])
        assert (after["status"], after["captured_amount"], after["remaining"]) == (
            "active",
            len(captured) * amount,
            hold_amount - len(captured) * amount,
        )
        assert await wallet_balances(connection, [wallet_id]) == {wallet_id: 5_000 - len(captured) * amount}
        await assert_ledger_sound(connection)
    assert await held_and_active_remaining(pool, wallet_id) == (after["remaining"], after["remaining"])
    assert not any(isinstance(outcome, PostgresError) and outcome.sqlstate != "WA422" for outcome in outcomes)
