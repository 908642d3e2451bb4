"""wallet.wallet_history reads index ranges only (issue 9, item 7), and pages as it always did.

The reference is the function as it was before (copied below as wallet.reference_history):
it filtered the wallet's entries row by row, which read every entry of the wallet for a kind
it rarely had, and every newer entry for a time bound far in the past. Every page of the
new function, for every filter, limit and cursor, must be that function's page exactly.
Reads are counted in buffers (EXPLAIN ANALYZE, BUFFERS), never timed.

wallet.wallet_history_v2 is the implementation (the same items, each with hold_id, which
tests/sql/test_holds.py checks on captures) and wallet.wallet_history its page less hold_id,
for the previous release: both are held to the reference and to the bound on buffers.
"""

from __future__ import annotations

import datetime
import itertools
import random
import re
import uuid
from typing import Any

import psycopg

from tests.support.ledger import (
    change_status,
    deposit,
    funded_wallet,
    history,
    new_wallet,
    one,
    rows,
    scalar,
    set_rule,
    transfer,
    wait_until_due,
    withdraw,
)

# The function as it was before it read per-kind index ranges: the behaviour to keep.
REFERENCE_HISTORY = """
CREATE FUNCTION wallet.reference_history(
    p_acting_owner_id text, p_wallet_id uuid, p_limit integer, p_before_seq bigint,
    p_kind text, p_since timestamptz, p_until timestamptz
) RETURNS SETOF record
LANGUAGE plpgsql STABLE
AS $$
DECLARE
    v_before bigint      := coalesce(p_before_seq, 9223372036854775807);
    v_since  timestamptz := coalesce(p_since, '-infinity');
    v_until  timestamptz := coalesce(p_until, 'infinity');
BEGIN
    PERFORM wallet.find_wallet(p_acting_owner_id, p_wallet_id);
    RETURN QUERY
        SELECT item.*
        FROM (
            (SELECT e.id, e.transaction_id, t.kind::text, t.status::text, e.net_amount,
                    CASE WHEN e.wallet_id = t.to_wallet_id THEN 0 ELSE t.fee END::bigint,
                    e.balance_after, e.created_at, t.reference::text
             FROM wallet.entries AS e
             JOIN wallet.transactions AS t ON t.id = e.transaction_id
             WHERE e.wallet_id = p_wallet_id
               AND e.id < v_before
               AND e.created_at >= v_since AND e.created_at < v_until
               AND (p_kind IS NULL OR t.kind = p_kind)
             ORDER BY e.id DESC
             LIMIT p_limit)
            UNION ALL
            (SELECT t.history_seq, t.id, t.kind::text, t.status::text, (t.amount - t.fee)::bigint,
                    t.fee::bigint, NULL::bigint, t.created_at, t.reference::text
             FROM wallet.transactions AS t
             WHERE t.wallet_id = p_wallet_id
               AND t.status <> 'posted'
               AND t.history_seq < v_before
               AND t.created_at >= v_since AND t.created_at < v_until
               AND (p_kind IS NULL OR t.kind = p_kind)
             ORDER BY t.history_seq DESC
             LIMIT p_limit)
        ) AS item (seq, transaction_id, kind, status, amount, fee, balance_after, created_at, reference)
        ORDER BY item.seq DESC
        LIMIT p_limit;
END
$$;
"""
COLUMNS = "seq bigint, transaction_id uuid, kind text, status text, amount bigint, fee bigint,"
COLUMNS += " balance_after bigint, created_at timestamptz, reference text"
KINDS = ("deposit", "withdrawal", "transfer")
MICROSECOND = datetime.timedelta(microseconds=1)
LEAD_SECONDS = 1.2  # the nearest a deposit may be scheduled (see test_settlement.py)


def reference_history(db, wallet_id, *, limit=50, before_seq=None, kind=None, since=None, until=None):
    return rows(
        db,
        f"SELECT * FROM wallet.reference_history(NULL, %s::uuid, %s::integer, %s::bigint, %s::text,"
        f" %s::timestamptz, %s::timestamptz) AS item ({COLUMNS})",
        wallet_id,
        limit,
        before_seq,
        kind,
        since,
        until,
    )


def history_v2(
    db: psycopg.Connection,
    wallet_id,
    *,
    acting=None,
    limit=50,
    before_seq=None,
    kind=None,
    since=None,
    until=None,
) -> list[dict[str, Any]]:
    return rows(
        db,
        "SELECT * FROM wallet.wallet_history_v2(%s::text, %s::uuid, %s::integer, %s::bigint, %s::text,"
        " %s::timestamptz, %s::timestamptz)",
        acting,
        wallet_id,
        limit,
        before_seq,
        kind,
        since,
        until,
    )


def without_hold_id(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{name: value for name, value in item.items() if name != "hold_id"} for item in items]


def schedule(db: psycopg.Connection, wallet_id: uuid.UUID, amount: int, seconds_ahead: float) -> uuid.UUID:
    scheduled = one(
        db,
        "SELECT * FROM wallet.deposit('svc', NULL, NULL, NULL, %s::uuid, %s::bigint, NULL, NULL,"
        " now() + make_interval(secs => %s))",
        wallet_id,
        amount,
        seconds_ahead,
    )
    assert scheduled["status"] == "scheduled", scheduled
    return scheduled["id"]


def cancel(db: psycopg.Connection, deposit_id: uuid.UUID) -> None:
    one(db, "SELECT * FROM wallet.cancel_deposit('svc', NULL, NULL, NULL, %s::uuid)", deposit_id)


def settle(db: psycopg.Connection, deposit_id: uuid.UUID, *, last_attempt: bool = False) -> str:
    return scalar(db, "SELECT wallet.settle_deposit(%s, %s, 0)", deposit_id, last_attempt)


def buffers_read(db: psycopg.Connection, function: str, wallet_id, **filters: Any) -> int:
    """Buffers (hit or read) that one call of the function touches, its inner queries included.

    The Function Scan's counters cover everything the function runs. The call is made
    first a few times, so that plans are cached (as they are in the API's pooled
    sessions, generic ones included) and catalog reads are not counted.
    """
    call = (
        f"SELECT * FROM wallet.{function}(NULL, %s::uuid, %s::integer, %s::bigint, %s::text,"
        " %s::timestamptz, %s::timestamptz)"
    )
    if function == "reference_history":
        call += f" AS item ({COLUMNS})"
    arguments = (
        wallet_id,
        filters.get("limit", PAGE),
        filters.get("before_seq"),
        filters.get("kind"),
        filters.get("since"),
        filters.get("until"),
    )
    for _ in range(7):
        db.execute(call, arguments).fetchall()
    plan = scalar(db, "EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) " + call, *arguments)[0]["Plan"]
    return plan["Shared Hit Blocks"] + plan["Shared Read Blocks"]


# --- the same pages as before ---------------------------------------------------------------


def _busy_wallet(db: psycopg.Connection) -> uuid.UUID:
    """A wallet whose history interleaves every kind with deposits scheduled, canceled, failed
    and settled late, between entries of other wallets; fees on every kind, so the payer's
    fee differs from the payee's."""
    rng = random.Random(9)
    set_rule(db, "deposit", fixed=3)
    set_rule(db, "withdrawal", rate_bps=100, fixed=5)
    set_rule(db, "transfer", fixed=7)
    wallet_id = funded_wallet(db, 10**9, owner="me")
    others = [funded_wallet(db, 10**9, owner=f"other-{n}") for n in range(3)]
    settling = [schedule(db, wallet_id, 1000 + n, LEAD_SECONDS) for n in range(3)]
    failing = schedule(db, wallet_id, 999, LEAD_SECONDS)
    far: list[uuid.UUID] = []

    def movements(count: int) -> None:
        for _ in range(count):
            amount = rng.randint(100, 10_000)
            other = rng.choice(others)
            action = rng.choice(["deposit", "withdraw", "send", "receive", "elsewhere", "schedule", "cancel"])
            if action == "deposit":
                deposit(db, wallet_id, amount, reference=f"d-{amount}")
            elif action == "withdraw":
                withdraw(db, wallet_id, amount)
            elif action == "send":
                transfer(db, wallet_id, other, amount)
            elif action == "receive":
                transfer(db, other, wallet_id, amount)
            elif action == "elsewhere":
                transfer(db, other, rng.choice([o for o in others if o != other]), amount)
                deposit(db, other, amount)
            elif action == "schedule":
                far.append(schedule(db, wallet_id, amount, 86_400))
            elif far:
                cancel(db, far.pop(rng.randrange(len(far))))

    movements(45)
    wait_until_due(db, *settling)
    for deposit_id in settling[:2]:
        assert settle(db, deposit_id) == "posted"
    movements(30)
    assert settle(db, settling[2]) == "posted"  # late: other items came after it was due
    change_status(db, "freeze", wallet_id)
    assert settle(db, failing, last_attempt=True) == "failed"
    change_status(db, "unfreeze", wallet_id)
    movements(30)
    return wallet_id


def _filters(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every kind alone and with time bounds on items' own times (so inclusive and exclusive
    edges both matter), just beside them, and far outside the history."""
    times = sorted({item["created_at"] for item in items})
    picks = [times[len(times) // 5], times[len(times) // 2], times[-3]]
    bounds: list[dict[str, Any]] = [{}]
    for at in picks:
        bounds += [{"since": at}, {"until": at}, {"since": at + MICROSECOND}, {"until": at + MICROSECOND}]
    for low, high in itertools.combinations(picks, 2):
        bounds.append({"since": low, "until": high})
    unposted_at = sorted(item["created_at"] for item in items if item["status"] != "posted")
    bounds += [
        {"since": unposted_at[0], "until": unposted_at[-1]},
        {"until": unposted_at[len(unposted_at) // 2]},
    ]
    far_past, far_future = times[0] - datetime.timedelta(days=400), times[-1] + datetime.timedelta(days=400)
    bounds += [{"until": far_past}, {"since": far_future}, {"since": far_past, "until": far_future}]
    return [{**bound, "kind": kind} for bound in bounds for kind in (None, *KINDS)]


def test_every_page_of_every_filter_is_the_reference_page(db):
    db.execute(REFERENCE_HISTORY)
    wallet_id = _busy_wallet(db)
    items = reference_history(db, wallet_id, limit=1000)
    statuses = {item["status"] for item in items}
    assert statuses == {"posted", "scheduled", "canceled", "failed"}, statuses
    assert {item["kind"] for item in items} == set(KINDS)
    # What the index ranges rely on (sql/posting.sql): within a wallet, time follows id.
    assert not rows(
        db,
        "SELECT * FROM (SELECT id, created_at < lag(created_at) OVER (PARTITION BY wallet_id ORDER BY id)"
        " AS earlier FROM wallet.entries WHERE wallet_id IS NOT NULL) AS e WHERE earlier",
    )

    pages = 0
    for filters, limit in itertools.product(_filters(items), (1, 4, 50)):
        before = None
        while True:
            page = history(db, wallet_id, limit=limit, before_seq=before, **filters)
            expected = reference_history(db, wallet_id, limit=limit, before_seq=before, **filters)
            assert page == expected, (filters, limit, before)
            page_v2 = history_v2(db, wallet_id, limit=limit, before_seq=before, **filters)
            assert without_hold_id(page_v2) == expected, (filters, limit, before)
            assert {item["hold_id"] for item in page_v2} <= {None}, "no holds here"
            pages += 1
            if len(page) < limit:
                break
            before = page[-1]["seq"]
    assert pages > 2000


def test_a_cursor_that_is_no_item_of_the_page_gives_the_reference_page(db):
    # Cursors a client may hold: an unposted deposit's seq, the seq a deposit had before it
    # was posted or canceled, another wallet's entry, a system leg, a seq past the end.
    db.execute(REFERENCE_HISTORY)
    wallet_id = _busy_wallet(db)
    newest = scalar(db, "SELECT max(id) FROM wallet.entries")
    seqs = [*range(0, newest + 3), 2**63 - 1]
    assert scalar(db, "SELECT count(*) FROM wallet.entries WHERE wallet_id <> %s", wallet_id) > 50

    for before, kind, limit in itertools.product(seqs, (None, "deposit", "transfer"), (1, 5)):
        page = history(db, wallet_id, limit=limit, before_seq=before, kind=kind)
        assert page == reference_history(db, wallet_id, limit=limit, before_seq=before, kind=kind), (
            before,
            kind,
            limit,
        )


def test_a_wallet_stamped_ahead_of_other_wallets_pages_as_before(db):
    # An entry's time is the later of its wallet's last time and the clock, so after the
    # clock steps back a wallet's entries are stamped later than other wallets' entries drawn
    # after them (the same happens, by microseconds, to movements that commit concurrently).
    # A cursor that is no entry of the wallet takes its first time from the entry drawn just
    # before it, in another wallet: that time must be moved past this wallet's later stamps,
    # and a time too late must cost rows read, never rows lost.
    db.execute(REFERENCE_HISTORY)
    mine, other = funded_wallet(db, 10**6, owner="me"), funded_wallet(db, 10**6, owner="other")

    def stamp_ahead(wallet_id, hours: int) -> None:
        db.execute(
            "UPDATE wallet.wallets SET updated_at = now() + make_interval(hours => %s) WHERE id = %s",
            (hours, wallet_id),
        )

    stamp_ahead(mine, 1)
    for amount in range(1, 4):
        deposit(db, mine, amount)
        deposit(db, other, amount)
        withdraw(db, mine, amount)
    schedule(db, mine, 100, 86_400)
    stamp_ahead(other, 2)
    for amount in range(4, 7):
        transfer(db, other, mine, amount)
        deposit(db, other, amount)
        schedule(db, mine, 100 + amount, 86_400)
        deposit(db, mine, amount)
    newest = scalar(db, "SELECT max(id) FROM wallet.entries")

    kinds = (None, "deposit", "withdrawal")
    for before, kind, limit in itertools.product(range(newest + 2), kinds, (1, 2, 50)):
        for wallet_id in (mine, other):
            page = history(db, wallet_id, limit=limit, before_seq=before, kind=kind)
            expected = reference_history(db, wallet_id, limit=limit, before_seq=before, kind=kind)
            assert page == expected, (wallet_id == mine, before, kind, limit)


def test_history_reads_every_kind_that_a_transaction_may_have(db):
    # The unfiltered page merges one index range per kind of wallet.transaction_kinds():
    # a kind missing there would vanish from it.
    domain_check = scalar(
        db,
        "SELECT pg_get_constraintdef(oid) FROM pg_constraint"
        " WHERE contypid = 'wallet.transaction_kind'::regtype",
    )
    allowed = set(re.findall(r"'([^']+)'::text", domain_check))

    assert allowed == set(scalar(db, "SELECT wallet.transaction_kinds()")) == set(KINDS)


# --- bounded reads ---------------------------------------------------------------------------

PAGE = 10
# A page of 10 reads at most 10 index rows per kind, their entries and transactions, and
# the cursor's entry: a few dozen buffers. The wallet below has thousands of entries.
PAGE_BUFFERS = 100


def _wallet_of_transfers(db: psycopg.Connection, transfers: int, withdrawals: int, canceled: int):
    """A wallet with many transfers, a few withdrawals (the oldest of its history) and many
    canceled deposits; returns it and the time just after its withdrawals."""
    set_rule(db, "transfer", fixed=7)
    wallet_id = funded_wallet(db, 10**12)
    other = new_wallet(db, "other")
    for _ in range(withdrawals):
        withdraw(db, wallet_id, 10)
    after_withdrawals = scalar(db, "SELECT clock_timestamp()")
    db.execute(
        "SELECT count(wallet.transfer('svc', NULL, NULL, NULL, %s, %s, 100 + n))"
        " FROM generate_series(1, %s) AS n",
        (wallet_id, other, transfers),
    )
    db.execute(
        "SELECT count(wallet.cancel_deposit('svc', NULL, NULL, NULL,"
        " (wallet.deposit('svc', NULL, NULL, NULL, %s, 1000, NULL, NULL, now() + interval '1 day')).id))"
        " FROM generate_series(1, %s)",
        (wallet_id, canceled),
    )
    db.execute("VACUUM (ANALYZE) wallet.entries, wallet.transactions")
    return wallet_id, after_withdrawals


def test_a_page_reads_a_bounded_number_of_buffers_whatever_the_filter_and_cursor(db):
    db.execute(REFERENCE_HISTORY)
    wallet_id, after_withdrawals = _wallet_of_transfers(db, transfers=4000, withdrawals=5, canceled=1000)
    items = reference_history(db, wallet_id, limit=1000, until=after_withdrawals)
    assert [item["kind"] for item in items] == ["withdrawal"] * 5 + ["deposit"]
    deep_entry = items[2]["seq"]
    deep_canceled = scalar(
        db,
        "SELECT min(history_seq) FROM wallet.transactions WHERE wallet_id = %s AND status = 'canceled'",
        wallet_id,
    )
    cases = {
        "kind=withdrawal, first page": {"kind": "withdrawal"},
        "kind=withdrawal, deep cursor": {"kind": "withdrawal", "before_seq": deep_entry},
        "until far in the past": {"until": after_withdrawals},
        "until far in the past, kind=transfer": {"until": after_withdrawals, "kind": "transfer"},
        "since far in the future": {"since": after_withdrawals + datetime.timedelta(days=1)},
        "deep cursor on an entry": {"before_seq": deep_entry},
        "deep cursor on an unposted deposit": {"before_seq": deep_canceled},
        "deep cursor on an unposted deposit, kind=transfer": {
            "before_seq": deep_canceled,
            "kind": "transfer",
        },
        "no filter, first page": {},
        "kind=transfer, first page": {"kind": "transfer"},
    }

    for name, filters in cases.items():
        expected = reference_history(db, wallet_id, **filters)
        assert history(db, wallet_id, **filters) == expected, name
        assert without_hold_id(history_v2(db, wallet_id, **filters)) == expected, name
        direct = buffers_read(db, "wallet_history_v2", wallet_id, **filters)
        wrapped = buffers_read(db, "wallet_history", wallet_id, **filters)
        assert direct <= PAGE_BUFFERS, f"wallet_history_v2, {name}: {direct} buffers"
        assert wrapped <= PAGE_BUFFERS, f"wallet_history, {name}: {wrapped} buffers"
        # wallet_history reads its page from wallet_history_v2: its count includes v2's reads
        # (the same number, in every case so far), so the bound above is no empty one.
        assert wrapped >= direct, f"wallet_history, {name}: {wrapped} buffers, v2 {direct}"
    # The wallet is big enough for the bound to mean something: the old function passes it
    # (on today's schema; on the one before migration 0006 it read every entry's row).
    for name in ("kind=withdrawal, first page", "until far in the past", "since far in the future"):
        assert buffers_read(db, "reference_history", wallet_id, **cases[name]) > 2 * PAGE_BUFFERS, name
