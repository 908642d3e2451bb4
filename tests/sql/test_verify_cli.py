"""`wallet verify` (issue 9, items 4 and 5): in full, since a checkpoint, against a kept digest,
with a checkpoint recorded on success, and within a time limit."""

from __future__ import annotations

import re
import threading

import psycopg
import pytest

from cli.main import EXIT_VERIFY_TIMED_OUT, main
from tests.support.ledger import deposit, funded_wallet, new_wallet, transfer

DIGEST = re.compile(r"^checkpoint: (v1:\d+:[0-9a-f]{64})$", re.MULTILINE)


@pytest.fixture
def verify(database_url, monkeypatch, capsys):
    monkeypatch.setenv("DATABASE_URL", database_url)

    def run(*arguments: str) -> tuple[int, str, str]:
        code = main(["verify", *arguments])
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return run


def test_verify_checkpoint_prints_a_digest_that_a_later_verify_accepts(db, verify):
    wallet_id = funded_wallet(db, 10_000)
    code, out, _ = verify("--checkpoint")
    (digest,) = DIGEST.findall(out)
    transfer(db, wallet_id, new_wallet(db, "other"), 2_500)

    assert code == 0
    assert verify("--against", digest)[0] == 0
    assert verify("--since", "2999-01-01T00:00:00Z", "--against", digest)[0] == 0


def test_verify_against_a_digest_names_a_rollback_to_before_it(db, verify):
    wallet_id = funded_wallet(db, 10_000)
    (digest,) = DIGEST.findall(verify("--checkpoint")[1])
    db.execute("SET session_replication_role = replica")
    db.execute(
        "TRUNCATE wallet.entries, wallet.status_changes, wallet.transactions, wallet.holds, wallet.wallets,"
        " wallet.checkpoint_heads, wallet.checkpoints"
    )

    code, out, err = verify("--against", digest)

    assert code == 1
    assert "checkpoint_missing" in out
    assert "NOT consistent" in err
    assert wallet_id  # the wallet it had is gone with the rest


def test_a_violation_prints_its_check_and_records_no_checkpoint(db, verify):
    wallet_id = funded_wallet(db, 10_000)
    db.execute("UPDATE wallet.wallets SET balance = balance + 1 WHERE id = %s", (wallet_id,))

    code, out, _ = verify("--checkpoint")

    assert code == 1
    assert "balance_differs_from_entries" in out
    assert DIGEST.findall(out) == []
    assert db.execute("SELECT count(*) FROM wallet.checkpoints").fetchone()[0] == 0


def test_verify_since_needs_a_checkpoint_and_an_offset(db, verify):
    deposit(db, new_wallet(db), 100)

    code, _, err = verify("--since", "2999-01-01T00:00:00Z")
    assert (code, "no checkpoint" in err) == (2, True)
    with pytest.raises(SystemExit) as usage:
        verify("--since", "2999-01-01T00:00:00")
    assert usage.value.code == 2


def test_verify_stops_at_its_timeout_with_its_own_exit_code(database_url, db, verify):
    funded_wallet(db, 100)
    with psycopg.connect(database_url) as blocker:
        blocker.execute("LOCK TABLE wallet.entries IN ACCESS EXCLUSIVE MODE")
        outcome: list = []
        thread = threading.Thread(target=lambda: outcome.append(verify("--timeout", "1")))
        thread.start()
        thread.join(30)
        blocker.rollback()

    code, _, err = outcome[0]
    assert code == EXIT_VERIFY_TIMED_OUT
    assert "--timeout 1" in err
