"""Concurrency invariants of the ledger functions, proven on many connections at once.

Every call here is what one API request does: one SQL function call on a pooled asyncpg
connection, in autocommit. Calls meant to race wait on a barrier after their connections
are acquired, so they reach PostgreSQL together rather than one connection at a time.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import random
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from typing import Any

import pytest
from asyncpg import Connection, Pool, PostgresError, Record

CALLER = "svc-load"
SETUP_CALLER = "svc-setup"

DEPOSIT = "SELECT * FROM wallet.deposit($1, $2, $3, $4, $5, $6)"
WITHDRAW = "SELECT * FROM wallet.withdraw($1, $2, $3, $4, $5, $6)"
TRANSFER = "SELECT * FROM wallet.transfer($1, $2, $3, $4, $5, $6, $7)"

INSUFFICIENT_FUNDS = "WF422"
IDEMPOTENCY_KEY_REUSED = "WK409"

# A call to race: the SQL and its arguments.
Call = tuple[str, tuple[Any, ...]]
# What a raced call came back with: its row, or the error PostgreSQL raised.
Outcome = Record | PostgresError
Balances = dict[uuid.UUID, int]


# --- requests, built as the API builds them ---------------------------------------------


def fingerprint(*request: object) -> str:
    """What the API stores beside a key: a digest of the method, path and body."""
    return hashlib.sha256(repr(request).encode()).hexdigest()


def deposit_call(wallet_id: uuid.UUID, amount: int, key: str | None = None) -> Call:
    request = fingerprint("POST", f"/v1/wallets/{wallet_id}/deposits", amount)
    return DEPOSIT, (CALLER, key, request, None, wallet_id, amount)


def withdraw_call(wallet_id: uuid.UUID, amount: int, key: str | None = None) -> Call:
    request = fingerprint("POST", f"/v1/wallets/{wallet_id}/withdrawals", amount)
    return WITHDRAW, (CALLER, key, request, None, wallet_id, amount)


def transfer_call(
    from_wallet_id: uuid.UUID, to_wallet_id: uuid.UUID, amount: int, key: str | None = None
) -> Call:
    request = fingerprint("POST", "/v1/transfers", from_wallet_id, to_wallet_id, amount)
    return TRANSFER, (CALLER, key, request, None, from_wallet_id, to_wallet_id, amount)


def new_key() -> str:
    return uuid.uuid4().hex


# --- set-up ------------------------------------------------------------------------------


async def open_wallet(connection: Connection, owner_id: str) -> uuid.UUID:
    return await connection.fetchval(
        "SELECT id FROM wallet.open_wallet($1, NULL, NULL, $2)", SETUP_CALLER, owner_id
    )


async def open_funded_wallets(connection: Connection, balances: Sequence[int]) -> list[uuid.UUID]:
    """One wallet per balance, funded by a deposit (call this before any deposit fee rule)."""
    wallet_ids = []
    for index, balance in enumerate(balances):
        wallet_id = await open_wallet(connection, f"merchant-{index}")
        if balance:
            await connection.execute(
                "SELECT wallet.deposit($1, NULL, NULL, NULL, $2, $3)",
                SETUP_CALLER,
                wallet_id,
                balance,
            )
        wallet_ids.append(wallet_id)
    expected = dict(zip(wallet_ids, balances, strict=True))
    assert await wallet_balances(connection, wallet_ids) == expected
    return wallet_ids


# max_fee has no default: an uncapped rule (None) is a case of its own, which the
# withdrawal tests use; the tests about locking use a flat fee (min = max), as the fee
# formula is not what they prove.
async def set_rule(
    connection: Connection,
    operation: str,
    *,
    rate_bps: int,
    fixed: int,
    min_fee: int = 0,
    max_fee: int | None,
) -> None:
    await connection.execute(
        "SELECT wallet.set_commission_rule($1, $2, NULL, $3, $4, $5, $6)",
        SETUP_CALLER,
        operation,
        rate_bps,
        fixed,
        min_fee,
        max_fee,
    )


@contextlib.asynccontextmanager
async def connections(pool: Pool, count: int) -> AsyncIterator[list[Connection]]:
    """count distinct connections held at once, so that count calls can truly run together."""
    outcomes = await asyncio.gather(*(pool.acquire() for _ in range(count)), return_exceptions=True)
    acquired = [outcome for outcome in outcomes if not isinstance(outcome, BaseException)]
    try:
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                raise outcome
        assert len({id(connection) for connection in acquired}) == count
        # PostgreSQL looks for deadlocks only after deadlock_timeout (1s), one cycle at a
        # time: a lock-order bug would take minutes to surface. The pool's reset (RESET
        # ALL) undoes this on release.
        await asyncio.gather(
            *(connection.execute("SET deadlock_timeout = '50ms'") for connection in acquired)
        )
        yield acquired
    finally:
        for connection in acquired:
            await pool.release(connection)


# --- racing ------------------------------------------------------------------------------


async def fire_together(conns: Sequence[Connection], calls: Sequence[Call]) -> list[Outcome]:
    """calls[i] on conns[i], all released at once; each result, or the error PostgreSQL raised."""
    assert len(calls) <= len(conns)
    barrier = asyncio.Barrier(len(calls))

    async def one(connection: Connection, call: Call) -> Record:
        sql, arguments = call
        await barrier.wait()
        return await connection.fetchrow(sql, *arguments)

    outcomes = await asyncio.gather(
        *(one(connection, call) for connection, call in zip(conns, calls, strict=False)),
        return_exceptions=True,
    )
    for outcome in outcomes:
        if isinstance(outcome, BaseException) and not isinstance(outcome, PostgresError):
            raise outcome
    return outcomes


def errors_by_sqlstate(outcomes: Sequence[object]) -> Counter[str]:
    return Counter(outcome.sqlstate for outcome in outcomes if isinstance(outcome, PostgresError))


def successes(outcomes: Sequence[object]) -> list[Record]:
    return [outcome for outcome in outcomes if isinstance(outcome, Record)]


def net_effects(transaction: Record) -> dict[uuid.UUID, int]:
    """What a posted transaction does to each wallet it touches (SPEC 5)."""
    amount, fee = transaction["amount"], transaction["fee"]
    if transaction["kind"] == "deposit":
        return {transaction["wallet_id"]: amount - fee}
    if transaction["kind"] == "withdrawal":
        return {transaction["wallet_id"]: -(amount + fee)}
    return {transaction["from_wallet_id"]: -(amount + fee), transaction["to_wallet_id"]: amount}


def expected_balances(initial: Balances, transactions: Sequence[Record]) -> Balances:
    expected = dict(initial)
    for transaction in transactions:
        for wallet_id, net_amount in net_effects(transaction).items():
            expected[wallet_id] += net_amount
    return expected


# --- what the database says afterwards ----------------------------------------------------


async def wallet_balances(connection: Connection, wallet_ids: Sequence[uuid.UUID]) -> Balances:
    rows = await connection.fetch(
        "SELECT id, balance FROM wallet.wallets WHERE id = ANY($1::uuid[])", list(wallet_ids)
    )
    return {row["id"]: row["balance"] for row in rows}


async def assert_ledger_sound(connection: Connection) -> None:
    """verify_ledger() finds nothing, money is conserved, revenue is the fees, nobody is below 0."""
    violations = await connection.fetch("SELECT check_name, detail FROM wallet.verify_ledger()")
    assert [tuple(violation) for violation in violations] == []

    system = {
        row["account"]: row["balance"]
        for row in await connection.fetch(
            "SELECT account, balance FROM wallet.system_account_balances WHERE currency = 'IRR'"
        )
    }
    wallets_total = await connection.fetchval(
        "SELECT coalesce(sum(balance), 0) FROM wallet.wallets WHERE currency = 'IRR'"
    )
    assert wallets_total + system.get("world", 0) + system.get("revenue", 0) == 0

    fees = await connection.fetchval(
        "SELECT coalesce(sum(fee), 0) FROM wallet.transactions WHERE status = 'posted'"
    )
    assert system.get("revenue", 0) == fees

    lowest = await connection.fetchval("SELECT min(least(balance, pending)) FROM wallet.wallets")
    assert lowest is None or lowest >= 0


async def load_transaction_count(connection: Connection) -> int:
    """Transactions the racing calls created (set-up uses another caller id)."""
    sql = "SELECT count(*) FROM wallet.transactions WHERE created_by = $1"
    return await connection.fetchval(sql, CALLER)


async def history_of(connection: Connection, wallet_id: uuid.UUID) -> list[Record]:
    """The whole wallet history, newest first, paged as a client pages it."""
    items: list[Record] = []
    before_seq = None
    while True:
        page = await connection.fetch(
            "SELECT * FROM wallet.wallet_history(NULL, $1, 500, $2)", wallet_id, before_seq
        )
        items.extend(page)
        if len(page) < 500:
            return items
        before_seq = page[-1]["seq"]


async def assert_entry_chain_unbroken(
    connection: Connection, wallet_id: uuid.UUID, expected_entries: int
) -> None:
    """Each entry starts where the previous one (by id) ended, from 0 to today's balance."""
    entries = await connection.fetch(
        "SELECT id, net_amount, balance_before, balance_after FROM wallet.entries"
        " WHERE wallet_id = $1 ORDER BY id",
        wallet_id,
    )
    assert len(entries) == expected_entries
    previous_balance_after = 0
    for entry in entries:
        assert entry["balance_before"] == previous_balance_after, entry
        assert entry["balance_after"] == entry["balance_before"] + entry["net_amount"], entry
        assert entry["balance_after"] >= 0, entry
        previous_balance_after = entry["balance_after"]
    assert await wallet_balances(connection, [wallet_id]) == {wallet_id: previous_balance_after}


# --- the invariants -------------------------------------------------------------------------


async def test_parallel_withdrawals_never_overdraw(pool: Pool) -> None:
    calls_count, affordable, amount = 64, 40, 100
    fee = 10  # 7 fixed + 2.5% of 100 rounded half up
    leftover = amount + fee - 1  # enough for one more withdrawal if fees were forgotten
    async with pool.acquire() as connection:
        initial_balance = affordable * (amount + fee) + leftover
        [wallet_id] = await open_funded_wallets(connection, [initial_balance])
        await set_rule(connection, "withdrawal", rate_bps=250, fixed=7, max_fee=None)

    async with connections(pool, calls_count) as conns:
        outcomes = await fire_together(
            conns, [withdraw_call(wallet_id, amount, new_key()) for _ in range(calls_count)]
        )

    assert errors_by_sqlstate(outcomes) == {INSUFFICIENT_FUNDS: calls_count - affordable}
    posted = successes(outcomes)
    assert len(posted) == affordable
    shapes = {(row["status"], row["fee"], row["replayed"]) for row in posted}
    assert shapes == {("posted", fee, False)}
    async with pool.acquire() as connection:
        assert await wallet_balances(connection, [wallet_id]) == {wallet_id: leftover}
        assert await load_transaction_count(connection) == affordable
        await assert_entry_chain_unbroken(connection, wallet_id, 1 + affordable)
        await assert_ledger_sound(connection)


async def test_random_concurrent_movements_conserve_money(pool: Pool) -> None:
    seed = random.randrange(2**32)
    workers, wallet_count, duration_seconds = 16, 20, 3.0
    setup_random = random.Random(seed)
    # A few nearly empty wallets, so refusals happen from the first second on.
    initial_balances = [
        setup_random.randint(1, 5_000) if index < 4 else setup_random.randint(10_000, 200_000)
        for index in range(wallet_count)
    ]
    async with pool.acquire() as connection:
        wallet_ids = await open_funded_wallets(connection, initial_balances)
        await set_rule(connection, "transfer", rate_bps=100, fixed=5, min_fee=10, max_fee=200)
        await set_rule(connection, "withdrawal", rate_bps=50, fixed=20, max_fee=None)

    posted: list[Record] = []
    refused: Counter[str] = Counter()  # by SQL statement
    unexpected: list[tuple[Call, BaseException]] = []

    async def worker(connection: Connection, worker_random: random.Random) -> None:
        deadline = time.monotonic() + duration_seconds
        while time.monotonic() < deadline and not unexpected:
            roll = worker_random.random()
            wallet_id, other_id = worker_random.sample(wallet_ids, 2)
            amount = worker_random.randint(1, 30_000)
            if roll < 0.55:
                call = transfer_call(wallet_id, other_id, amount, new_key())
            elif roll < 0.75:
                call = withdraw_call(wallet_id, amount, new_key())
            else:
                call = deposit_call(wallet_id, amount, new_key())
            sql, arguments = call
            try:
                posted.append(await connection.fetchrow(sql, *arguments))
            except PostgresError as error:
                if error.sqlstate == INSUFFICIENT_FUNDS:
                    refused[call[0]] += 1
                else:
                    unexpected.append((call, error))
            except Exception as error:
                unexpected.append((call, error))

    started = time.monotonic()
    async with connections(pool, workers) as conns:
        seeds = [random.Random(seed + index) for index in range(workers)]
        await asyncio.gather(*map(worker, conns, seeds))
    elapsed = time.monotonic() - started
    calls = len(posted) + sum(refused.values())
    print(
        f"seed {seed}: {calls} calls in {elapsed:.1f}s ({calls / elapsed:.0f}/s), "
        f"{len(posted)} posted, {refused[WITHDRAW]} withdrawals and {refused[TRANSFER]} "
        "transfers refused for insufficient funds"
    )

    assert unexpected == [], f"seed {seed}"
    kinds = Counter(row["kind"] for row in posted)
    assert kinds["deposit"] and kinds["withdrawal"] and kinds["transfer"], kinds
    assert refused[WITHDRAW] + refused[TRANSFER] > 0, "the load never ran a wallet dry"
    assert refused[DEPOSIT] == 0
    assert all(row["status"] == "posted" and not row["replayed"] for row in posted)
    assert sum(row["fee"] for row in posted if row["kind"] != "deposit") > 0

    async with pool.acquire() as connection:
        await assert_ledger_sound(connection)
        assert await load_transaction_count(connection) == len(posted)
        assert await connection.fetchval(
            "SELECT count(*) FROM wallet.transactions WHERE id = ANY($1::uuid[])",
            [row["id"] for row in posted],
        ) == len(posted)
        revenue = await connection.fetchval(
            "SELECT balance FROM wallet.system_account_balances"
            " WHERE account = 'revenue' AND currency = 'IRR'"
        )
        assert revenue == sum(row["fee"] for row in posted)

        balances = await wallet_balances(connection, wallet_ids)
        initial = dict(zip(wallet_ids, initial_balances, strict=True))
        assert balances == expected_balances(initial, posted), f"seed {seed}"
        entry_counts = Counter(wallet_id for row in posted for wallet_id in net_effects(row))
        for wallet_id in wallet_ids:
            history = await history_of(connection, wallet_id)
            assert len(history) == 1 + entry_counts[wallet_id]
            assert all(item["status"] == "posted" for item in history)
            assert sum(item["amount"] for item in history) == balances[wallet_id]
            assert history[0]["balance_after"] == balances[wallet_id]


@pytest.mark.parametrize("wallet_count", [2, 6], ids=["pair", "ring-of-6"])
async def test_opposite_transfers_never_deadlock(pool: Pool, wallet_count: int) -> None:
    workers, transfers_per_worker, fee = 48, 12, 3
    # Enough that no transfer can be refused: any refusal is then a locking failure.
    initial_balance = workers * transfers_per_worker * (1_000 + fee)
    async with pool.acquire() as connection:
        wallet_ids = await open_funded_wallets(connection, [initial_balance] * wallet_count)
        await set_rule(connection, "transfer", rate_bps=0, fixed=fee, max_fee=fee)

    # Worker i sends between ring neighbours, clockwise or back, alternating, so every
    # pair of neighbours sees transfers both ways at once.
    rng = random.Random(wallet_count)
    rounds = []
    for round_index in range(transfers_per_worker):
        calls = []
        for worker_index in range(workers):
            position = (worker_index // 2) % wallet_count
            step = 1 if (worker_index + round_index) % 2 == 0 else -1
            source = wallet_ids[position]
            target = wallet_ids[(position + step) % wallet_count]
            calls.append(transfer_call(source, target, rng.randint(1, 1_000), new_key()))
        rounds.append(calls)

    outcomes: list[Outcome] = []
    async with connections(pool, workers) as conns:
        for calls in rounds:
            round_outcomes = await fire_together(conns, calls)
            # No 40P01 deadlock_detected, and nothing else either; stop at the first round.
            assert errors_by_sqlstate(round_outcomes) == {}
            outcomes.extend(round_outcomes)

    posted = successes(outcomes)
    assert len(posted) == workers * transfers_per_worker
    initial = dict.fromkeys(wallet_ids, initial_balance)
    async with pool.acquire() as connection:
        balances = await wallet_balances(connection, wallet_ids)
        assert balances == expected_balances(initial, posted)
        assert sum(balances.values()) == wallet_count * initial_balance - fee * len(posted)
        assert await load_transaction_count(connection) == len(posted)
        await assert_ledger_sound(connection)


@pytest.mark.parametrize("kind", ["deposit", "transfer"])
async def test_one_idempotency_key_executes_once_under_concurrency(pool: Pool, kind: str) -> None:
    racers, amount = 16, 1_000
    async with pool.acquire() as connection:
        source_id, target_id = await open_funded_wallets(connection, [1_000_000, 0])
        await set_rule(connection, kind, rate_bps=0, fixed=7, max_fee=7)

    def request(amount: int, key: str) -> Call:
        if kind == "deposit":
            return deposit_call(target_id, amount, key)
        return transfer_call(source_id, target_id, amount, key)

    # The same request, sixteen times at once (a client retrying over a flaky network).
    key = new_key()
    async with connections(pool, racers) as conns:
        outcomes = await fire_together(conns, [request(amount, key)] * racers)
    assert errors_by_sqlstate(outcomes) == {}
    responses = successes(outcomes)
    assert sorted(row["replayed"] for row in responses) == [False] + [True] * (racers - 1)
    [first] = [row for row in responses if not row["replayed"]]
    for row in responses:
        assert {**dict(row), "replayed": False} == dict(first)
    initial = {source_id: 1_000_000, target_id: 0}
    async with pool.acquire() as connection:
        assert await load_transaction_count(connection) == 1
        balances = await wallet_balances(connection, [source_id, target_id])
        assert balances == expected_balances(initial, [first])
        assert balances != initial

    # One key, sixteen different requests at once: one executes, the rest are refused.
    key = new_key()
    async with connections(pool, racers) as conns:
        different_requests = [request(amount + index, key) for index in range(racers)]
        outcomes = await fire_together(conns, different_requests)
    assert errors_by_sqlstate(outcomes) == {IDEMPOTENCY_KEY_REUSED: racers - 1}
    [winner] = successes(outcomes)
    assert not winner["replayed"]
    async with pool.acquire() as connection:
        assert await load_transaction_count(connection) == 2
        balances = await wallet_balances(connection, [source_id, target_id])
        assert balances == expected_balances(initial, [first, winner])
        await assert_ledger_sound(connection)


async def test_concurrent_transfers_into_one_hot_wallet_lose_nothing(pool: Pool) -> None:
    senders, transfers_per_sender, fee = 60, 5, 4
    initial_balance = transfers_per_sender * (10_000 + fee)
    async with pool.acquire() as connection:
        wallet_ids = sorted(await open_funded_wallets(connection, [0] * (senders + 1)))
        # The receiver sits in the middle of the id order, so half the transfers lock it
        # first and half lock it second.
        receiver_id = wallet_ids.pop(senders // 2)
        for sender_id in wallet_ids:
            await connection.execute(
                "SELECT wallet.deposit($1, NULL, NULL, NULL, $2, $3)",
                SETUP_CALLER,
                sender_id,
                initial_balance,
            )
        await set_rule(connection, "transfer", rate_bps=0, fixed=fee, max_fee=fee)

    rng = random.Random(senders)
    outcomes: list[Outcome] = []
    async with connections(pool, senders) as conns:
        for _ in range(transfers_per_sender):
            outcomes.extend(
                await fire_together(
                    conns,
                    [
                        transfer_call(sender_id, receiver_id, rng.randint(1, 10_000), new_key())
                        for sender_id in wallet_ids
                    ],
                )
            )

    assert errors_by_sqlstate(outcomes) == {}
    posted = successes(outcomes)
    assert len(posted) == senders * transfers_per_sender
    async with pool.acquire() as connection:
        balances = await wallet_balances(connection, [receiver_id, *wallet_ids])
        assert balances[receiver_id] == sum(row["amount"] for row in posted)
        initial = {receiver_id: 0, **dict.fromkeys(wallet_ids, initial_balance)}
        assert balances == expected_balances(initial, posted)
        await assert_entry_chain_unbroken(connection, receiver_id, len(posted))
        await assert_ledger_sound(connection)
