"""A big, consistent ledger, made by the ledger's own functions, for benchmarks that read.

    from bench.ledger_seed import seed_ledger
    ledger = seed_ledger("postgresql://postgres@127.0.0.1:5432/some_fresh_migrated_db")
    print(ledger.hot_wallet_id, ledger.entries, ledger.seconds)

or `python -m bench.ledger_seed URL` (the database must be migrated and hold no wallet).

Every movement is a real wallet.deposit, wallet.withdraw, wallet.transfer or
wallet.cancel_deposit call, so wallet.verify_ledger() is empty on the result and the
hash chains are whole. The calls run inside PL/pgSQL loops, many thousand per
transaction, on several connections at once: session s owns the wallets numbered n with
(n - 1) modulo the number of sessions = s and moves money only among them, so sessions
never wait for each other's row locks (nor deadlock, holding thousands of them until
commit). Wallet 1 is the hot wallet: its session puts it on one side of a share of its
movements, so it ends with `hot_entries` entries or more.

The mix, per movement: 70% transfers, 15% deposits, 10% withdrawals (each with a fee, so
three entries), 2% deposits scheduled 30 days ahead (still scheduled at the end), 1.5%
cancellations of one of those, 1.5% deposits scheduled 2 s ahead and settled at the end
(by wallet.settle_due_deposits, as the worker's sweep does).
"""

from __future__ import annotations

import json
import math
import os
import sys
import threading
import time
from dataclasses import asdict, dataclass

import psycopg

# Entries per posted movement: the wallet leg(s), the world or the other wallet, revenue.
ENTRIES_PER_MOVEMENT = 3
POSTED_SHARE = 0.965  # movements that post (the rest schedule or cancel)
BATCH_MOVEMENTS = 10_000  # movements per database transaction
FUNDING = 10**12  # each wallet's first deposit: far more than it can spend here

SETUP_SQL = """
CREATE SCHEMA ledger_seed;
-- n = 1 is the hot wallet.
CREATE TABLE ledger_seed.wallets (n integer PRIMARY KEY, wallet_id uuid NOT NULL);

-- Fees on every kind, so every posted movement has a revenue leg (0.5% + 100, at least
-- 100, at most 50,000 on transfers and withdrawals; 0.1%, at least 1, on deposits).
SELECT wallet.set_commission_rule('seed', 'transfer', NULL, 50, 100, 100, 50000);
SELECT wallet.set_commission_rule('seed', 'withdrawal', NULL, 50, 100, 100, 50000);
SELECT wallet.set_commission_rule('seed', 'deposit', NULL, 10, 0, 1, 10000);

-- p_movements movements among p_wallets; when p_hot_wallet_id is given, it is one side of
-- a share p_hot_share of them. Seeded by p_seed, so a ledger can be made again alike.
CREATE FUNCTION ledger_seed.move(
    p_wallets       uuid[],
    p_hot_wallet_id uuid,
    p_hot_share     float8,
    p_movements     integer,
    p_seed          float8
) RETURNS void
LANGUAGE plpgsql
AS $$
DECLARE
    v_count     integer := array_length(p_wallets, 1);
    v_wallet_id uuid;
    v_other_id  uuid;
    v_roll      float8;
    v_amount    bigint;
    v_scheduled uuid[] := '{}';
    v_pick      integer;
BEGIN
    PERFORM setseed(p_seed);
    FOR i IN 1..p_movements LOOP
        IF p_hot_wallet_id IS NOT NULL AND random() < p_hot_share THEN
            v_wallet_id := p_hot_wallet_id;
        ELSE
            v_wallet_id := p_wallets[1 + floor(random() * v_count)::integer];
        END IF;
        v_amount := 1000 + floor(random() * 1000000)::bigint;
        v_roll := random();
        IF v_roll < 0.70 THEN
            LOOP
                v_other_id := p_wallets[1 + floor(random() * v_count)::integer];
                EXIT WHEN v_other_id <> v_wallet_id;
            END LOOP;
            IF random() < 0.5 THEN
                PERFORM wallet.transfer('seed', NULL, NULL, NULL, v_wallet_id, v_other_id, v_amount);
            ELSE
                PERFORM wallet.transfer('seed', NULL, NULL, NULL, v_other_id, v_wallet_id, v_amount);
            END IF;
        ELSIF v_roll < 0.85 THEN
            PERFORM wallet.deposit('seed', NULL, NULL, NULL, v_wallet_id, v_amount);
        ELSIF v_roll < 0.95 THEN
            PERFORM wallet.withdraw('seed', NULL, NULL, NULL, v_wallet_id, v_amount);
        ELSIF v_roll < 0.97 THEN
            v_scheduled := v_scheduled || (wallet.deposit('seed', NULL, NULL, NULL, v_wallet_id, v_amount,
                                                          NULL, NULL, now() + interval '30 days')).id;
        ELSIF v_roll < 0.985 THEN
            IF cardinality(v_scheduled) > 0 THEN
                v_pick := 1 + floor(random() * cardinality(v_scheduled))::integer;
                PERFORM wallet.cancel_deposit('seed', NULL, NULL, NULL, v_scheduled[v_pick]);
                v_scheduled := v_scheduled[:v_pick - 1] || v_scheduled[v_pick + 1:];
            END IF;
        ELSE
            PERFORM wallet.deposit('seed', NULL, NULL, NULL, v_wallet_id, v_amount, NULL, NULL,
                                   clock_timestamp() + interval '2 seconds');
        END IF;
    END LOOP;
END
$$;
"""


@dataclass(frozen=True)
class SeededLedger:
    hot_wallet_id: str
    wallets: int
    entries: int
    hot_wallet_entries: int
    hot_wallet_unposted: int  # scheduled, canceled or failed deposits in its history
    transactions: int
    sessions: int
    seconds: float  # the whole seeding, VACUUM (ANALYZE) included
    movements_per_second: float


def seed_ledger(
    url: str,
    *,
    wallets: int = 10_000,
    entries: int = 1_000_000,
    hot_entries: int = 32_000,
    sessions: int | None = None,
    seed: int = 1,
    log=print,
) -> SeededLedger:
    """Fill the migrated, empty database at url with at least `entries` entries.

    `wallets` wallets, the first of them hot with at least `hot_entries` entries of its
    own; `sessions` connections work at once (default: one per core, at least 2).
    Ends with VACUUM (ANALYZE) and a CHECKPOINT, so what is timed next starts settled.
    """
    sessions = sessions or max(2, os.cpu_count() or 2)
    if not 2 <= wallets <= 1_000_000 or sessions < 1 or wallets < 4 * sessions:
        raise ValueError(
            f"need 2..10^6 wallets, at least 4 per session (wallets={wallets}, sessions={sessions})"
        )
    if not 0 < hot_entries < entries <= 100_000_000:
        raise ValueError(f"need 0 < hot_entries < entries <= 10^8 ({hot_entries}, {entries})")
    started = time.monotonic()
    with psycopg.connect(url, autocommit=True) as connection:
        if connection.execute("SELECT count(*) FROM wallet.wallets").fetchone()[0]:
            raise ValueError("seed_ledger needs a database with no wallet yet")
        connection.execute(SETUP_SQL)
        connection.execute("SET synchronous_commit = off")  # a throwaway ledger
        with connection.transaction():
            connection.execute(
                """
                INSERT INTO ledger_seed.wallets (n, wallet_id)
                SELECT n, (wallet.open_wallet('seed', NULL, NULL, 'seed-owner-' || n)).id
                FROM generate_series(1, %s) AS n
                """,
                (wallets,),
            )
            connection.execute(
                "SELECT count(wallet.deposit('seed', NULL, NULL, NULL, wallet_id, %s))"
                " FROM ledger_seed.wallets",
                (FUNDING,),
            )
        hot_wallet_id = str(
            connection.execute("SELECT wallet_id FROM ledger_seed.wallets WHERE n = 1").fetchone()[0]
        )
    log(f"  seed: {wallets:,} wallets opened and funded in {time.monotonic() - started:.1f} s")

    movements = math.ceil((entries - ENTRIES_PER_MOVEMENT * wallets) / (ENTRIES_PER_MOVEMENT * POSTED_SHARE))
    movements = max(movements, 1)
    per_session = math.ceil(movements / sessions)
    # The hot wallet's session moves it in this share of its movements (5% spare).
    hot_share = min(1.0, 1.05 * hot_entries / (POSTED_SHARE * per_session))
    moving = time.monotonic()
    _run_sessions(url, sessions, per_session, hot_wallet_id, hot_share, seed, log)
    seconds_moving = time.monotonic() - moving
    log(f"  seed: {per_session * sessions:,} movements in {seconds_moving:.1f} s on {sessions} sessions")

    with psycopg.connect(url, autocommit=True) as connection:
        _settle_due_deposits(connection)
        _top_up(connection, entries, hot_wallet_id, hot_entries)
        connection.execute("VACUUM (ANALYZE)")
        connection.execute("CHECKPOINT")
        counts = connection.execute(
            """
            SELECT (SELECT count(*) FROM wallet.entries),
                   (SELECT count(*) FROM wallet.entries WHERE wallet_id = %(hot)s),
                   (SELECT count(*) FROM wallet.transactions
                    WHERE wallet_id = %(hot)s AND status <> 'posted'),
                   (SELECT count(*) FROM wallet.transactions)
            """,
            {"hot": hot_wallet_id},
        ).fetchone()
    ledger = SeededLedger(
        hot_wallet_id=hot_wallet_id,
        wallets=wallets,
        entries=counts[0],
        hot_wallet_entries=counts[1],
        hot_wallet_unposted=counts[2],
        transactions=counts[3],
        sessions=sessions,
        seconds=round(time.monotonic() - started, 1),
        movements_per_second=round(per_session * sessions / seconds_moving),
    )
    with psycopg.connect(url, autocommit=True) as connection:
        connection.execute("CREATE TABLE ledger_seed.summary (ledger jsonb NOT NULL)")
        connection.execute("INSERT INTO ledger_seed.summary VALUES (%s)", (json.dumps(asdict(ledger)),))
    log(
        f"  seed: {ledger.entries:,} entries, hot wallet {ledger.hot_wallet_entries:,} entries"
        f" + {ledger.hot_wallet_unposted:,} unposted deposits, {ledger.seconds:.0f} s in all"
    )
    return ledger


def seeded_ledger(url: str) -> SeededLedger | None:
    """What seed_ledger returned for the database at url, or None when it was not seeded
    (or not to the end)."""
    with psycopg.connect(url, autocommit=True) as connection:
        if connection.execute("SELECT to_regclass('ledger_seed.summary')").fetchone()[0] is None:
            return None
        return SeededLedger(**connection.execute("SELECT ledger FROM ledger_seed.summary").fetchone()[0])


def _run_sessions(
    url: str, sessions: int, per_session: int, hot_wallet_id: str, hot_share: float, seed: int, log
) -> None:
    """Each session moves money among its own wallets, in batches of one transaction each."""
    errors: list[BaseException] = []
    done = [0]
    lock = threading.Lock()
    batches = math.ceil(per_session / BATCH_MOVEMENTS)

    def work(session: int) -> None:
        try:
            with psycopg.connect(url, autocommit=True) as connection:
                connection.execute("SET synchronous_commit = off")
                wallets = connection.execute(
                    "SELECT array_agg(wallet_id ORDER BY n) FROM ledger_seed.wallets"
                    " WHERE (n - 1) %% %s = %s",
                    (sessions, session),
                ).fetchone()[0]
                hot = hot_wallet_id if session == 0 else None
                left = per_session
                for batch in range(batches):
                    if errors:
                        return
                    size = min(BATCH_MOVEMENTS, left)
                    left -= size
                    # Seeds in (-1, 1) as setseed wants, different per session and batch.
                    batch_seed = ((seed * 7919 + session * 104729 + batch) % 1_000_003) / 1_000_003
                    connection.execute(
                        "SELECT ledger_seed.move(%s, %s, %s, %s, %s)",
                        (wallets, hot, hot_share, size, batch_seed),
                    )
                    with lock:
                        done[0] += size
                        if session == 0 and batch % 5 == 4:
                            log(f"  seed: {done[0]:,} / {per_session * sessions:,} movements")
        except BaseException as error:  # reported by the caller's thread
            errors.append(error)

    threads = [threading.Thread(target=work, args=(session,)) for session in range(sessions)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]


def _settle_due_deposits(connection: psycopg.Connection) -> None:
    """Post the deposits scheduled 2 s ahead, once they are due, as the worker's sweep would."""
    due_in = connection.execute(
        "SELECT extract(epoch FROM max(available_at) - now()) FROM wallet.transactions"
        " WHERE status = 'scheduled' AND available_at < now() + interval '1 day'"
    ).fetchone()[0]
    if due_in is not None and due_in > 0:
        time.sleep(float(due_in) + 0.1)
    while connection.execute("SELECT wallet.settle_due_deposits(1000)").fetchone()[0]:
        pass


def _top_up(connection: psycopg.Connection, entries: int, hot_wallet_id: str, hot_entries: int) -> None:
    """The mix is random: a few more movements when the ledger or the hot wallet fell short."""
    others = "(SELECT array_agg(wallet_id) FROM ledger_seed.wallets WHERE n > 1)"
    while True:
        count, hot_count = connection.execute(
            "SELECT count(*), count(*) FILTER (WHERE wallet_id = %s) FROM wallet.entries", (hot_wallet_id,)
        ).fetchone()
        if count >= entries and hot_count >= hot_entries:
            return
        if hot_count < hot_entries:  # every one of these moves the hot wallet
            missing, hot, share = hot_entries - hot_count, hot_wallet_id, 1.0
        else:
            missing, hot, share = math.ceil((entries - count) / ENTRIES_PER_MOVEMENT), None, 0.0
        connection.execute(
            f"SELECT ledger_seed.move({others}, %s, %s, %s, %s)",
            (hot, share, math.ceil(missing / POSTED_SHARE) + 10, count % 1000 / 1000),
        )


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(
            "usage: python -m bench.ledger_seed POSTGRESQL_URL (a migrated database with no wallet)",
            file=sys.stderr,
        )
        return 2
    seed_ledger(argv[0])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
