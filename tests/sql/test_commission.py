"""Commission: the fee formula against a reference, and the rules that feed it (SPEC 5)."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support.ledger import (
    MAX_AMOUNT,
    deposit,
    funded_wallet,
    get_transaction,
    ledger_state,
    new_wallet,
    raises_sqlstate,
    rows,
    scalar,
    set_rule,
    transfer,
    withdraw,
)
from tests.support.money import reference_fee

# --- the formula --------------------------------------------------------------------------


def sql_fees(db, cases) -> list[int | None]:
    """wallet.commission_fee for every case, in one round trip."""
    columns = list(zip(*cases, strict=True))
    return [
        row[0]
        for row in db.execute(
            "SELECT wallet.commission_fee(amount, rate_bps, fixed, min_fee, max_fee)"
            " FROM unnest(%s::bigint[], %s::integer[], %s::bigint[], %s::bigint[], %s::bigint[])"
            "      WITH ORDINALITY AS c (amount, rate_bps, fixed, min_fee, max_fee, n)"
            " ORDER BY n",
            [list(column) for column in columns],
        ).fetchall()
    ]


def small_or_any(limit: int) -> st.SearchStrategy[int]:
    # Small values exercise rounding and clamps; any value up to the bound finds overflow.
    return st.one_of(st.integers(0, 20_000), st.integers(0, limit))


@st.composite
def fee_cases(draw, capped: bool):
    amount = draw(st.one_of(st.integers(1, 20_000), st.integers(1, MAX_AMOUNT)))
    rate_bps = draw(st.one_of(st.sampled_from([0, 1, 50, 5000, 9999, 10_000]), st.integers(0, 10_000)))
    fixed = draw(st.one_of(st.just(0), small_or_any(MAX_AMOUNT)))
    min_fee = draw(st.one_of(st.just(0), small_or_any(MAX_AMOUNT)))
    max_fee = draw(st.integers(min_fee, MAX_AMOUNT)) if capped else None
    return amount, rate_bps, fixed, min_fee, max_fee


# commission_fee is pure, so sharing the test's connection across examples is safe.
# Each example is a batch of cases computed in one query, to keep the file fast.
property_settings = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)


@property_settings
@given(cases=st.lists(fee_cases(capped=True), min_size=1, max_size=50))
def test_commission_fee_with_a_cap_matches_the_reference(db, cases):
    expected = [reference_fee(*case) for case in cases]

    assert sql_fees(db, cases) == expected


@property_settings
@given(cases=st.lists(fee_cases(capped=False), min_size=1, max_size=50))
def test_commission_fee_without_a_cap_matches_the_reference(db, cases):
    # SPEC 5: max_fee null means no cap.
    expected = [reference_fee(*case) for case in cases]

    assert sql_fees(db, cases) == expected


def test_commission_fee_at_its_edges(db):
    cases = {
        # amount, rate_bps, fixed, min_fee, max_fee -> fee
        "0.5 rounds up": ((50, 100, 0, 0, 100), 1),
        "0.49 rounds down": ((49, 100, 0, 0, 100), 0),
        "1.5 rounds up": ((150, 100, 0, 0, 100), 2),
        "2.5 rounds up, not to even": ((250, 100, 0, 0, 100), 3),
        "0.9999 rounds up": ((9999, 1, 0, 0, 100), 1),
        "fixed is added before clamping": ((10_000, 100, 5, 0, 1000), 105),
        "clamped up to min_fee": ((1000, 10, 0, 50, 100), 50),
        "clamped down to max_fee": ((1_000_000, 100, 0, 0, 500), 500),
        "min_fee equals max_fee": ((1_000_000, 100, 0, 7, 7), 7),
        "zero rate, fixed only": ((123_456, 0, 9, 0, 100), 9),
        "largest amount at 100%": ((MAX_AMOUNT, 10_000, 0, 0, MAX_AMOUNT), MAX_AMOUNT),
        "largest amount, rate and fixed, capped": (
            (MAX_AMOUNT, 10_000, MAX_AMOUNT, 0, MAX_AMOUNT),
            MAX_AMOUNT,
        ),
        "largest amount, rate and fixed, under a higher cap": (
            (MAX_AMOUNT, 10_000, MAX_AMOUNT, 0, 3 * MAX_AMOUNT),
            2 * MAX_AMOUNT,
        ),
        "largest amount, odd rate": ((MAX_AMOUNT - 1, 9999, 0, 0, MAX_AMOUNT), 999_899_999_999_999),
    }
    actual = sql_fees(db, [arguments for arguments, _ in cases.values()])

    for (case, (arguments, fee)), got in zip(cases.items(), actual, strict=True):
        assert fee == reference_fee(*arguments), f"the reference disagrees on {case}"
        assert got == fee, case


def test_commission_fee_without_max_fee_has_no_cap(db):
    # SPEC 5: "max_fee null means no cap".
    cases = [
        (1000, 100, 0, 0, None),  # 10
        (MAX_AMOUNT, 10_000, MAX_AMOUNT, 0, None),  # 2 * 10^15, no bigint overflow
        (1, 0, 0, 5, None),  # min_fee alone
    ]

    assert sql_fees(db, cases) == [10, 2 * MAX_AMOUNT, 5]


# --- rules --------------------------------------------------------------------------------


def compute_fee(db, operation: str, owner: str | None, amount: int) -> int:
    return scalar(db, "SELECT wallet.compute_fee(%s::text, %s::text, %s::bigint)", operation, owner, amount)


def test_no_rule_means_no_fee(db):
    wallet_id = funded_wallet(db, 1000)
    other = new_wallet(db, "other")

    for operation in ("deposit", "withdrawal", "transfer"):
        assert compute_fee(db, operation, "merchant-1", 1000) == 0, operation
    assert deposit(db, wallet_id, 1000)["fee"] == 0
    assert withdraw(db, wallet_id, 1000)["fee"] == 0
    assert transfer(db, wallet_id, other, 1000)["fee"] == 0


def test_the_default_rule_applies_to_every_owner(db):
    rule = set_rule(db, "deposit", rate_bps=100, fixed=2, min_fee=3, max_fee=1000)

    assert (rule["operation"], rule["owner_id"], rule["rate_bps"]) == ("deposit", None, 100)
    assert (rule["fixed"], rule["min_fee"], rule["max_fee"]) == (2, 3, 1000)
    assert rule["created_by"] == "svc"
    assert compute_fee(db, "deposit", "anyone", 1000) == 12
    assert compute_fee(db, "deposit", "someone-else", 100) == 3
    assert compute_fee(db, "deposit", "anyone", 10**9) == 1000
    assert deposit(db, new_wallet(db, "anyone"), 1000)["fee"] == 12


def test_rules_are_per_operation(db):
    set_rule(db, "deposit", fixed=11)
    set_rule(db, "withdrawal", fixed=22)

    assert compute_fee(db, "deposit", "m", 1000) == 11
    assert compute_fee(db, "withdrawal", "m", 1000) == 22
    assert compute_fee(db, "transfer", "m", 1000) == 0


def test_an_owner_rule_beats_the_default_for_that_owner_only(db):
    set_rule(db, "withdrawal", fixed=10)
    set_rule(db, "withdrawal", fixed=1, owner="vip")
    vip = funded_wallet(db, 1000, owner="vip")
    regular = funded_wallet(db, 1000, owner="regular")

    assert withdraw(db, vip, 100)["fee"] == 1
    assert withdraw(db, regular, 100)["fee"] == 10
    assert compute_fee(db, "withdrawal", "vip", 100) == 1
    assert compute_fee(db, "withdrawal", None, 100) == 10


def test_an_owner_rule_applies_without_any_default(db):
    set_rule(db, "deposit", fixed=4, owner="vip")

    assert deposit(db, new_wallet(db, "vip"), 100)["fee"] == 4
    assert deposit(db, new_wallet(db, "regular"), 100)["fee"] == 0


def test_a_transfer_fee_follows_the_senders_owner(db):
    set_rule(db, "transfer", fixed=10)
    set_rule(db, "transfer", fixed=1, owner="vip")
    vip = funded_wallet(db, 1000, owner="vip")
    regular = funded_wallet(db, 1000, owner="regular")

    assert transfer(db, vip, regular, 100)["fee"] == 1
    assert transfer(db, regular, vip, 100)["fee"] == 10


def test_setting_the_rule_in_force_again_adds_no_row(db):
    first = set_rule(db, "transfer", rate_bps=30, fixed=1, min_fee=2, max_fee=90)
    set_rule(db, "transfer", rate_bps=30, fixed=1, min_fee=2, max_fee=90, owner="vip")

    again = set_rule(db, "transfer", rate_bps=30, fixed=1, min_fee=2, max_fee=90)

    assert again == first
    assert scalar(db, "SELECT count(*) FROM wallet.commission_rules") == 2


def test_rule_history_is_kept_and_the_newest_rule_is_in_force(db):
    first = set_rule(db, "deposit", fixed=1)
    second = set_rule(db, "deposit", fixed=2)
    back_to_first = set_rule(db, "deposit", fixed=1)  # not the rule in force, so a new row
    owner_rule = set_rule(db, "deposit", fixed=9, owner="vip")
    withdrawal = set_rule(db, "withdrawal", fixed=5)

    in_force = rows(db, "SELECT * FROM wallet.commission_rules_in_force()")
    assert {(r["operation"], r["owner_id"]): r["id"] for r in in_force} == {
        ("deposit", None): back_to_first["id"],
        ("deposit", "vip"): owner_rule["id"],
        ("withdrawal", None): withdrawal["id"],
    }
    ids = [row["id"] for row in rows(db, "SELECT * FROM wallet.commission_rule_history('deposit')")]
    assert ids == [owner_rule["id"], back_to_first["id"], second["id"], first["id"]]
    everything = rows(db, "SELECT * FROM wallet.commission_rule_history()")
    assert len(everything) == 5
    vip_only = rows(db, "SELECT * FROM wallet.commission_rule_history(NULL, 'vip')")
    assert [row["id"] for row in vip_only] == [owner_rule["id"]]
    assert compute_fee(db, "deposit", "m", 100) == 1


def test_a_new_rule_applies_only_to_operations_after_it(db):
    wallet_id = new_wallet(db)
    before_rule = deposit(db, wallet_id, 1000)

    set_rule(db, "deposit", fixed=30)
    after_rule = deposit(db, wallet_id, 1000)
    set_rule(db, "deposit", fixed=40)
    latest = deposit(db, wallet_id, 1000)

    assert (before_rule["fee"], after_rule["fee"], latest["fee"]) == (0, 30, 40)
    assert get_transaction(db, before_rule["id"])["fee"] == 0
    assert get_transaction(db, after_rule["id"])["fee"] == 30


def test_a_rule_without_max_fee_charges_the_uncapped_fee(db):
    # SPEC 5 and the API body {rate_bps, fixed, min_fee, max_fee}: max_fee null is no cap.
    set_rule(db, "deposit", rate_bps=100, max_fee=None)
    wallet_id = new_wallet(db)

    assert compute_fee(db, "deposit", "merchant-1", 10_000) == 100
    assert deposit(db, wallet_id, 10_000)["fee"] == 100


def test_set_commission_rule_accepts_the_bounds(db):
    cases = {
        "rate 0": {"rate_bps": 0},
        "rate 10000": {"rate_bps": 10_000},
        "fixed 10^15": {"fixed": MAX_AMOUNT},
        "min_fee equal to max_fee": {"min_fee": 5, "max_fee": 5},
        "max_fee 0": {"max_fee": 0},
        "owner of 255 characters": {"owner": "o" * 255},
    }
    for case, values in cases.items():
        rule = set_rule(db, "transfer", **values)
        assert rule["id"] is not None, case
    assert scalar(db, "SELECT count(*) FROM wallet.commission_rules") == len(cases)


def test_set_commission_rule_rejects_values_out_of_bounds(db):
    set_rule(db, "deposit", fixed=1)
    cases = {
        "unknown operation": {"operation": "refund"},
        "null operation": {"operation": None},
        "rate 10001": {"rate_bps": 10_001},
        "negative rate": {"rate_bps": -1},
        "null rate": {"rate_bps": None},
        "negative fixed": {"fixed": -1},
        "fixed above 10^15": {"fixed": MAX_AMOUNT + 1},
        "negative min_fee": {"min_fee": -1},
        "null min_fee": {"min_fee": None},
        "negative max_fee": {"max_fee": -1},
        "min_fee above max_fee": {"min_fee": 11, "max_fee": 10},
        "empty owner": {"owner": ""},
        "owner of 256 characters": {"owner": "o" * 256},
    }
    before = ledger_state(db)
    for case, values in cases.items():
        arguments = {"operation": "deposit", **values}
        with raises_sqlstate("WI400", case):
            set_rule(db, **arguments)
        assert ledger_state(db) == before, case
    assert compute_fee(db, "deposit", "m", 100) == 1
