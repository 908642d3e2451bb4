"""The money model the tests hold the ledger to, in plain Python written for the tests:
SPEC 5's fee formula, and the balances a set of acknowledged transactions implies."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any


def reference_fee(amount: int, rate_bps: int, fixed: int, min_fee: int, max_fee: int | None) -> int:
    """SPEC 5: clamp(fixed + round_half_up(amount * rate_bps / 10000), min_fee, max_fee)."""
    proportional = (amount * rate_bps + 5000) // 10000  # half up, for non-negative values
    fee = max(fixed + proportional, min_fee)
    return fee if max_fee is None else min(fee, max_fee)


def expected_balances(wallet_ids: Iterable[str], transactions: Iterable[Mapping[str, Any]]) -> dict[str, int]:
    """Each wallet's balance after these posted transactions (JSON bodies), from zero."""
    balances = dict.fromkeys(wallet_ids, 0)
    for transaction in transactions:
        amount, fee = transaction["amount"], transaction["fee"]
        if transaction["kind"] == "deposit":
            balances[transaction["wallet_id"]] += amount - fee
        elif transaction["kind"] == "withdrawal":
            balances[transaction["wallet_id"]] -= amount + fee
        else:
            balances[transaction["from_wallet_id"]] -= amount + fee
            balances[transaction["to_wallet_id"]] += amount
    return balances
