"""Settings are read once; a missing or invalid one stops start-up with its name in the message."""

import os
import subprocess
import sys

import pytest

from api.settings import SettingsError, load_settings, load_worker_settings
from tests.api.conftest import ROOT

VALID = {"WALLET_JWT_SECRET": "s" * 40}


@pytest.fixture
def environment(monkeypatch):
    for name in list(os.environ):
        if name.startswith("WALLET_") or name == "DATABASE_URL":
            monkeypatch.delenv(name)
    for name, value in VALID.items():
        monkeypatch.setenv(name, value)
    return monkeypatch


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("WALLET_POOL_MAX_SIZE", "many"),
        ("WALLET_POOL_MAX_SIZE", "0"),
        ("WALLET_POOL_MIN_SIZE", "50"),  # above the max of 10
        ("WALLET_JWT_ALGORITHM", "none"),
        ("WALLET_JWT_SECRET", "too-short"),
        ("WALLET_JWT_LEEWAY_SECONDS", "-1"),
        ("WALLET_MAX_BODY_BYTES", "1"),
        ("WALLET_HTTP_KEEP_ALIVE_SECONDS", "0"),
        ("WALLET_VERIFY_TIMEOUT_SECONDS", "0"),
        ("WALLET_VERIFY_TIMEOUT_SECONDS", "3601"),
        ("WALLET_VERIFY_TIMEOUT_SECONDS", "1.5"),
        ("WALLET_LOG_LEVEL", "chatty"),
    ],
)
def test_an_invalid_setting_is_refused_by_name(environment, name, value):
    environment.setenv(name, value)
    with pytest.raises(SettingsError, match=name):
        load_settings()


def test_rs256_needs_a_public_key(environment):
    environment.setenv("WALLET_JWT_ALGORITHM", "RS256")
    with pytest.raises(SettingsError, match="WALLET_JWT_PUBLIC_KEY"):
        load_settings()


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("WALLET_WORKER_CONCURRENCY", "0"),
        ("WALLET_SETTLE_MAX_RETRIES", "x"),
        ("WALLET_WORKER_LISTEN_NOTIFY", "maybe"),
        ("WALLET_SETTLE_SWEEP_LIMIT", "100000"),
    ],
)
def test_an_invalid_worker_setting_is_refused_by_name(environment, name, value):
    environment.setenv(name, value)
    with pytest.raises(SettingsError, match=name):
        load_worker_settings()


def test_defaults_are_valid(environment):
    settings = load_settings()
    assert (settings.jwt_algorithm, settings.pool_max_size, settings.max_body_bytes) == ("HS256", 10, 65536)
    assert settings.verify_timeout_seconds == 60
    assert load_worker_settings().settle_max_retries == 8


def test_wallet_serve_without_a_secret_exits_2_naming_it():
    environment = {key: value for key, value in os.environ.items() if not key.startswith("WALLET_")}
    environment["DATABASE_URL"] = "postgresql://nobody@127.0.0.1:1/none"
    done = subprocess.run(
        [sys.executable, "-m", "api.cli", "serve"], cwd=ROOT, env=environment, capture_output=True, text=True
    )
    assert done.returncode == 2
    assert "WALLET_JWT_SECRET" in done.stderr
    assert "Traceback" not in done.stderr
