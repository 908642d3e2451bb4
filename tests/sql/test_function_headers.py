"""Each function header of sql/ says what the function can raise, exactly.

A header's `Raises:` clause is one comment line, possibly continued on indented comment lines:

    -- Raises: WI400 invalid_request (a remark), WN404 not_found,
    --         WK409 idempotency_key_reused.
    -- Raises: nothing (a remark without codes).

What a function can raise is read from the code: the SQLSTATEs of its own body
(`ERRCODE = 'W....'`) and, transitively, those of every wallet.* function its body calls
(`wallet.name(`), over the functions of migrations/ and sql/ as `wallet migrate` leaves them
(the last definition of a name wins). The analysis does not follow values, so two kinds of
call are spelled out below, each with why: a call that cannot raise a state its callee
raises under other arguments (CANNOT_RAISE_THROUGH), and a raise whose SQLSTATE is a value
(RAISES_WHAT_IT_IS_GIVEN). Both lists are checked to be load-bearing, so they stay minimal.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from core.errors import BY_SQLSTATE

ROOT = Path(__file__).resolve().parents[2]
SQL_DIR = ROOT / "sql"
MIGRATIONS_DIR = ROOT / "migrations"

# (caller, callee): the states the callee can raise that it cannot raise when this caller
# calls it, and why. Without an entry the caller's header would have to list the state.
CANNOT_RAISE_THROUGH: dict[tuple[str, str], tuple[frozenset[str], str]] = {
    ("deposit", "apply_to_wallet"): (
        frozenset({"WF422"}),
        "a deposit credits the wallet (p_net_amount > 0): the balance cannot fall below zero",
    ),
    ("post_withdrawal", "apply_to_wallet"): (
        frozenset({"WL422"}),
        "a withdrawal debits the wallet (p_net_amount < 0): the balance cannot pass the maximum",
    ),
    ("post_scheduled_deposit", "apply_to_wallet"): (
        frozenset({"WS409", "WF422", "WL422"}),
        "a credit, which its callers have checked with wallet.settlement_blocker (wallet active, "
        "maximum balance not passed) on the wallet row they keep locked",
    ),
    ("fail_scheduled_deposit", "append_status_link"): (
        frozenset({"WS409", "WL422"}),
        "p_require_active => false, and the pending only shrinks (the deposit's net is released)",
    ),
    ("cancel_deposit", "append_status_link"): (
        frozenset({"WS409", "WL422"}),
        "p_require_active => false (a frozen wallet's deposit may be canceled), and the pending only shrinks",
    ),
    ("change_wallet_status", "append_status_link"): (
        frozenset({"WL422"}),
        "p_pending_change is 0: the pending stays within its bound",
    ),
    ("freeze_wallet", "change_wallet_status"): (
        frozenset({"WE409"}),
        "only closing requires an empty wallet",
    ),
    ("unfreeze_wallet", "change_wallet_status"): (
        frozenset({"WE409"}),
        "only closing requires an empty wallet",
    ),
    ("close_wallet", "change_wallet_status"): (
        frozenset({"WS409"}),
        "closing a closed wallet changes nothing; WS409 is for freezing or unfreezing a closed one",
    ),
}

# function: (source, why). `RAISE ... USING ERRCODE = <a value>` in the function raises one of
# the SQLSTATEs that the source function assigns (`errcode := 'W....'`).
RAISES_WHAT_IT_IS_GIVEN: dict[str, tuple[str, str]] = {
    "settle_deposit": (
        "settlement_blocker",
        "it raises the SQLSTATE wallet.settlement_blocker returns, so that the job retries",
    ),
}

DEFINITION = re.compile(
    r"^CREATE\s+(?:OR\s+REPLACE\s+)?FUNCTION\s+wallet\.(\w+)\s*\(.*?\bAS\s+(\$\w*\$)(.*?)\2",
    re.I | re.S | re.M,
)
LITERAL_RAISE = re.compile(r"ERRCODE\s*=\s*'(W[A-Z]\d{3})'")
VALUE_RAISE = re.compile(r"ERRCODE\s*=\s*(?!')\S")
ASSIGNED_STATE = re.compile(r"\berrcode\s*:=\s*'(W[A-Z]\d{3})'")
CALL = re.compile(r"\bwallet\.(\w+)\s*\(")
STATE_AND_NAME = re.compile(r"\b(W[A-Z]\d{3}) (\w+)")
STATE_LIKE = re.compile(r"\bW[A-Z0-9]{4}\b")


@dataclass
class Function:
    name: str
    file: str
    body: str
    header: list[str]  # the comment lines right above its CREATE, top to bottom
    own_states: set[str] = field(default_factory=set)
    calls: set[str] = field(default_factory=set)
    raises_a_value: bool = False


def _without_comments(body: str) -> str:
    return re.sub(r"--[^\n]*", "", body)


def parse_functions(files: dict[str, str]) -> dict[str, Function]:
    """Every wallet.* function created in files (in the order given; a later definition of a
    name replaces an earlier one, as CREATE OR REPLACE does)."""
    functions: dict[str, Function] = {}
    for file, text in files.items():
        for match in DEFINITION.finditer(text):
            above = text[: match.start()].splitlines()
            header: list[str] = []
            while above and above[-1].startswith("--"):
                header.insert(0, above.pop())
            body = _without_comments(match.group(3))
            functions[match.group(1)] = Function(
                name=match.group(1),
                file=file,
                body=body,
                header=header,
                own_states=set(LITERAL_RAISE.findall(body)),
                calls=set(CALL.findall(body)) - {match.group(1)},
                raises_a_value=bool(VALUE_RAISE.search(body)),
            )
    for function in functions.values():
        function.calls &= functions.keys()  # `wallet.entries (` in an INSERT is a table
    return functions


class HeaderError(Exception):
    pass


def header_states(function: Function) -> set[str]:
    """The SQLSTATEs the header's Raises clause names; HeaderError when it has none or two, or
    a code is not followed by its name in the error table."""
    starts = [i for i, line in enumerate(function.header) if line.startswith("-- Raises:")]
    if len(starts) != 1 or sum("Raises" in line for line in function.header) != 1:
        raise HeaderError(f"{function.name}: the header needs one `-- Raises:` line, at the start of a line")
    lines = [function.header[starts[0]].removeprefix("-- Raises:")]
    for line in function.header[starts[0] + 1 :]:
        if not re.match(r"--\s{2,}\S", line):
            break
        lines.append(line[2:])
    clause = " ".join(part.strip() for part in lines)
    named = STATE_AND_NAME.findall(clause)
    if clause.startswith("nothing"):
        if STATE_LIKE.search(clause):
            raise HeaderError(f"{function.name}: `Raises: nothing` followed by a SQLSTATE: {clause!r}")
        return set()
    if not named or not clause.startswith(named[0][0]):
        raise HeaderError(f"{function.name}: `Raises:` is neither `nothing` nor a list of states: {clause!r}")
    if len(named) != len(STATE_LIKE.findall(clause)):
        raise HeaderError(f"{function.name}: a SQLSTATE without its name: {clause!r}")
    for state, name in named:
        if state not in BY_SQLSTATE:
            raise HeaderError(f"{function.name}: {state} is not in core/errors.py's table")
        if BY_SQLSTATE[state].code != name:
            raise HeaderError(f"{function.name}: {state} is {BY_SQLSTATE[state].code}, not {name}")
    return {state for state, _ in named}


def raisable(
    functions: dict[str, Function],
    cannot_raise_through: dict[tuple[str, str], tuple[frozenset[str], str]],
    raises_what_it_is_given: dict[str, tuple[str, str]],
) -> dict[str, set[str]]:
    """Per function, the SQLSTATEs it can raise: its own, those it is given to raise, and
    those of its callees (less the states an entry of cannot_raise_through rules out)."""
    states = {name: set(function.own_states) for name, function in functions.items()}
    for name, (source, _) in raises_what_it_is_given.items():
        states[name] |= set(ASSIGNED_STATE.findall(functions[source].body))
    changed = True
    while changed:  # to a fixed point, whatever cycles the call graph has
        changed = False
        for name, function in functions.items():
            for callee in function.calls & functions.keys():
                ruled_out = cannot_raise_through.get((name, callee), (frozenset(), ""))[0]
                inherited = states[callee] - ruled_out - states[name]
                if inherited:
                    states[name] |= inherited
                    changed = True
    return states


def header_mismatches(
    files: dict[str, str],
    checked: set[str],
    cannot_raise_through: dict[tuple[str, str], tuple[frozenset[str], str]],
    raises_what_it_is_given: dict[str, tuple[str, str]],
) -> list[str]:
    """What is wrong with the headers of the functions named in checked."""
    functions = parse_functions(files)
    states = raisable(functions, cannot_raise_through, raises_what_it_is_given)
    problems = []
    for name in sorted(checked):
        function = functions[name]
        if function.raises_a_value and name not in raises_what_it_is_given:
            problems.append(
                f"{name}: raises a SQLSTATE held in a value; say which in RAISES_WHAT_IT_IS_GIVEN"
            )
        try:
            named = header_states(function)
        except HeaderError as error:
            problems.append(str(error))
            continue
        if missing := states[name] - named:
            problems.append(
                f"{name} ({function.file}): can raise {sorted(missing)}, which its header does not name"
            )
        if extra := named - states[name]:
            problems.append(
                f"{name} ({function.file}): its header names {sorted(extra)}, which it cannot raise"
            )
    return problems


def _ledger_files() -> dict[str, str]:
    """migrations/ then sql/, in the order `wallet migrate` applies them."""
    paths = [*sorted(MIGRATIONS_DIR.glob("*.sql")), *sorted(SQL_DIR.glob("*.sql"))]
    return {str(path.relative_to(ROOT)): path.read_text() for path in paths}


def _sql_functions() -> set[str]:
    return {
        name
        for name, function in parse_functions(_ledger_files()).items()
        if function.file.startswith("sql/")
    }


def test_every_function_header_of_sql_names_exactly_what_it_can_raise():
    checked = _sql_functions()

    assert len(checked) >= 55
    assert header_mismatches(_ledger_files(), checked, CANNOT_RAISE_THROUGH, RAISES_WHAT_IT_IS_GIVEN) == []


def test_the_analysis_sees_raises_through_calls():
    states = raisable(parse_functions(_ledger_files()), CANNOT_RAISE_THROUGH, RAISES_WHAT_IT_IS_GIVEN)

    # Only through wallet.claim_idempotency_key, and wallet.settlement_blocker's value.
    assert (
        "WK409" in states["open_wallet"]
        and "WK409" not in parse_functions(_ledger_files())["open_wallet"].own_states
    )
    assert {"WS409", "WL422"} <= states["settle_deposit"]
    assert states["verify_ledger"] == set()


def test_each_listed_exception_is_load_bearing():
    """An entry rules out only what the callee can raise and the caller's header does not name;
    a value raise is listed only where one is."""
    functions = parse_functions(_ledger_files())
    states = raisable(functions, {}, RAISES_WHAT_IT_IS_GIVEN)
    for (caller, callee), (ruled_out, why) in CANNOT_RAISE_THROUGH.items():
        assert why
        assert callee in functions[caller].calls, (caller, callee)
        assert ruled_out <= states[callee], (caller, callee)
        assert not ruled_out & header_states(functions[caller]), (caller, callee)
    for name, (source, why) in RAISES_WHAT_IT_IS_GIVEN.items():
        assert why
        assert functions[name].raises_a_value, name
        assert source in functions[name].calls, name
        assert ASSIGNED_STATE.findall(functions[source].body), source


# The checker on small examples: it can fail.
EXAMPLE_HELPER = """
-- wallet.helper: raises when told.
-- Raises: WN404 not_found, WK409 idempotency_key_reused.
CREATE OR REPLACE FUNCTION wallet.helper(p_flag boolean)
RETURNS void
LANGUAGE plpgsql
AS $$
BEGIN
    IF p_flag THEN
        RAISE EXCEPTION USING ERRCODE = 'WN404', MESSAGE = 'no';
    END IF;
    RAISE EXCEPTION USING ERRCODE = 'WK409', MESSAGE = 'no';
END
$$;
"""


def _example(caller_header: str, caller_body: str = "PERFORM wallet.helper(false);") -> dict[str, str]:
    caller = f"""
{caller_header}
CREATE OR REPLACE FUNCTION wallet.caller()
RETURNS void
LANGUAGE plpgsql
AS $$
BEGIN
    -- wallet.not_a_call(, in a comment
    {caller_body}
    IF now() IS NULL THEN
        RAISE EXCEPTION USING ERRCODE = 'WI400', MESSAGE = 'no';
    END IF;
END
$$;
"""
    return {"sql/helper.sql": EXAMPLE_HELPER, "sql/caller.sql": caller}


def _check(files: dict[str, str], cannot_raise_through=None, raises_what_it_is_given=None) -> list[str]:
    return header_mismatches(
        files, {"caller", "helper"}, cannot_raise_through or {}, raises_what_it_is_given or {}
    )


def test_the_checker_passes_an_exact_header_wrapped_over_two_lines():
    header = (
        "-- wallet.caller: x.\n"
        "-- Raises: WI400 invalid_request (a remark, with a comma), WN404 not_found,\n"
        "--         WK409 idempotency_key_reused."
    )

    assert _check(_example(header)) == []


@pytest.mark.parametrize(
    ("header", "complaint"),
    [
        ("-- Raises: WI400 invalid_request, WN404 not_found.", "can raise ['WK409']"),
        (
            "-- Raises: WI400 invalid_request, WN404 not_found, WK409 idempotency_key_reused,\n"
            "--         WF422 insufficient_funds.",
            "names ['WF422'], which it cannot raise",
        ),
        ("-- Raises: WI400 invalid_request, WN404 not_found.\n-- WK409 idempotency_key_reused.", "can raise"),
        ("-- wallet.caller: no Raises line.", "needs one `-- Raises:` line"),
        ("-- Raises: nothing.", "can raise"),
        ("-- Raises: nothing, except WI400 invalid_request.", "`Raises: nothing` followed by a SQLSTATE"),
        (
            "-- Raises: WI400 not_found, WN404 not_found, WK409 idempotency_key_reused.",
            "WI400 is invalid_request",
        ),
        ("-- Raises: WI400 invalid_request, WN404, WK409 idempotency_key_reused.", "without its name"),
        ("-- Raises: WZ999 mystery, WN404 not_found, WK409 idempotency_key_reused.", "not in core/errors.py"),
        ("-- Raises: some things: WI400 invalid_request, WN404 not_found.", "neither `nothing` nor a list"),
    ],
)
def test_the_checker_catches_a_wrong_header(header, complaint):
    problems = _check(_example(header))

    assert any(complaint in problem for problem in problems), problems


def test_the_checker_applies_a_listed_exception_and_a_value_raise():
    header = "-- Raises: WI400 invalid_request, WK409 idempotency_key_reused."
    ruled_out = {("caller", "helper"): (frozenset({"WN404"}), "p_flag is false")}

    assert _check(_example(header)) != []
    assert _check(_example(header), ruled_out) == []

    value_raise = "errcode := 'WE409';\n    RAISE EXCEPTION USING ERRCODE = errcode;"
    assert any("held in a value" in problem for problem in _check(_example(header, value_raise)))
    given = {"caller": ("caller", "it raises what it assigns")}
    assert _check(_example(header, value_raise), raises_what_it_is_given=given) != []
    full = "-- Raises: WI400 invalid_request, WE409 wallet_not_empty."
    assert _check(_example(full, value_raise), raises_what_it_is_given=given) == []
