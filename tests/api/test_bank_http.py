"""Money is conserved when many clients move it at once through two `wallet serve` processes.

Every request carries its own Idempotency-Key and is retried with that same key after a
lost connection or a 503, so a retry can never move money twice. The tests keep a ledger
of their own from the acknowledged (201) responses and hold the service to it: the ledger
check, the balances, every wallet's history, every transaction and the database rows.

The bank's clients also place holds, capture them in parts (to the outside world or to another
wallet, some final) and void them (issue 12): each wallet's `held` must be what its active holds
still reserve, and each hold must have captured exactly what its acknowledged captures took.
In the conserving test two real `wallet worker` processes expire holds too: some holds are placed
with an expires_at a few seconds ahead, captured only in part before their time, and the clients
aim captures (in part, in full, final) and voids at them just as they fall due, so they race the
expiry jobs (and the workers' sweeps); the test waits until every such hold is closed before it
checks anything. Whichever wins, an expired hold released what it still reserved exactly once,
kept what its acknowledged captures took (none of them at or past its expires_at), and a capture
refused with 409 hold_not_active moved nothing. The other holds keep their default expiry
(7 days) and none of them expires within the test.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import psycopg
import pytest

from tests.support.money import expected_balances, reference_fee
from tests.support.processes import Workers, running_server
from tests.support.tokens import TokenFactory

# A deliberately busy workload that still fits a test run: 24 clients for 4 seconds.
CLIENTS = 24
WORKLOAD_SECONDS = 4.0
WALLETS = 10
OPENING_DEPOSIT = 100_000
MAX_MOVE = 60_000
# Deposits stay above the deposit rule's largest fee, so amount_below_fee cannot happen.
MIN_DEPOSIT = 1_000
REPLAY_SHARE = 0.1
# The share of a client's requests that place, capture or void holds.
HOLD_SHARE = 0.3
# The share of placed holds that expire within the test, and how far ahead their expires_at is
# (in seconds of the database's clock; the API wants at least 1 s): most of them expire while the
# clients still run, the rest just after.
EXPIRING_SHARE = 0.5
EXPIRY_LEAD = (2.0, 3.5)
# The share of captures and voids aimed at an open expiring hold whose expires_at is at most
# RACE_AHEAD seconds ahead (or just past), when there is one: the client waits for its expires_at
# give or take RACE_JITTER seconds, then sends the request, as the expiry job falls due.
# At most RACERS requests race one hold's expiry, so that the races spread over many holds.
RACE_SHARE = 0.5
RACE_AHEAD = 0.5
RACE_JITTER = 0.05
RACERS = 2
# How long the workers may take to close every hold whose expires_at has passed.
EXPIRY_WAIT_SECONDS = 30.0
# A request is retried with its own key until it is answered; past this the test fails.
MAX_ATTEMPTS = 40
HISTORY_PAGE = 37  # an odd size, so pages break at arbitrary points
RULES: dict[str, dict[str, Any]] = {
    "deposit": {"rate_bps": 50, "fixed": 0, "min_fee": 0, "max_fee": 100},
    "withdrawal": {"rate_bps": 0, "fixed": 15, "min_fee": 0, "max_fee": None},  # null: no cap
    "transfer": {"rate_bps": 125, "fixed": 2, "min_fee": 10, "max_fee": 400},
}
# A zero cap, not a null one: these tests are about races, not about the fee formula.
NO_FEE = {"rate_bps": 0, "fixed": 0, "min_fee": 0, "max_fee": 0}


@pytest.fixture
def two_servers(database_url: str) -> Iterator[tuple[str, str]]:
    """Two `wallet serve` processes on one database, as two pods behind a load balancer."""
    with running_server(database_url) as first, running_server(database_url) as second:
        yield first, second


@pytest.fixture
async def clients(
    two_servers: tuple[str, str], token: TokenFactory
) -> AsyncIterator[list[httpx.AsyncClient]]:
    headers = {"Authorization": f"Bearer {token()}"}
    limits = httpx.Limits(max_connections=CLIENTS, max_keepalive_connections=CLIENTS)
    async with (
        httpx.AsyncClient(base_url=two_servers[0], headers=headers, timeout=30, limits=limits) as first,
        httpx.AsyncClient(base_url=two_servers[1], headers=headers, timeout=30, limits=limits) as second,
    ):
        yield [first, second]


@dataclass
class Retries:
    unavailable: int = 0
    connection_errors: int = 0


async def post_until_answered(
    clients: list[httpx.AsyncClient],
    path: str,
    body: dict[str, Any],
    key: str,
    retries: Retries,
    first_server: int = 0,
) -> httpx.Response:
    """POST with one Idempotency-Key until a server answers with something other than 503;
    each retry goes to the other server, as a client behind a load balancer would see it."""
    for attempt in range(MAX_ATTEMPTS):
        client = clients[(first_server + attempt) % len(clients)]
        try:
            response = await client.post(path, json=body, headers={"Idempotency-Key": key})
        except httpx.TransportError:
            retries.connection_errors += 1
        else:
            if response.status_code != 503:
                return response
            retries.unavailable += 1
        await asyncio.sleep(min(0.02 * 2**attempt, 0.5))
    raise AssertionError(f"POST {path} with key {key} was not answered in {MAX_ATTEMPTS} attempts")


async def put_rule(client: httpx.AsyncClient, operation: str, rule: dict[str, Any]) -> None:
    response = await client.put(f"/v1/commission-rules/{operation}", json=rule)
    assert response.status_code == 200, response.text
    assert {name: response.json()[name] for name in rule} == rule


async def open_wallet(clients: list[httpx.AsyncClient], retries: Retries) -> str:
    response = await post_until_answered(
        clients, "/v1/wallets", {"owner_id": f"bank-{uuid.uuid4().hex}"}, f"open-{uuid.uuid4()}", retries
    )
    assert response.status_code == 201, response.text
    return response.json()["id"]


def assert_insufficient_funds(response: httpx.Response) -> None:
    assert response.status_code == 422, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    assert response.json()["code"] == "insufficient_funds", response.text


async def read_history(client: httpx.AsyncClient, wallet_id: str) -> list[dict[str, Any]]:
    """Every history item of a wallet, newest first, following next_cursor to the end."""
    items: list[dict[str, Any]] = []
    params: dict[str, Any] = {"limit": HISTORY_PAGE}
    for _ in range(10_000):
        response = await client.get(f"/v1/wallets/{wallet_id}/transactions", params=params)
        assert response.status_code == 200, response.text
        page = response.json()
        items.extend(page["items"])
        if page["next_cursor"] is None:
            return items
        params["cursor"] = page["next_cursor"]
    raise AssertionError(f"the history of {wallet_id} did not end after 10000 pages")


@dataclass
class Bank:
    """What the clients were told: the acknowledged transactions, by id, and the refusals."""

    wallet_ids: list[str]
    acknowledged: dict[str, dict[str, Any]] = field(default_factory=dict)
    refused: Counter[str] = field(default_factory=Counter)
    unexpected: list[str] = field(default_factory=list)
    replays: int = 0
    retries: Retries = field(default_factory=Retries)
    # Holds as placed, by id (placing order in hold_ids), those not known to be closed, and how
    # many voids were acknowledged.
    holds: dict[str, dict[str, Any]] = field(default_factory=dict)
    hold_ids: list[str] = field(default_factory=list)
    open_holds: set[str] = field(default_factory=set)
    voids: int = 0
    # The database's clock minus this process's, so expires_at is set on the clock that judges it.
    clock_offset: timedelta = timedelta(0)
    # The expires_at of the holds placed to expire within the test, by id, and the holds a capture
    # or void was refused with 409 hold_not_active.
    expiring: dict[str, datetime] = field(default_factory=dict)
    not_active: set[str] = field(default_factory=set)
    # The captures and voids sent about their hold's expires_at, by hold.
    races: Counter[str] = field(default_factory=Counter)

    def database_now(self) -> datetime:
        return datetime.now(UTC) + self.clock_offset

    def racing_hold(self, rng: random.Random) -> tuple[str, float] | None:
        """An open expiring hold whose expires_at is near (just ahead or just past), and how long
        to wait to send a capture or void of it about then: it races the hold's expiry."""
        now = self.database_now()
        near = sorted(
            hold_id
            for hold_id in self.open_holds & self.expiring.keys()
            if -RACE_JITTER <= (self.expiring[hold_id] - now).total_seconds() <= RACE_AHEAD
            and self.races[hold_id] < RACERS
        )
        if not near:
            return None
        hold_id = rng.choice(near)
        self.races[hold_id] += 1
        ahead = (self.expiring[hold_id] - now).total_seconds()
        return hold_id, max(0.0, ahead + rng.uniform(-RACE_JITTER, RACE_JITTER))

    def acknowledge(self, transaction: dict[str, Any]) -> None:
        known = self.acknowledged.setdefault(transaction["id"], transaction)
        assert known == transaction, ("one transaction id, two bodies", known, transaction)

    def expected_balances(self) -> dict[str, int]:
        return expected_balances(self.wallet_ids, self.acknowledged.values())

    def totals(self, kind: str) -> tuple[int, int]:
        """Sum of amounts and of fees of the acknowledged transactions of one kind."""
        chosen = [t for t in self.acknowledged.values() if t["kind"] == kind]
        return sum(t["amount"] for t in chosen), sum(t["fee"] for t in chosen)


def movement(rng: random.Random, wallet_ids: list[str]) -> tuple[str, str, dict[str, Any], dict[str, str]]:
    """A random money movement: (kind, path, body, the wallets it names)."""
    roll = rng.random()
    if roll < 0.6:
        source, destination = rng.sample(wallet_ids, 2)
        body = {"from_wallet_id": source, "to_wallet_id": destination, "amount": rng.randint(1, MAX_MOVE)}
        return "transfer", "/v1/transfers", body, {"from_wallet_id": source, "to_wallet_id": destination}
    wallet_id = rng.choice(wallet_ids)
    if roll < 0.8:
        body = {"amount": rng.randint(1, MAX_MOVE)}
        return "withdrawal", f"/v1/wallets/{wallet_id}/withdrawals", body, {"wallet_id": wallet_id}
    body = {"amount": rng.randint(MIN_DEPOSIT, MAX_MOVE)}
    return "deposit", f"/v1/wallets/{wallet_id}/deposits", body, {"wallet_id": wallet_id}


def check_acknowledgement(
    kind: str, amount: int, wallets: dict[str, str], transaction: dict[str, Any]
) -> None:
    """A 201 says what was asked: kind, wallets, amount, and the fee of the rule in force."""
    assert transaction["kind"] == kind, transaction
    assert transaction["status"] == "posted", transaction
    assert transaction["amount"] == amount, (amount, transaction)
    assert transaction["fee"] == reference_fee(amount, **RULES[kind]), (RULES[kind], transaction)
    assert {name: transaction[name] for name in wallets} == wallets, (wallets, transaction)


def problem_code(response: httpx.Response) -> str | None:
    if not response.headers.get("content-type", "").startswith("application/problem+json"):
        return None
    return response.json().get("code")


async def replay_now_and_then(
    rng: random.Random,
    clients: list[httpx.AsyncClient],
    bank: Bank,
    path: str,
    body: dict[str, Any] | None,
    key: str,
    server: int,
    first: httpx.Response,
) -> None:
    """Now and then, send an acknowledged request again with its key, to the other server: the
    same answer, marked as a replay."""
    if rng.random() >= REPLAY_SHARE:
        return
    replay = await post_until_answered(clients, path, body, key, bank.retries, server + 1)
    assert replay.status_code == first.status_code, replay.text
    assert replay.headers.get("idempotent-replayed") == "true", replay.headers
    assert replay.json() == first.json(), (first.json(), replay.json())
    bank.replays += 1


# What a hold request may be refused with, for the state other clients left the hold or wallet in.
HOLD_REFUSALS = {
    "hold": {(422, "insufficient_funds")},
    "capture": {(422, "insufficient_funds"), (422, "amount_exceeds_hold"), (409, "hold_not_active")},
    "void": {(409, "hold_not_active")},
}


async def hold_step(number: int, rng: random.Random, clients: list[httpx.AsyncClient], bank: Bank) -> None:
    """Place a hold (now and then one that expires within the test), capture part or all of a known
    one (to the outside world or another wallet, now and then final), or void one."""
    key = f"bank-hold-{number}-{uuid.uuid4()}"
    server = rng.randrange(len(clients))
    roll = rng.random()
    body: dict[str, Any] | None
    lead = wait = 0.0
    if roll < 0.4 or not bank.open_holds:
        operation, wallet_id = "hold", rng.choice(bank.wallet_ids)
        path, body, status = f"/v1/wallets/{wallet_id}/holds", {"amount": rng.randint(1, MAX_MOVE)}, 201
        if rng.random() < EXPIRING_SHARE:
            lead = rng.uniform(*EXPIRY_LEAD)
            body["expires_at"] = (bank.database_now() + timedelta(seconds=lead)).isoformat()
    else:
        # Now and then one about to expire (or just expired), or one that may be closed already
        # (409 hold_not_active); mostly any open one.
        racing = bank.racing_hold(rng) if rng.random() < RACE_SHARE else None
        if racing:
            hold_id, wait = racing
        else:
            hold_id = rng.choice(bank.hold_ids if rng.random() < 0.1 else sorted(bank.open_holds))
        held = bank.holds[hold_id]
        # An expiring hold is only captured in part before its time (so that it lives to expire,
        # or to be raced): closing it is left to the races and the expiry.
        partly = hold_id in bank.expiring and not racing
        if roll < 0.85 or partly:
            operation, path, body, status = "capture", f"/v1/holds/{hold_id}/capture", {}, 201
            if partly or rng.random() < 0.8:
                body["amount"] = rng.randint(1, max(1, held["amount"] // 2))
            if rng.random() < 0.4:
                body["to_wallet_id"] = rng.choice([w for w in bank.wallet_ids if w != held["wallet_id"]])
            if not partly and rng.random() < 0.2:
                body["final"] = True
        else:
            operation, path, body, status = "void", f"/v1/holds/{hold_id}/void", None, 200
    await asyncio.sleep(wait)
    sent = time.monotonic()
    response = await post_until_answered(clients, path, body, key, bank.retries, server)
    if response.status_code != status:
        if (response.status_code, problem_code(response)) in HOLD_REFUSALS[operation]:
            bank.refused[f"{operation}:{problem_code(response)}"] += 1
            if problem_code(response) == "hold_not_active":
                bank.open_holds.discard(hold_id)
                bank.not_active.add(hold_id)
        elif (
            lead
            and (response.status_code, problem_code(response)) == (400, "invalid_request")
            and time.monotonic() - sent > lead - 1.1
        ):
            # Retried (a 503, a lost connection) until less than the second the API asks for
            # was left before its expires_at: refused, and nothing reserved.
            bank.refused["hold:too_late"] += 1
        else:
            bank.unexpected.append(f"{operation} {path} {body} -> {response.status_code} {response.text}")
        return
    assert "idempotent-replayed" not in response.headers, (key, response.headers)
    answer = response.json()
    if operation == "hold":
        assert (answer["wallet_id"], answer["status"]) == (wallet_id, "active"), answer
        assert answer["amount"] == answer["remaining"] == body["amount"], answer
        if "expires_at" in body:
            expires_at = datetime.fromisoformat(answer["expires_at"])
            assert expires_at == datetime.fromisoformat(body["expires_at"]), (body, answer)
            bank.expiring[answer["id"]] = expires_at
        bank.holds[answer["id"]] = answer
        bank.hold_ids.append(answer["id"])
        bank.open_holds.add(answer["id"])
    elif operation == "capture":
        assert answer["hold_id"] == hold_id, answer
        assert answer["amount"] == body.get("amount", answer["amount"]), (body, answer)
        if "to_wallet_id" in body:
            wallets = {"from_wallet_id": held["wallet_id"], "to_wallet_id": body["to_wallet_id"]}
            check_acknowledgement("transfer", answer["amount"], wallets, answer)
        else:
            check_acknowledgement("withdrawal", answer["amount"], {"wallet_id": held["wallet_id"]}, answer)
        bank.acknowledge(answer)
        if body.get("final") or "amount" not in body:
            bank.open_holds.discard(hold_id)
    else:
        assert (answer["id"], answer["status"]) == (hold_id, "voided"), answer
        bank.voids += 1
        bank.open_holds.discard(hold_id)
    await replay_now_and_then(rng, clients, bank, path, body, key, server, response)


async def read_holds(client: httpx.AsyncClient, wallet_id: str) -> list[dict[str, Any]]:
    """Every hold of a wallet, newest first, following next_cursor to the end."""
    items: list[dict[str, Any]] = []
    params: dict[str, Any] = {"limit": HISTORY_PAGE}
    for _ in range(10_000):
        response = await client.get(f"/v1/wallets/{wallet_id}/holds", params=params)
        assert response.status_code == 200, response.text
        page = response.json()
        items.extend(page["items"])
        if page["next_cursor"] is None:
            return items
        params["cursor"] = page["next_cursor"]
    raise AssertionError(f"the holds of {wallet_id} did not end after 10000 pages")


def clock_offset(db: psycopg.Connection) -> timedelta:
    """The database's clock minus this process's (zero on one machine, but a test server may be
    another), taken at the middle of the round trip."""
    before = datetime.now(UTC)
    (database_now,) = db.execute("SELECT clock_timestamp()").fetchone()
    after = datetime.now(UTC)
    return database_now - (before + (after - before) / 2)


async def wait_for_expiries(db: psycopg.Connection, bank: Bank, workers: Workers) -> None:
    """Wait (polling, up to EXPIRY_WAIT_SECONDS) until none of the holds placed to expire within
    the test is active any more: each was captured in full, voided, or expired by a worker once
    its expires_at passed. Fails at once if a worker dies."""
    hold_ids = list(bank.expiring)
    deadline = time.monotonic() + EXPIRY_WAIT_SECONDS
    while True:
        active = db.execute(
            "SELECT id::text, expires_at FROM wallet.holds WHERE id = ANY(%s::uuid[]) AND status = 'active'",
            (hold_ids,),
        ).fetchall()
        if not active:
            return
        dead = [worker for worker in workers.started if worker.exited_unasked]
        assert not dead, f"a worker exited unasked\n{workers.log_tails()}"
        assert time.monotonic() < deadline, (
            f"{len(active)} holds still active {EXPIRY_WAIT_SECONDS} s after the workload, e.g. {active[:3]}"
            f"\n{workers.log_tails()}"
        )
        await asyncio.sleep(0.05)


async def client_loop(number: int, clients: list[httpx.AsyncClient], bank: Bank, deadline: float) -> None:
    rng = random.Random(number)
    while time.monotonic() < deadline:
        if rng.random() < HOLD_SHARE:
            await hold_step(number, rng, clients, bank)
            continue
        kind, path, body, wallets = movement(rng, bank.wallet_ids)
        key = f"bank-{number}-{uuid.uuid4()}"
        server = rng.randrange(len(clients))
        response = await post_until_answered(clients, path, body, key, bank.retries, server)
        if response.status_code == 201:
            assert "idempotent-replayed" not in response.headers, (key, response.headers)
            transaction = response.json()
            check_acknowledgement(kind, body["amount"], wallets, transaction)
            bank.acknowledge(transaction)
            if rng.random() < REPLAY_SHARE:
                replay = await post_until_answered(clients, path, body, key, bank.retries, server + 1)
                assert replay.status_code == 201, replay.text
                assert replay.headers.get("idempotent-replayed") == "true", replay.headers
                assert replay.json() == transaction, (transaction, replay.json())
                bank.replays += 1
        elif (
            response.status_code == 422
            and kind != "deposit"
            and (response.json().get("code") == "insufficient_funds")
        ):
            bank.refused[kind] += 1
        else:
            bank.unexpected.append(f"{kind} {body} -> {response.status_code} {response.text}")


async def test_concurrent_bank_over_http_conserves_money(
    clients: list[httpx.AsyncClient], db: psycopg.Connection, workers: Workers
) -> None:
    # Two workers on the servers' database, as two replicas: the expiry jobs of the holds, and
    # each job's sweep of other due holds, race the clients' captures and voids and each other.
    workers.start()
    workers.start()
    retries = Retries()
    for operation, rule in RULES.items():
        await put_rule(clients[0], operation, rule)
    wallet_ids = [await open_wallet(clients, retries) for _ in range(WALLETS)]
    bank = Bank(wallet_ids=wallet_ids, retries=retries, clock_offset=clock_offset(db))
    for index, wallet_id in enumerate(wallet_ids):
        response = await post_until_answered(
            clients,
            f"/v1/wallets/{wallet_id}/deposits",
            {"amount": OPENING_DEPOSIT},
            f"fund-{uuid.uuid4()}",
            retries,
            index,
        )
        assert response.status_code == 201, response.text
        check_acknowledgement("deposit", OPENING_DEPOSIT, {"wallet_id": wallet_id}, response.json())
        bank.acknowledge(response.json())

    deadline = time.monotonic() + WORKLOAD_SECONDS
    async with asyncio.TaskGroup() as workload:
        for number in range(CLIENTS):
            workload.create_task(client_loop(number, clients, bank, deadline))
    # Nothing changes any more once every hold placed to expire is closed (the others expire in
    # 7 days): the checks below read a ledger at rest.
    await wait_for_expiries(db, bank, workers)

    assert not bank.unexpected, "\n".join(bank.unexpected[:20])
    movements = Counter(t["kind"] for t in bank.acknowledged.values())
    captures = Counter(t["kind"] for t in bank.acknowledged.values() if t["hold_id"] is not None)
    # The workload did what it is meant to: all three kinds, holds placed, captured to the outside
    # world and to wallets, and voided, and replays of acknowledged requests.
    summary = (movements, captures, len(bank.holds), bank.voids, bank.refused, bank.replays, bank.retries)
    assert (
        movements["transfer"] > 50 and movements["withdrawal"] > 10 and movements["deposit"] > 10 + WALLETS
    ), summary
    assert len(bank.holds) > 20 and captures["withdrawal"] > 5 and captures["transfer"] > 5, summary
    assert bank.voids > 0, summary
    assert bank.replays > 0, summary

    reader = clients[0]
    report = (await reader.get("/v1/ledger/verify")).json()
    assert report == {"ok": True, "violations": []}, report

    wallets = {}
    for wallet_id in wallet_ids:
        response = await reader.get(f"/v1/wallets/{wallet_id}")
        assert response.status_code == 200, response.text
        wallets[wallet_id] = response.json()
    balances = {wallet_id: wallet["balance"] for wallet_id, wallet in wallets.items()}

    deposited, deposit_fees = bank.totals("deposit")
    withdrawn, withdrawal_fees = bank.totals("withdrawal")
    _, transfer_fees = bank.totals("transfer")
    fees = deposit_fees + withdrawal_fees + transfer_fees
    money_inside = (deposited - deposit_fees) - (withdrawn + withdrawal_fees) - transfer_fees
    assert sum(balances.values()) == money_inside, (balances, summary)
    assert balances == bank.expected_balances()
    captured_by_hold: Counter[str] = Counter()
    captures_by_hold: defaultdict[str, list[dict[str, Any]]] = defaultdict(list)
    for transaction in bank.acknowledged.values():
        if transaction["hold_id"] is not None:
            captured_by_hold[transaction["hold_id"]] += transaction["amount"]
            captures_by_hold[transaction["hold_id"]].append(transaction)
    statuses: Counter[str] = Counter()
    final: dict[str, str] = {}  # each hold's status at the end
    expired: dict[str, dict[str, Any]] = {}
    for wallet_id, wallet in wallets.items():
        holds = await read_holds(clients[wallet_ids.index(wallet_id) % 2], wallet_id)
        # Newest first: ids are time-ordered (concurrent holds were acknowledged in any order).
        assert [hold["id"] for hold in holds] == sorted(
            (hold_id for hold_id, hold in bank.holds.items() if hold["wallet_id"] == wallet_id), reverse=True
        ), wallet_id
        for hold in holds:
            statuses[hold["status"]] += 1
            final[hold["id"]] = hold["status"]
            expires_at = datetime.fromisoformat(hold["expires_at"])
            closed_at = hold["closed_at"] and datetime.fromisoformat(hold["closed_at"])
            # Each hold took exactly what its acknowledged (201) captures took, all of them before
            # its expires_at (a capture at or past it is refused, and moves nothing).
            assert hold["captured_amount"] == captured_by_hold[hold["id"]], hold
            for capture in captures_by_hold[hold["id"]]:
                assert datetime.fromisoformat(capture["posted_at"]) < expires_at, (hold, capture)
            if hold["id"] in bank.expiring:
                assert expires_at == bank.expiring[hold["id"]], hold
                assert hold["status"] != "active", hold  # its expires_at has passed
            if hold["status"] == "active":
                assert hold["captured_amount"] + hold["remaining"] == hold["amount"], hold
                assert closed_at is None, hold
            else:
                assert hold["remaining"] == 0 and hold["captured_amount"] <= hold["amount"], hold
                assert closed_at is not None, hold
            if hold["status"] == "captured":
                # In full: its last capture closed it, before its expires_at.
                assert closed_at < expires_at, hold
            elif hold["status"] == "expired":
                # Only holds placed to expire within the test, at or after their expires_at; it
                # released the rest of what it reserved (held below shows: exactly once).
                assert hold["id"] in bank.expiring and closed_at >= expires_at, hold
                assert hold["captured_amount"] < hold["amount"], hold
                expired[hold["id"]] = hold
            else:
                assert hold["status"] in ("active", "voided"), hold
        held = sum(hold["remaining"] for hold in holds if hold["status"] == "active")
        assert wallet["held"] == held, (wallet, held)
        assert wallet["balance"] >= 0 and wallet["available"] == wallet["balance"] - held >= 0, wallet
        assert wallet["pending"] == 0, wallet
    assert statuses["voided"] == bank.voids, (statuses, bank.voids)
    # A 409 hold_not_active was an answer about a closed hold (or one past its expires_at, closed
    # since): none of them is still active.
    refused_active = [hold_id for hold_id in bank.not_active if final[hold_id] == "active"]
    assert refused_active == [], refused_active
    # The workload expired holds and raced captures and voids against expiries. Who won the races
    # varies from run to run (the invariants above hold whichever way): holds captured in part
    # before they expired, captures and voids refused on holds that had expired.
    racing = {
        "statuses": statuses,
        "expired after a capture": sum(1 for hold in expired.values() if hold["captured_amount"] > 0),
        "refused after expiry": len(bank.not_active & expired.keys()),
        "raced holds": len(bank.races),
        "refused": bank.refused,
    }
    assert statuses["expired"] > 10 and len(bank.races) > 0, racing
    # No expiry job gave up (a job run early, or one whose hold was closed meanwhile, succeeds).
    (failed,) = db.execute(
        "SELECT count(*) FROM procrastinate.procrastinate_jobs"
        " WHERE task_name = 'wallet:expire_hold' AND status = 'failed'"
    ).fetchone()
    assert failed == 0, workers.log_tails()

    for wallet_id in wallet_ids:
        items = await read_history(clients[wallet_ids.index(wallet_id) % 2], wallet_id)
        posted = [item for item in items if item["status"] == "posted"]
        assert len(posted) == len(items), [item for item in items if item["status"] != "posted"]
        assert sum(item["amount"] for item in posted) == balances[wallet_id], wallet_id
        assert items[0]["balance_after"] == balances[wallet_id], items[0]
        history_ids = [item["transaction_id"] for item in items]
        assert len(history_ids) == len(set(history_ids)), (
            f"a transaction repeats in the history of {wallet_id}"
        )
        touching = {
            t["id"]
            for t in bank.acknowledged.values()
            if wallet_id in (t["wallet_id"], t["from_wallet_id"], t["to_wallet_id"])
        }
        assert set(history_ids) == touching, wallet_id

    semaphore = asyncio.Semaphore(CLIENTS)

    async def read_back(number: int, transaction: dict[str, Any]) -> None:
        async with semaphore:
            response = await clients[number % 2].get(f"/v1/transactions/{transaction['id']}")
        assert response.status_code == 200, response.text
        assert response.json() == transaction

    async with asyncio.TaskGroup() as reads:
        for number, transaction in enumerate(bank.acknowledged.values()):
            reads.create_task(read_back(number, transaction))

    rows = db.execute("SELECT id::text, status FROM wallet.transactions").fetchall()
    assert Counter(status for _, status in rows) == {"posted": len(bank.acknowledged)}
    assert {row_id for row_id, _ in rows} == set(bank.acknowledged)
    system = dict(db.execute("SELECT account, balance FROM wallet.system_account_balances").fetchall())
    assert system["revenue"] == fees, (system, fees)
    assert system["world"] == withdrawn - deposited, (system, withdrawn, deposited)


async def test_double_spend_over_http_is_impossible(
    clients: list[httpx.AsyncClient], db: psycopg.Connection
) -> None:
    """Each wallet holds exactly X; 20 concurrent withdrawals of X over both servers: one wins.
    Three wallets at once, so the race is run three times in one go."""
    retries = Retries()
    balance, attempts, wallet_count = 123_456, 20, 3
    for operation in ("deposit", "withdrawal"):
        await put_rule(clients[0], operation, NO_FEE)
    wallet_ids = [await open_wallet(clients, retries) for _ in range(wallet_count)]
    for wallet_id in wallet_ids:
        response = await post_until_answered(
            clients, f"/v1/wallets/{wallet_id}/deposits", {"amount": balance}, f"fund-{uuid.uuid4()}", retries
        )
        assert response.status_code == 201, response.text
        assert (await clients[1].get(f"/v1/wallets/{wallet_id}")).json()["available"] == balance

    start = asyncio.Event()

    async def withdraw(wallet_id: str, number: int) -> httpx.Response:
        await start.wait()
        return await post_until_answered(
            clients,
            f"/v1/wallets/{wallet_id}/withdrawals",
            {"amount": balance},
            f"spend-{uuid.uuid4()}",
            retries,
            number,
        )

    async with asyncio.TaskGroup() as race:
        tasks = [
            race.create_task(withdraw(wallet_id, number))
            for wallet_id, number in itertools.product(wallet_ids, range(attempts))
        ]
        await asyncio.sleep(0)  # one turn of the loop: every task is now waiting on start
        start.set()
    responses = [task.result() for task in tasks]

    by_wallet: dict[str, list[httpx.Response]] = defaultdict(list)
    for (wallet_id, _), response in zip(
        itertools.product(wallet_ids, range(attempts)), responses, strict=True
    ):
        by_wallet[wallet_id].append(response)
    for wallet_id, answers in by_wallet.items():
        won = [response for response in answers if response.status_code == 201]
        assert len(won) == 1, (wallet_id, Counter(response.status_code for response in answers))
        assert won[0].json()["amount"] == balance and won[0].json()["fee"] == 0, won[0].text
        for response in answers:
            if response is not won[0]:
                assert_insufficient_funds(response)
        wallet = (await clients[0].get(f"/v1/wallets/{wallet_id}")).json()
        assert (wallet["balance"], wallet["available"]) == (0, 0), wallet
        (posted,) = db.execute(
            "SELECT count(*) FROM wallet.transactions WHERE kind = 'withdrawal' AND wallet_id = %s",
            (wallet_id,),
        ).fetchone()
        assert posted == 1, wallet_id
    report = (await clients[1].get("/v1/ledger/verify")).json()
    assert report == {"ok": True, "violations": []}, report


async def test_concurrent_replays_over_http_move_money_once(
    clients: list[httpx.AsyncClient], db: psycopg.Connection
) -> None:
    """20 identical POSTs with one Idempotency-Key at once, over both servers: one transfer."""
    retries = Retries()
    funds, amount = 50_000, 7_000
    await put_rule(clients[0], "deposit", NO_FEE)
    await put_rule(clients[0], "transfer", RULES["transfer"])
    source, destination = [await open_wallet(clients, retries) for _ in range(2)]
    response = await post_until_answered(
        clients, f"/v1/wallets/{source}/deposits", {"amount": funds}, f"fund-{uuid.uuid4()}", retries
    )
    assert response.status_code == 201, response.text

    key = f"replay-{uuid.uuid4()}"
    body = {"from_wallet_id": source, "to_wallet_id": destination, "amount": amount, "reference": key}
    start = asyncio.Event()

    async def send(number: int) -> httpx.Response:
        await start.wait()
        return await post_until_answered(clients, "/v1/transfers", body, key, retries, number)

    async with asyncio.TaskGroup() as burst:
        tasks = [burst.create_task(send(number)) for number in range(20)]
        await asyncio.sleep(0)  # one turn of the loop: every task is now waiting on start
        start.set()
    responses = [task.result() for task in tasks]

    assert [response.status_code for response in responses] == [201] * 20, [r.text for r in responses]
    bodies = [response.json() for response in responses]
    assert all(other == bodies[0] for other in bodies), bodies
    first = [response for response in responses if "idempotent-replayed" not in response.headers]
    assert len(first) == 1, [dict(response.headers) for response in responses]
    assert all(
        response.headers["idempotent-replayed"] == "true"
        for response in responses
        if response is not first[0]
    )
    fee = reference_fee(amount, **RULES["transfer"])
    assert bodies[0]["fee"] == fee, bodies[0]

    balances = [
        (await clients[n].get(f"/v1/wallets/{w}")).json()["balance"]
        for n, w in enumerate([source, destination])
    ]
    assert balances == [funds - amount - fee, amount]
    (transfers,) = db.execute("SELECT count(*) FROM wallet.transactions WHERE kind = 'transfer'").fetchone()
    assert transfers == 1
    report = (await clients[1].get("/v1/ledger/verify")).json()
    assert report == {"ok": True, "violations": []}, report
