"""Settings are read once; a missing or invalid one stops start-up with its name in the message."""

import os
import subprocess
import sys

import pytest

from core.settings import SettingsError, load_settings
from tests.support.processes import ROOT

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


def test_rs256_needs_a_public_key_to_verify_tokens(environment):
    environment.setenv("WALLET_JWT_ALGORITHM", "RS256")
    settings = load_settings()  # the worker and migrate need no key
    with pytest.raises(SettingsError, match="WALLET_JWT_PUBLIC_KEY"):
        settings.jwt_verification_key  # noqa: B018


def test_hs256_needs_a_secret_to_verify_tokens(environment):
    environment.delenv("WALLET_JWT_SECRET")
    with pytest.raises(SettingsError, match="WALLET_JWT_SECRET"):
        load_settings().jwt_verification_key  # noqa: B018


@pytest.mark.parametrize(
    "url",
    [
        "postgresql+psycopg://u:p@db.example:5433/wallet",
        "postgresql+asyncpg://u:p@db.example:5433/wallet",
        "postgres://u:p@db.example:5433/wallet",
        " postgresql://u:p@db.example:5433/wallet ",
    ],
)
def test_database_url_is_normalised_once_for_every_driver(environment, url):
    environment.setenv("DATABASE_URL", url)
    assert load_settings().database_url == "postgresql://u:p@db.example:5433/wallet"


def test_a_database_url_of_another_kind_is_refused_by_name(environment):
    environment.setenv("DATABASE_URL", "mysql://u@db/wallet")
    with pytest.raises(SettingsError, match="DATABASE_URL"):
        load_settings()


def test_the_sample_environment_sourced_by_a_shell_is_valid(environment):
    """`set -a; . ./.env.sample`: its empty values count as unset."""
    sourced = subprocess.run(
        ["sh", "-c", "set -a; . ./.env.sample; env -0"],
        cwd=ROOT,
        env={"PATH": os.environ["PATH"]},
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    environ = dict(item.split("=", 1) for item in sourced.split("\0") if "=" in item)
    assert environ["DATABASE_URL"] == "" and environ["WALLET_JWT_SECRET"] == ""
    settings = load_settings(environ)
    assert settings.database_url is None and settings.jwt_secret is None
    assert settings.jwt_audience is None and settings.metrics_dir is None
    assert (settings.pool_max_size, settings.worker_concurrency) == (10, 16)


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
        load_settings()


def test_defaults_are_valid(environment):
    settings = load_settings()
    assert (settings.jwt_algorithm, settings.pool_max_size, settings.max_body_bytes) == ("HS256", 10, 65536)
    assert settings.verify_timeout_seconds == 60
    assert settings.settle_max_retries == 8
    assert settings.stalled_worker_seconds == 30


def test_wallet_serve_without_a_secret_exits_2_naming_it():
    environment = {key: value for key, value in os.environ.items() if not key.startswith("WALLET_")}
    environment["DATABASE_URL"] = "postgresql://nobody@127.0.0.1:1/none"
    done = subprocess.run(
        [sys.executable, "-m", "cli", "serve"], cwd=ROOT, env=environment, capture_output=True, text=True
    )
    assert done.returncode == 2
    assert "WALLET_JWT_SECRET" in done.stderr
    assert "Traceback" not in done.stderr
