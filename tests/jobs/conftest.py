"""What the job tests share. Their workers (`workers`) and `wallet serve` (`fresh_api`,
`http`) come from tests/conftest.py, the processes from tests/support/processes.py."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import psycopg
import pytest

from tests.support import ledger

DepositAt = Callable[..., dict[str, Any]]


@pytest.fixture
def deposit_at(db: psycopg.Connection) -> DepositAt:
    """deposit_at(wallet_id, amount, available_at, *, acting=None, caller="svc", key=None,
    reference=None): wallet.deposit with p_available_at, as the API calls it; returns the
    transaction row."""

    def call(wallet_id: Any, amount: int, available_at: Any, **options: Any) -> dict[str, Any]:
        return ledger.deposit_at(db, wallet_id, amount, available_at, **options)

    return call
