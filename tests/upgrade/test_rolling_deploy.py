"""A rolling deploy from the previous release to this one, a rollback, and --post, on one
database, with real processes over HTTP (README, "Upgrades and rolling deploys"):

1. the previous release migrates the database; its API and worker move money;
2. this release's `wallet migrate` runs while they keep moving money: no request fails, and
   afterwards they still move money, and a deposit scheduled a few seconds ahead is settled
   by the previous release's worker;
3. the rollout: this release's API and worker run beside the previous release's, both serve;
4. a rollback: this release's pods stop, the previous release's start again, and work;
5. the rollout again, then `wallet migrate --post`: this release alone moves money and settles.

After every phase `wallet.verify_ledger()` returns no rows and every balance is what the
movements made it. Workers log in as wallet_worker (a member of wallet_app only), as in
production; one token, minted by the previous release's `token` command, works on both APIs.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import psycopg

from core.database import with_database
from tests.support.processes import ServiceProcess, wait_until, wallet_serve, wallet_worker
from tests.support.tokens import JWT_SECRET

from .previous_release import VERSION

ROOT = Path(__file__).resolve().parents[2]
SCOPES = "wallets:create wallets:read deposits:write withdrawals:write transfers:write"
# A deferred job sends no NOTIFY when it falls due: workers find it by polling.
WORKER_SETTINGS = {"WALLET_WORKER_POLL_MILLISECONDS": "50", "WALLET_LOG_LEVEL": "INFO"}
SERVE_SETTINGS = {"WALLET_JWT_SECRET": JWT_SECRET, "WALLET_LOG_LEVEL": "WARNING"}
SCHEDULE_AHEAD = timedelta(seconds=2)  # an available_at within a second is an instant deposit
SETTLE_SECONDS = 30


class Bank:
    """Money movements over HTTP against one API, keeping the balances they should leave."""

    def __init__(self, base_url: str, token: str, balances: Counter) -> None:
        self.http = httpx.Client(base_url=base_url, headers={"Authorization": f"Bearer {token}"}, timeout=30)
        self.balances = balances  # shared by every Bank of the test: the ledger is one

    def close(self) -> None:
        self.http.close()

    def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        response = self.http.post(path, json=body, headers={"Idempotency-Key": uuid.uuid4().hex})
        assert response.status_code == 201, (self.http.base_url, path, response.status_code, response.text)
        return response.json()

    def open(self, owner_id: str) -> str:
        wallet_id = self._post("/v1/wallets", {"owner_id": owner_id})["id"]
        self.balances[wallet_id] += 0
        return wallet_id

    def deposit(self, wallet_id: str, amount: int) -> None:
        posted = self._post(f"/v1/wallets/{wallet_id}/deposits", {"amount": amount})
        assert posted["status"] == "posted", posted
        self.balances[wallet_id] += amount - posted["fee"]

    def schedule(self, wallet_id: str, amount: int) -> dict[str, Any]:
        """A deposit available SCHEDULE_AHEAD from now; its credit counts once it settles."""
        available_at = (datetime.now(UTC) + SCHEDULE_AHEAD).isoformat()
        scheduled = self._post(
            f"/v1/wallets/{wallet_id}/deposits", {"amount": amount, "available_at": available_at}
        )
        assert scheduled["status"] == "scheduled", scheduled
        self.balances[wallet_id] += amount - scheduled["fee"]
        return scheduled

    def withdraw(self, wallet_id: str, amount: int) -> None:
        posted = self._post(f"/v1/wallets/{wallet_id}/withdrawals", {"amount": amount})
        self.balances[wallet_id] -= amount + posted["fee"]

    def transfer(self, from_id: str, to_id: str, amount: int) -> None:
        body = {"from_wallet_id": from_id, "to_wallet_id": to_id, "amount": amount}
        posted = self._post("/v1/transfers", body)
        self.balances[from_id] -= amount + posted["fee"]
        self.balances[to_id] += amount

    def move_money(self, a: str, b: str) -> None:
        """Every kind of movement once."""
        self.deposit(a, 50_000)
        self.withdraw(a, 1_000)
        self.transfer(a, b, 7_000)
        self.transfer(b, a, 2_000)
        response = self.http.get(f"/v1/wallets/{a}")
        assert response.status_code == 200, response.text


class Traffic(threading.Thread):
    """Transfers back and forth through one API until stopped; every failure is kept."""

    def __init__(self, bank: Bank, a: str, b: str) -> None:
        super().__init__(daemon=True)
        self.bank, self.a, self.b = bank, a, b
        self.stopping = threading.Event()
        self.done = 0
        self.failures: list[str] = []

    def run(self) -> None:
        while not self.stopping.is_set():
            try:
                self.bank.transfer(self.a, self.b, 3) if self.done % 2 else self.bank.transfer(
                    self.b, self.a, 2
                )
                self.done += 1
            except (AssertionError, httpx.HTTPError) as error:
                self.failures.append(repr(error))

    def stop(self) -> None:
        self.stopping.set()
        self.join(timeout=60)


def wallet_migrate(database_url: str, *options: str) -> str:
    """This release's `wallet migrate`, as the migration Job runs it; its output."""
    environment = {name: value for name, value in os.environ.items() if not name.startswith("WALLET_")}
    environment["DATABASE_URL"] = database_url
    result = subprocess.run(
        [sys.executable, "-m", "cli", "migrate", *options],
        cwd=ROOT,
        env=environment,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, f"wallet migrate {' '.join(options)}:\n{result.stdout}\n{result.stderr}"
    return result.stdout


def settled_by(db: psycopg.Connection, scheduled: dict[str, Any]) -> int | None:
    """The id of the worker whose job settled the deposit, once it has and the job is marked."""
    row = db.execute(
        "SELECT t.status, j.worker_id FROM wallet.transactions AS t"
        " LEFT JOIN procrastinate.procrastinate_jobs AS j"
        "   ON j.queueing_lock = 'settle-deposit:' || t.id AND j.status = 'succeeded'"
        " WHERE t.id = %s",
        (scheduled["id"],),
    ).fetchone()
    return row[1] if row is not None and row[0] == "posted" else None


def check_ledger(db: psycopg.Connection, balances: Counter, phase: str) -> None:
    violations = db.execute("SELECT * FROM wallet.verify_ledger()").fetchall()
    assert violations == [], f"{phase}: {violations}"
    found = dict(
        db.execute(
            "SELECT id::text, balance + pending FROM wallet.wallets WHERE id = ANY(%s::uuid[])",
            (list(balances),),
        ).fetchall()
    )
    assert found == dict(balances), phase


def test_previous_release_pods_keep_moving_money_through_migrate_a_rollback_and_post(
    previous_release, new_database, logins, log_folder
):
    database = new_database()
    previous_release.migrate(database.owner_url)
    worker_url = with_database(logins["wallet_worker"], database.name)
    token = previous_release.token(JWT_SECRET, scopes=SCOPES)
    balances: Counter = Counter()

    def previous_pods() -> tuple[ServiceProcess, ServiceProcess]:
        api = previous_release.serve(
            database.url, log_path=log_folder / f"{VERSION}-serve.log", **SERVE_SETTINGS
        )
        worker = previous_release.worker(
            worker_url,
            watch_url=database.url,
            log_path=log_folder / f"{VERSION}-worker.log",
            **WORKER_SETTINGS,
        )
        return api, worker

    def this_releases_pods() -> tuple[ServiceProcess, ServiceProcess]:
        api = wallet_serve(database.url, log_path=log_folder / "serve.log", **SERVE_SETTINGS)
        worker = wallet_worker(
            database.url, log_path=log_folder / "worker.log", DATABASE_URL=worker_url, **WORKER_SETTINGS
        )
        return api, worker

    old_api, old_worker = previous_pods()
    new_api, new_worker = this_releases_pods()
    pods = (old_api, old_worker, new_api, new_worker)
    banks: list[Bank] = []
    try:
        with psycopg.connect(database.url, autocommit=True) as db:
            # 1. The previous release, as deployed today.
            old_api.start()
            old_worker.start()
            old_bank = Bank(old_api.base_url, token, balances)
            banks.append(old_bank)
            a, b = old_bank.open("shop-a"), old_bank.open("shop-b")
            old_bank.move_money(a, b)

            # 2. This release's `wallet migrate`, while the previous release keeps working.
            traffic_bank = Bank(old_api.base_url, token, balances)
            banks.append(traffic_bank)
            traffic = Traffic(traffic_bank, a, b)
            traffic.start()
            try:
                output = wallet_migrate(database.owner_url)
            finally:
                traffic.stop()
            assert output.startswith("migrations applied: "), output
            assert traffic.failures == [], traffic.failures[:5]
            assert traffic.done > 0
            old_bank.move_money(a, b)
            scheduled = old_bank.schedule(b, 30_000)
            worker_id = old_worker.wait_until(
                lambda: settled_by(db, scheduled),
                timeout=SETTLE_SECONDS,
                what="settled by the previous worker",
            )
            assert worker_id == old_worker.worker_id
            check_ledger(db, balances, "the previous release after this release's migrate")

            # 3. The rollout: both releases serve and settle, side by side.
            new_api.start()
            new_worker.start()
            new_bank = Bank(new_api.base_url, token, balances)
            banks.append(new_bank)
            new_bank.move_money(a, b)
            old_bank.move_money(b, a)
            scheduled = new_bank.schedule(a, 20_000)
            wait_until(
                lambda: settled_by(db, scheduled),
                timeout=SETTLE_SECONDS,
                what="settled during the rollout",
                watch=pods,
            )
            check_ledger(db, balances, "both releases side by side")

            # 4. A rollback: this release's pods go, the previous release's start again, after
            # its own `wallet migrate` (Argo CD's PreSync of the older revision) re-applied its sql/.
            new_api.stop()
            new_worker.stop()
            old_api.stop()
            old_worker.stop()
            assert previous_release.migrate(database.owner_url) == []
            old_api.start()
            old_worker.start()
            old_bank.move_money(a, b)
            scheduled = old_bank.schedule(a, 10_000)
            worker_id = old_worker.wait_until(
                lambda: settled_by(db, scheduled), timeout=SETTLE_SECONDS, what="settled after the rollback"
            )
            assert worker_id == old_worker.worker_id
            check_ledger(db, balances, "after a rollback")

            # 5. The rollout again (its `wallet migrate` brings this release's functions back);
            # once no previous-release pod runs, `wallet migrate --post`.
            assert wallet_migrate(database.owner_url).startswith("migrations applied: none"), "roll forward"
            new_api.start()
            new_worker.start()
            old_api.stop()
            old_worker.stop()
            output = wallet_migrate(database.owner_url, "--post")
            assert "\npost-deploy steps applied: " in output, output
            new_bank.move_money(a, b)
            scheduled = new_bank.schedule(b, 40_000)
            worker_id = new_worker.wait_until(
                lambda: settled_by(db, scheduled), timeout=SETTLE_SECONDS, what="settled after --post"
            )
            assert worker_id == new_worker.worker_id
            check_ledger(db, balances, "this release alone after --post")
            assert old_api.exit_codes == [0, 0] and old_worker.exit_codes == [0, 0]
    finally:
        for bank in banks:
            bank.close()
        for pod in pods:
            pod.stop()
