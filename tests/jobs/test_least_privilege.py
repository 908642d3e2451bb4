"""A worker needs nothing but wallet_app, and resolves nothing through public.

The worker logs in as wallet_worker (sql/bootstrap/roles.sql: a member of wallet_app and
nothing else) on a database where anyone may create objects in public, after wallet_app
has planted operators, overloads and decoy tables there (tests/sql/public_schema_attack.py).
"""

from __future__ import annotations

from datetime import timedelta
from urllib.parse import urlsplit

import psycopg

from core.database import with_database
from tests.sql.public_schema_attack import plant, planted_calls
from tests.support.ledger import get_wallet, new_wallet, rows, scalar

LEAD = timedelta(seconds=3)
SETTLE_SECONDS = 20


def test_a_wallet_worker_login_settles_while_objects_planted_in_public_never_run(
    db, database_url, logins, workers, deposit_at
):
    db.execute("GRANT CREATE ON SCHEMA public TO PUBLIC")
    with psycopg.connect(database_url, autocommit=True) as attacker:
        attacker.execute("SET ROLE wallet_app")
        plant(attacker, "procrastinate")
    # This session's own checks must not run planted code: pg_catalog and the queue only.
    db.execute("SET search_path = pg_catalog, procrastinate")
    wallet_id = new_wallet(db)
    deposit = deposit_at(wallet_id, 4_000, scalar(db, "SELECT now()") + LEAD)
    worker_url = with_database(logins["wallet_worker"], urlsplit(database_url).path.lstrip("/"))

    workers.start(DATABASE_URL=worker_url)
    job = workers.wait_until(
        lambda: one_job_if_finished(db, deposit["id"]),
        timeout=SETTLE_SECONDS,
        what="settlement job finished by the wallet_worker login",
    )

    assert planted_calls(db) == []
    assert job == {"status": "succeeded", "attempts": 1}
    assert (
        scalar(
            db,
            "SELECT count(*) FROM pg_stat_activity"
            " WHERE datname = current_database() AND usename = 'wallet_worker'",
        )
        > 0
    )
    wallet = get_wallet(db, wallet_id)
    assert (wallet["balance"], wallet["pending"]) == (4_000, 0)
    assert scalar(db, "SELECT count(*) FROM public.procrastinate_jobs") == 0
    assert rows(db, "SELECT * FROM wallet.verify_ledger()") == []


def one_job_if_finished(db: psycopg.Connection, deposit_id) -> dict | None:
    [job] = rows(
        db,
        "SELECT status::text, attempts FROM procrastinate.procrastinate_jobs WHERE queueing_lock = %s",
        f"settle-deposit:{deposit_id}",
    )
    return None if job["status"] in ("todo", "doing") else job
