"""The layout of the Python side: imports go api -> core, jobs -> core, cli -> everything; only
core/settings.py reads the environment; importing a package reads no setting."""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("api", "cli", "core", "jobs")
# Which of the project's packages each may import (itself always).
MAY_IMPORT = {"core": set(), "api": {"core"}, "jobs": {"core"}, "cli": {"api", "core", "jobs"}}


def _modules(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


def _imported_packages(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found & set(PACKAGES)


@pytest.mark.parametrize("package", PACKAGES)
def test_imports_go_one_way(package):
    wrong = {
        str(path.relative_to(ROOT)): sorted(_imported_packages(path) - MAY_IMPORT[package] - {package})
        for path in _modules(package)
    }
    assert not {path: names for path, names in wrong.items() if names}


def test_migrations_import_nothing_of_the_project():
    """A migration is frozen once applied: it must not change when live code does."""
    for path in (ROOT / "migrations").glob("*.py"):
        assert not _imported_packages(path), path.name


def test_only_the_settings_module_reads_the_environment():
    readers = []
    for package in PACKAGES:
        for path in _modules(package):
            if path == ROOT / "core" / "settings.py":
                continue
            text = path.read_text()
            if re.search(r"\bos\.(environ|getenv|putenv)|\bfrom os import\b", text):
                readers.append(str(path.relative_to(ROOT)))
    assert not readers


def test_importing_the_packages_reads_no_setting():
    """Invalid settings do not stop an import; only load_settings() reads them."""
    environment = {key: value for key, value in os.environ.items() if not key.startswith("WALLET_")}
    environment |= {"WALLET_SETTLE_MAX_RETRIES": "many", "WALLET_LOG_LEVEL": "chatty", "DATABASE_URL": "x://"}
    modules = [
        ".".join(path.relative_to(ROOT).with_suffix("").parts)
        for package in PACKAGES
        for path in _modules(package)
        if path.name != "__main__.py"
    ]
    done = subprocess.run(
        [sys.executable, "-c", "; ".join(f"import {module}" for module in modules)],
        cwd=ROOT,
        env=environment,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize("package", PACKAGES)
def test_each_package_says_what_it_holds(package):
    docstring = ast.get_docstring(ast.parse((ROOT / package / "__init__.py").read_text()))
    assert docstring and "(later)" not in docstring and "saga" not in docstring


def test_only_core_ledger_calls_the_ledgers_functions():
    """Handlers, tasks and commands call core.ledger's coroutines; none spells SQL arguments."""
    calls = {}
    for package in PACKAGES:
        for path in _modules(package):
            if path == ROOT / "core" / "ledger.py":
                continue
            found = re.findall(r"\$\d|\b(?:SELECT|CALL)\b[^\"']*\bwallet\.\w+\(", path.read_text())
            if found:
                calls[str(path.relative_to(ROOT))] = found
    assert not calls
    ledger = (ROOT / "core" / "ledger.py").read_text()
    assert len(set(re.findall(r"\bwallet\.(\w+)\(", ledger))) >= 20
