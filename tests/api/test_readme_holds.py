"""README's "Holds: authorize, capture, void" works as printed: its shell block, run with bash
against a `wallet serve` of this test's own (its URL in place of localhost:8000, the tests' JWT
secret for `wallet token`), prints the balance, held and available each `money` line's comment
says, and the voided hold's capture is 409 hold_not_active."""

from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess

import pytest

from tests.support.processes import ROOT
from tests.support.tokens import JWT_SECRET

SECTION = "## Holds: authorize, capture, void"


def walk_through() -> str:
    text = (ROOT / "README.md").read_text()
    section = text[text.index(SECTION) :]
    match = re.search(r"```sh\n(.*?)```", section, re.S)
    assert match, "the section has no sh block"
    return match.group(1)


def test_the_readme_holds_walk_through_works_as_printed(fresh_api):
    if shutil.which("curl") is None:
        pytest.skip("curl is not installed")
    script = walk_through()
    expected = [
        ast.literal_eval(comment) for comment in re.findall(r"^money \$\w+\s+# (\{.*\})$", script, re.M)
    ]
    assert len(expected) == 7, expected

    done = subprocess.run(
        ["bash", "-c", "set -e\n" + script.replace("localhost:8000", fresh_api.removeprefix("http://"))],
        cwd=ROOT,
        env={**os.environ, "WALLET_JWT_SECRET": JWT_SECRET},
        capture_output=True,
        text=True,
        timeout=120,
    )

    assert done.returncode == 0, done.stdout + done.stderr
    printed = [ast.literal_eval(line) for line in done.stdout.splitlines() if line.startswith("{'balance'")]
    assert printed == expected, done.stdout
    assert '"code":"hold_not_active"' in done.stdout, done.stdout
    assert '"status":"captured","amount":3000000,"captured_amount":2500000,"remaining":0' in done.stdout
