"""Three API replicas and two workers on one database lose and double nothing through crashes.

Clients spread random transfers, withdrawals and deposits (some scheduled a few seconds
ahead, settled by the workers during the chaos) over three `wallet serve` replicas. Every
POST has its own Idempotency-Key and is retried with that same key on another replica
after a lost connection, a timeout or a 503. Meanwhile replica 1 is stopped with SIGTERM
(a rolling deploy), replica 2 is SIGKILLed (a crash) and both are started again, and the
database's client connections are terminated twice. Afterwards every request that was
never acknowledged is replayed with its key, and the ledger must hold exactly the
acknowledged transactions, each once, with the acknowledged amounts and fees.
"""

from __future__ import annotations

import asyncio
import random
import signal
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import psycopg
import pytest

from tests.support.money import expected_balances, reference_fee
from tests.support.processes import Server, Workers, log_tails
from tests.support.tokens import make_token

Replicas = list[Server]

CLIENTS = 16
WORKLOAD_SECONDS = 15.0
WALLETS = 20
OPENING_DEPOSIT = 200_000
MAX_MOVE = 40_000
MIN_DEPOSIT = 1_000  # above the deposit rule's largest fee: amount_below_fee cannot happen
SCHEDULED_SHARE = 0.4  # of deposits
MAX_ATTEMPTS = 12  # per request during the chaos; past it the request counts as unacknowledged
REQUEST_TIMEOUT = 10.0
SETTLE_TIMEOUT = 30.0
SIGTERM_MARGIN = 0.25  # seconds before SIGTERM a request must have been sent to count as read
RULES: dict[str, dict[str, Any]] = {
    "deposit": {"rate_bps": 50, "fixed": 0, "min_fee": 0, "max_fee": 100},
    "withdrawal": {"rate_bps": 0, "fixed": 15, "min_fee": 0, "max_fee": None},
    "transfer": {"rate_bps": 125, "fixed": 2, "min_fee": 10, "max_fee": 400},
}
TERMINATE_CLIENT_BACKENDS = (
    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
    " WHERE datname = current_database() AND pid <> pg_backend_pid() AND backend_type = 'client backend'"
)


@dataclass
class Attempt:
    """One HTTP exchange of a request: which replica, when, and how it ended."""

    replica: int  # index into replicas
    started: float
    ended: float = 0.0
    outcome: str = ""  # "status 201", "ConnectError", "ReadError", ...

    @property
    def refused(self) -> bool:
        return self.outcome == "ConnectError"


@dataclass
class Request:
    kind: str
    path: str
    body: dict[str, Any]
    key: str
    scheduled: bool = False
    attempts: list[Attempt] = field(default_factory=list)
    response: dict[str, Any] | None = None
    status: int | None = None


@dataclass
class Ledger:
    """What the clients were told."""

    wallet_ids: list[str]  # every wallet; the load moves money between the first WALLETS
    requests: list[Request] = field(default_factory=list)
    acknowledged: dict[str, dict[str, Any]] = field(default_factory=dict)
    refused: Counter[str] = field(default_factory=Counter)
    unexpected: list[str] = field(default_factory=list)
    server_errors: list[str] = field(default_factory=list)  # 5xx other than 503: outcome unknown

    def acknowledge(self, request: Request, transaction: dict[str, Any]) -> None:
        problems = check_acknowledgement(request, transaction)
        if problems:
            self.unexpected.append(f"{request.key}: {problems}: {request.body} -> {transaction}")
        known = self.acknowledged.setdefault(transaction["id"], transaction)
        if known != transaction:
            self.unexpected.append(f"one id, two bodies: {known} {transaction}")

    def expected_balances(self) -> dict[str, int]:
        return expected_balances(self.wallet_ids, self.acknowledged.values())


def check_acknowledgement(request: Request, transaction: dict[str, Any]) -> str:
    """What is wrong with a 201 for this request ('' if nothing)."""
    expected = {
        "kind": request.kind,
        "amount": request.body["amount"],
        "fee": reference_fee(request.body["amount"], **RULES[request.kind]),
    }
    if request.kind == "transfer":
        expected |= {name: request.body[name] for name in ("from_wallet_id", "to_wallet_id")}
    else:
        expected["wallet_id"] = request.path.split("/")[3]
    actual = {name: transaction.get(name) for name in expected}
    if actual != expected:
        return f"expected {expected}, got {actual}"
    statuses = {"posted", "scheduled"} if request.scheduled else {"posted"}
    if transaction["status"] not in statuses:
        return f"status {transaction['status']}"
    return ""


class Cluster:
    """HTTP clients on every replica; a request goes to one replica and its retries to the next."""

    def __init__(self, replicas: Replicas, token: str) -> None:
        limits = httpx.Limits(max_connections=CLIENTS * 2, max_keepalive_connections=CLIENTS * 2)
        self.clients = [
            httpx.AsyncClient(
                base_url=replica.base_url,
                headers={"Authorization": f"Bearer {token}"},
                timeout=REQUEST_TIMEOUT,
                limits=limits,
            )
            for replica in replicas
        ]

    async def close(self) -> None:
        for client in self.clients:
            await client.aclose()

    async def post(self, request: Request, first: int, max_attempts: int) -> httpx.Response | None:
        """POST until a replica answers with something other than 503; None after max_attempts."""
        for number in range(max_attempts):
            replica = (first + number) % len(self.clients)
            attempt = Attempt(replica=replica, started=time.monotonic())
            request.attempts.append(attempt)
            try:
                response = await self.clients[replica].post(
                    request.path, json=request.body, headers={"Idempotency-Key": request.key}
                )
            except httpx.TransportError as error:  # connection refused or reset, timeouts
                attempt.outcome = type(error).__name__
            else:
                attempt.outcome = f"status {response.status_code}"
                if response.status_code != 503:
                    attempt.ended = time.monotonic()
                    return response
            attempt.ended = time.monotonic()
            await asyncio.sleep(min(0.02 * 2**number, 0.5))
        return None


def movement(rng: random.Random, wallet_ids: list[str], number: int) -> Request:
    key = f"cluster-{number}-{uuid.uuid4()}"
    roll = rng.random()
    if roll < 0.55:
        source, destination = rng.sample(wallet_ids, 2)
        body = {"from_wallet_id": source, "to_wallet_id": destination, "amount": rng.randint(1, MAX_MOVE)}
        return Request("transfer", "/v1/transfers", body, key)
    wallet_id = rng.choice(wallet_ids)
    if roll < 0.75:
        body = {"amount": rng.randint(1, MAX_MOVE)}
        return Request("withdrawal", f"/v1/wallets/{wallet_id}/withdrawals", body, key)
    body = {"amount": rng.randint(MIN_DEPOSIT, MAX_MOVE)}
    scheduled = rng.random() < SCHEDULED_SHARE
    if scheduled:
        at = datetime.now(UTC) + timedelta(seconds=rng.uniform(2.5, 6.0))
        body["available_at"] = at.isoformat()
    return Request("deposit", f"/v1/wallets/{wallet_id}/deposits", body, key, scheduled=scheduled)


def settle(ledger: Ledger, request: Request, response: httpx.Response | None) -> None:
    """Record what the clients were told about one request."""
    if response is None:
        return  # never acknowledged: replayed after the chaos
    if response.status_code >= 500:
        # Not an answer the client can act on (only 503 says "retry"): replayed after the chaos,
        # and a failure of the test at its end.
        request.response = None
        error = f"{request.kind} {request.key} -> {response.status_code} {response.text[:200]}"
        ledger.server_errors.append(error)
        return
    request.status = response.status_code
    if response.status_code == 201:
        request.response = response.json()
        ledger.acknowledge(request, request.response)
    elif (
        response.status_code == 422
        and request.kind != "deposit"
        and response.json().get("code") == "insufficient_funds"
    ):
        ledger.refused[request.kind] += 1
    else:
        ledger.unexpected.append(f"{request.kind} {request.body} -> {response.status_code} {response.text}")


async def client_loop(number: int, cluster: Cluster, ledger: Ledger, deadline: float) -> None:
    rng = random.Random(number)
    while time.monotonic() < deadline:
        request = movement(rng, ledger.wallet_ids[:WALLETS], number)
        ledger.requests.append(request)
        response = await cluster.post(request, rng.randrange(len(cluster.clients)), MAX_ATTEMPTS)
        settle(ledger, request, response)


@dataclass
class Chaos:
    database_url: str
    probe: Request
    probe_outcome: str = ""
    sigterm_at: float = 0.0
    sigterm_seconds: float = 0.0
    sigterm_exit: int | None = None
    sigkill_exit: int | None = None
    terminated_backends: list[int] = field(default_factory=list)


async def make_chaos(
    replicas: Replicas, db: psycopg.Connection, chaos: Chaos, cluster: Cluster, ledger: Ledger
) -> None:
    """SIGTERM replica 1, SIGKILL replica 2, terminate the database's client connections.

    A probe transfer is held in flight on replica 1 across its SIGTERM: its sender's row is
    locked, so the transfer waits in the database until the lock is let go after the signal.
    """
    loop = asyncio.get_running_loop()

    def terminate_backends() -> None:
        chaos.terminated_backends.append(db.execute(TERMINATE_CLIENT_BACKENDS).fetchone()[0])

    async def send_probe() -> None:
        attempt = Attempt(replica=0, started=time.monotonic())
        chaos.probe.attempts.append(attempt)
        try:
            response = await cluster.clients[0].post(
                chaos.probe.path, json=chaos.probe.body, headers={"Idempotency-Key": chaos.probe.key}
            )
        except httpx.TransportError as error:
            attempt.outcome = type(error).__name__
        else:
            attempt.outcome = f"status {response.status_code}"
            settle(ledger, chaos.probe, response)
        attempt.ended = time.monotonic()
        chaos.probe_outcome = attempt.outcome

    await asyncio.sleep(2.0)
    await loop.run_in_executor(None, terminate_backends)
    await asyncio.sleep(1.0)
    with psycopg.connect(chaos.database_url) as lock:
        lock.execute(
            "SELECT 1 FROM wallet.wallets WHERE id = %s FOR UPDATE", (chaos.probe.body["from_wallet_id"],)
        )
        probe = asyncio.create_task(send_probe())
        await until(lambda: blocked_by(db, lock.info.backend_pid), what="the probe waiting on the lock")
        chaos.sigterm_at = time.monotonic()
        replicas[0].send(signal.SIGTERM)
        # Draining: it no longer accepts connections, and the probe is still in flight.
        await until(lambda: not replicas[0].accepts_connections(), what="replica 1 draining")
        lock.rollback()
    await probe
    chaos.sigterm_exit = await loop.run_in_executor(None, replicas[0].wait)
    chaos.sigterm_seconds = time.monotonic() - chaos.sigterm_at
    await asyncio.sleep(1.0)
    replicas[1].send(signal.SIGKILL)
    chaos.sigkill_exit = await loop.run_in_executor(None, replicas[1].wait)
    await loop.run_in_executor(None, replicas[0].start)
    await asyncio.sleep(1.0)
    await loop.run_in_executor(None, replicas[1].start)
    await asyncio.sleep(1.0)
    await loop.run_in_executor(None, terminate_backends)


async def until(condition: Callable[[], Any], *, what: str, within: float = 10.0) -> None:
    """Poll a blocking condition off the event loop until it holds; fail after `within` s."""
    loop = asyncio.get_running_loop()
    deadline = time.monotonic() + within
    while not await loop.run_in_executor(None, condition):
        assert time.monotonic() < deadline, f"{what}: not within {within} s"
        await asyncio.sleep(0.02)


def blocked_by(db: psycopg.Connection, pid: int) -> bool:
    """Whether some session waits on a lock that backend pid holds."""
    query = "SELECT count(*) FROM pg_stat_activity WHERE %s = ANY(pg_blocking_pids(pid))"
    return db.execute(query, (pid,)).fetchone()[0] > 0


@pytest.mark.cluster
async def test_replicas_crashes_and_killed_connections_lose_or_double_nothing(
    replicas: Replicas, workers: Workers, db: psycopg.Connection, database_url: str
) -> None:
    # Terminated connections restart a worker's run; the jobs it had running are retried once
    # its old heartbeat is this old (3 s: a live worker renews it every second).
    stalled = {"WALLET_STALLED_WORKER_SECONDS": "3"}
    workers.start(**stalled)
    workers.start(**stalled)
    cluster = Cluster(replicas, make_token(sub="cluster"))
    try:
        await run(replicas, workers, db, cluster, database_url)
    finally:
        await cluster.close()


def tails(replicas: Replicas, workers: Workers) -> str:
    return "\n" + log_tails(replicas) + "\n" + workers.log_tails()


async def run(
    replicas: Replicas, workers: Workers, db: psycopg.Connection, cluster: Cluster, database_url: str
) -> None:
    reader = cluster.clients[2]  # replica 3 is never stopped
    for operation, rule in RULES.items():
        response = await reader.put(f"/v1/commission-rules/{operation}", json=rule)
        assert response.status_code == 200, response.text
    wallet_ids = []
    for number in range(WALLETS + 2):  # two more for the SIGTERM probe
        response = await reader.post("/v1/wallets", json={"owner_id": f"cluster-{number}"})
        assert response.status_code == 201, response.text
        wallet_ids.append(response.json()["id"])
    ledger = Ledger(wallet_ids=wallet_ids)
    for number, wallet_id in enumerate(wallet_ids):
        path, key = f"/v1/wallets/{wallet_id}/deposits", f"fund-{uuid.uuid4()}"
        request = Request("deposit", path, {"amount": OPENING_DEPOSIT}, key)
        ledger.requests.append(request)
        settle(ledger, request, await cluster.post(request, number, MAX_ATTEMPTS))
        assert request.status == 201, (request, ledger.unexpected)

    probe_body = {"from_wallet_id": wallet_ids[-2], "to_wallet_id": wallet_ids[-1], "amount": 1_234}
    probe = Request("transfer", "/v1/transfers", probe_body, f"probe-{uuid.uuid4()}")
    ledger.requests.append(probe)
    chaos = Chaos(database_url=database_url, probe=probe)
    started = time.monotonic()
    deadline = started + WORKLOAD_SECONDS
    async with asyncio.TaskGroup() as workload:
        for number in range(CLIENTS):
            workload.create_task(client_loop(number, cluster, ledger, deadline))
        workload.create_task(make_chaos(replicas, db, chaos, cluster, ledger))
    load_seconds = time.monotonic() - started

    # SIGTERM is a graceful stop: exit 0, and nothing in flight on replica 1 then was cut off.
    assert chaos.sigterm_exit == 0, f"replica 1 exited {chaos.sigterm_exit} on SIGTERM" + tails(
        replicas, workers
    )
    assert chaos.sigkill_exit == -signal.SIGKILL, chaos
    assert len(chaos.terminated_backends) == 2 and all(chaos.terminated_backends), chaos
    assert chaos.probe_outcome == "status 201" and probe.response is not None, (
        f"the transfer in flight on replica 1 at its SIGTERM ended {chaos.probe_outcome}"
        + tails(replicas, workers)
    )
    assert probe.response["status"] == "posted", probe.response
    # Requests of the load that replica 1 had surely read before its SIGTERM (sent at least
    # SIGTERM_MARGIN before it) and that were still running then: none may be cut off either.
    # (A request sent just before the signal may still sit unread in the socket and be reset.)
    in_flight = [
        (request.key, attempt)
        for request in ledger.requests
        for attempt in request.attempts
        if attempt.replica == 0 and attempt.started < chaos.sigterm_at < attempt.ended
    ]
    cut_off = [
        (key, attempt, round(chaos.sigterm_at - attempt.started, 3))
        for key, attempt in in_flight
        if not attempt.outcome.startswith("status ") or attempt.outcome.startswith("status 5")
    ]
    surely_read = [entry for entry in cut_off if entry[2] >= SIGTERM_MARGIN]
    assert not surely_read, (
        f"{len(surely_read)} of {len(in_flight)} in flight cut off: {surely_read[:10]}"
        + tails(replicas, workers)
    )

    # Every request the clients were never told about is replayed with its key, all replicas up.
    unanswered = [request for request in ledger.requests if request.status is None]
    for number, request in enumerate(unanswered):
        response = await cluster.post(request, number, 40)
        assert response is not None, f"{request.key} still unanswered" + tails(replicas, workers)
        settle(ledger, request, response)
    assert not ledger.unexpected, "\n".join(ledger.unexpected[:20])

    kinds = Counter(t["kind"] for t in ledger.acknowledged.values())
    retried = Counter(attempt.outcome for r in ledger.requests for attempt in r.attempts[:-1])
    scheduled = sum(1 for r in ledger.requests if r.response and r.response["status"] == "scheduled")
    summary = {
        "kinds": kinds,
        "refused": ledger.refused,
        "retried": retried,
        "scheduled": scheduled,
        "unanswered": len(unanswered),
        "server_errors": len(ledger.server_errors),
        "in_flight_at_sigterm": len(in_flight),
        "cut_off_right_at_sigterm": cut_off,
        "sigterm_seconds": round(chaos.sigterm_seconds, 1),
        "load_seconds": round(load_seconds, 1),
    }
    print(summary)
    # The workload did what it is meant to: every kind, scheduled deposits, and retries.
    assert kinds["transfer"] > 100 and kinds["withdrawal"] > 30 and kinds["deposit"] > WALLETS + 30, summary
    assert scheduled > 10, summary
    assert sum(retried.values()) > 0, summary

    def remaining_scheduled() -> bool:
        query = "SELECT count(*) FROM wallet.transactions WHERE status = 'scheduled'"
        return db.execute(query).fetchone()[0] == 0

    workers.wait_until(remaining_scheduled, timeout=SETTLE_TIMEOUT, what="every scheduled deposit settled")

    # The ledger holds exactly the acknowledged transactions, once each, as acknowledged.
    rows = db.execute(
        "SELECT id::text, kind::text, status::text, amount, fee FROM wallet.transactions"
    ).fetchall()
    ids = Counter(row[0] for row in rows)
    assert not [i for i, n in ids.items() if n > 1], "a transaction id repeats"
    assert set(ids) == set(ledger.acknowledged), {
        "in the database, never acknowledged": sorted(set(ids) - set(ledger.acknowledged))[:10],
        "acknowledged, not in the database": sorted(set(ledger.acknowledged) - set(ids))[:10],
    }
    for row_id, kind, status, amount, fee in rows:
        told = ledger.acknowledged[row_id]
        assert (kind, status, amount, fee) == (told["kind"], "posted", told["amount"], told["fee"]), (
            row_id,
            status,
            told,
        )

    report = (await reader.get("/v1/ledger/verify")).json()
    assert report == {"ok": True, "violations": []}, report
    violations = db.execute("SELECT check_name, detail FROM wallet.verify_ledger()").fetchall()
    assert violations == [], violations

    expected = ledger.expected_balances()
    for number, wallet_id in enumerate(wallet_ids):
        wallet = (await cluster.clients[number % 3].get(f"/v1/wallets/{wallet_id}")).json()
        assert wallet["balance"] >= 0 and wallet["available"] >= 0, wallet
        assert (wallet["balance"], wallet["available"], wallet["pending"]) == (expected[wallet_id],) * 2 + (
            0,
        ), wallet
        history = await read_history(cluster.clients[number % 3], wallet_id)
        posted = [item for item in history if item["status"] == "posted"]
        assert sum(item["amount"] for item in posted) == wallet["balance"], wallet_id
        assert len(history) == len({item["transaction_id"] for item in history}), wallet_id

    # SPEC 7: a database that cannot be reached is 503 (retry), never a 500 of unknown outcome.
    assert not ledger.server_errors, (
        f"{len(ledger.server_errors)} answers 5xx other than 503:\n"
        + "\n".join(ledger.server_errors[:10])
        + "\n"
        + server_error_logs(replicas)
    )


def server_error_logs(replicas: Replicas) -> str:
    """The last line of the last traceback each replica logged."""
    found = []
    for replica in replicas:
        for line in replica.log_path.read_text(errors="replace").splitlines():
            if '"level": "error"' in line:
                found.append(f"{replica.name}: {line[:200]} ... {line[-300:]}")
    return "\n".join(found[-5:])


async def read_history(client: httpx.AsyncClient, wallet_id: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    params: dict[str, Any] = {"limit": 500}
    for _ in range(1_000):
        response = await client.get(f"/v1/wallets/{wallet_id}/transactions", params=params)
        assert response.status_code == 200, response.text
        page = response.json()
        items.extend(page["items"])
        if page["next_cursor"] is None:
            return items
        params["cursor"] = page["next_cursor"]
    raise AssertionError(f"the history of {wallet_id} did not end")
