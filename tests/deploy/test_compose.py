"""The local cluster of compose.yaml, checked offline (CI has no Docker engine).

compose.yaml is validated against the Compose Specification's JSON schema by check-jsonschema,
which ships that schema (and its Apache-2.0 licence) in its package: nothing is fetched. Then the
wiring is asserted: every variable the wallet containers get is a setting core/settings.py reads,
every DATABASE_URL reaches the service and login it should with the password the database's init
gave that login, the start order waits on health and on the migration, ports stay on 127.0.0.1,
and the dev secret is a dev secret.
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import SplitResult, urlsplit

import pytest
import yaml

from cli.main import build_parser
from core.settings import MIN_JWT_SECRET_LENGTH, load_settings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "compose.yaml"
ENV_SAMPLE = ROOT / ".env.sample"
ROLES_SQL = ROOT / "sql" / "bootstrap" / "roles.sql"
README = ROOT / "README.md"
README_SECTION = "## A local cluster with compose"

# The services built from the Containerfile, and the login and the service each one connects to.
WALLET_CONNECTIONS = {
    "migrate": ("wallet_owner", "postgres"),
    "api-1": ("wallet_api", "pgbouncer"),
    "api-2": ("wallet_api", "pgbouncer"),
    "worker": ("wallet_worker", "postgres"),
    "audit": ("wallet_audit", "postgres"),
}
API_SERVICES = ("api-1", "api-2")
ONE_SHOT_SERVICES = {"migrate", "audit"}  # run to completion: restart "no", no healthcheck
POSTGRES_PORT = 5432
DATABASE = "wallet"
INIT_FOLDER = PurePosixPath("/docker-entrypoint-initdb.d")
LOOPBACK = "127.0.0.1"
# What the wallet image has to probe with: Python, but neither curl nor wget.
MISSING_FROM_THE_IMAGE = ("curl", "wget")


# Reading compose.yaml as Compose does -----------------------------------------------------------


def _compose() -> dict[str, Any]:
    """compose.yaml with its YAML merge keys resolved (PyYAML's safe loader does, as Compose)."""
    return yaml.safe_load(COMPOSE.read_text())


def _services() -> dict[str, dict[str, Any]]:
    return _compose()["services"]


def _read_env_file(path: Path) -> dict[str, str]:
    """KEY=VALUE lines, in the one form Compose's and every dotenv parser read alike: no quotes,
    no spaces, no `$` (Compose would interpolate it), no inline comment."""
    values = {}
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip() or line.startswith("#"):
            continue
        match = re.fullmatch(r"([A-Z][A-Z0-9_]*)=([^\s'\"$#]*)", line)
        assert match, f"{path.name}:{number}: not a plain KEY=VALUE line: {line!r}"
        values[match[1]] = match[2]
    return values


def _environment(service: dict[str, Any]) -> dict[str, str]:
    """The variables a container gets: its env_file(s), then `environment`, which wins."""
    values: dict[str, str] = {}
    env_files = service.get("env_file", [])
    for entry in [env_files] if isinstance(env_files, str | dict) else env_files:
        path = entry["path"] if isinstance(entry, dict) else entry
        values.update(_read_env_file(ROOT / path))
    environment = service.get("environment", {})
    if isinstance(environment, list):
        environment = dict(item.split("=", 1) for item in environment)
    for name, value in environment.items():
        assert isinstance(value, str), f"{name}: give the value as a string, not {value!r}"
        values[name] = value
    return values


def _database_url(service_name: str) -> SplitResult:
    return urlsplit(_environment(_services()[service_name])["DATABASE_URL"])


def _listen_port(service_name: str) -> int:
    """The port a database-side service accepts connections on inside the network."""
    if service_name == "pgbouncer":
        return int(_environment(_services()["pgbouncer"])["LISTEN_PORT"])
    assert service_name == "postgres", service_name
    return POSTGRES_PORT


def _upstreams(service_name: str) -> set[str]:
    """The services it connects to: its DATABASE_URL's host, or PgBouncer's DB_HOST."""
    environment = _environment(_services()[service_name])
    hosts = set()
    if "DATABASE_URL" in environment:
        hosts.add(urlsplit(environment["DATABASE_URL"]).hostname)
    if "DB_HOST" in environment:
        hosts.add(environment["DB_HOST"])
    return hosts


def _init_sql() -> str:
    """The init script compose.yaml gives the postgres container besides roles.sql."""
    postgres = _services()["postgres"]
    (mounted,) = [item for item in postgres["configs"] if PurePosixPath(item["target"]).parent == INIT_FOLDER]
    return _compose()["configs"][mounted["source"]]["content"]


def _init_passwords() -> dict[str, str]:
    return dict(re.findall(r"^ALTER ROLE (\w+) PASSWORD '([^']+)';$", _init_sql(), flags=re.MULTILINE))


def _bootstrap_roles() -> dict[str, bool]:
    """The roles sql/bootstrap/roles.sql creates, and whether each may log in."""
    return {
        name: can_login == "true"
        for name, can_login in re.findall(r"\('(wallet_\w+)',\s*(true|false)\s*\)", ROLES_SQL.read_text())
    }


def _settings_read() -> set[str]:
    """Every variable load_settings() looks at, observed rather than grepped."""

    class Recorder(dict):
        def __init__(self) -> None:
            super().__init__()
            self.names: set[str] = set()

        def get(self, key: str, default: Any = None) -> Any:
            self.names.add(key)
            return super().get(key, default)

    recorder = Recorder()
    load_settings(recorder)
    return recorder.names


def _env_sample_names() -> set[str]:
    return set(re.findall(r"^([A-Z][A-Z0-9_]*)=", ENV_SAMPLE.read_text(), flags=re.MULTILINE))


def _published(service: dict[str, Any]) -> Iterator[tuple[str | None, int, int]]:
    """(host IP, host port, container port) of each published port, short or long syntax."""
    for port in service.get("ports", []):
        if isinstance(port, dict):
            yield port.get("host_ip"), int(port["published"]), int(port["target"])
            continue
        match = re.fullmatch(r"(?:(\[?[\d.:a-fA-F]+\]?):)?(\d+):(\d+)(?:/tcp)?", str(port))
        assert match, f"a published port needs host IP, host port and container port: {port!r}"
        yield match[1], int(match[2]), int(match[3])


def _option(command: list[str], name: str) -> str | None:
    return command[command.index(name) + 1] if name in command else None


# The Compose Specification ----------------------------------------------------------------------


def _check_jsonschema(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.compose-spec", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_compose_yaml_is_valid_against_the_compose_specification():
    result = _check_jsonschema(COMPOSE)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_schema_check_rejects_a_misspelled_key_and_an_unknown_condition(tmp_path):
    text = COMPOSE.read_text()
    for wrong in (
        text.replace("    healthcheck:", "    helthcheck:", 1),
        text.replace("condition: service_healthy", "condition: service_ready", 1),
    ):
        assert wrong != text
        (tmp_path / "compose.yaml").write_text(wrong)
        result = _check_jsonschema(tmp_path / "compose.yaml")
        assert result.returncode == 1, result.stdout + result.stderr


def test_nothing_is_interpolated():
    # No `$`: what a .env beside compose.yaml (make run's, say) holds cannot change the cluster.
    assert "$" not in COMPOSE.read_text()


# The wallet image -------------------------------------------------------------------------------


def test_the_wallet_services_are_built_from_the_containerfile_as_one_image():
    services = _services()
    built = {name for name, service in services.items() if "build" in service}
    assert built == set(WALLET_CONNECTIONS)
    for name in built:
        build = services[name]["build"]
        assert (ROOT / build["context"]).resolve() == ROOT, name
        assert build["dockerfile"] == "Containerfile" and (ROOT / "Containerfile").is_file(), name
    assert len({services[name]["image"] for name in built}) == 1, "one image, tagged once"


def test_each_wallet_service_runs_a_wallet_command():
    services = _services()
    commands = {name: services[name]["command"] for name in WALLET_CONNECTIONS}
    for command in commands.values():
        build_parser().parse_args(command)  # exits (SystemExit) on an unknown command or option
    assert commands["migrate"] == ["migrate"]
    assert commands["worker"] == ["worker"]
    assert commands["audit"] == ["verify"]
    for name in API_SERVICES:
        assert commands[name][0] == "serve"
        assert _option(commands[name], "--host") == "0.0.0.0", "reachable from the published port"


def test_the_wallet_containers_are_hardened_like_the_kubernetes_pods():
    for name in WALLET_CONNECTIONS:
        service = _services()[name]
        assert service["read_only"] is True, name
        assert "/tmp" in service["tmpfs"], f"{name}: /tmp is the one writable folder"
        assert service["cap_drop"] == ["ALL"], name
        assert "no-new-privileges:true" in service["security_opt"], name
        assert "user" not in service, f"{name}: the image's user 10001"
        assert not service.get("privileged"), name


# Settings ---------------------------------------------------------------------------------------


def test_every_variable_of_a_wallet_container_is_a_setting():
    read, documented = _settings_read(), _env_sample_names()
    for name in WALLET_CONNECTIONS:
        environment = _environment(_services()[name])
        unknown = set(environment) - read
        assert not unknown, f"{name}: core/settings.py reads no {sorted(unknown)}"
        undocumented = set(environment) - documented
        assert not undocumented, f"{name}: .env.sample does not list {sorted(undocumented)}"
        load_settings(environment)  # every value valid: SettingsError names the one that is not


def test_only_the_wallet_containers_get_wallet_settings():
    for name, service in _services().items():
        if name not in WALLET_CONNECTIONS:
            leaked = {
                item for item in _environment(service) if item == "DATABASE_URL" or item.startswith("WALLET_")
            }
            assert not leaked, f"{name} is not the wallet image: {sorted(leaked)}"


def test_the_apis_have_a_token_key_and_only_they_have_the_secret():
    for name in WALLET_CONNECTIONS:
        settings = load_settings(_environment(_services()[name]))
        if name in API_SERVICES:
            assert settings.jwt_verification_key
        else:
            assert settings.jwt_secret is None, f"{name} verifies no token: it needs no secret"


def test_the_dev_secret_comes_from_an_env_file_and_says_it_is_one():
    env_files = {tuple(_services()[name].get("env_file", [])) for name in API_SERVICES}
    assert len(env_files) == 1
    (files,) = env_files
    assert files, "the APIs read their secret from an env file"
    for file in files:
        path = ROOT / file
        assert path.is_file() and path.parent == ROOT, file
        text = path.read_text()
        assert text.startswith("# DEVELOPMENT ONLY"), f"{file} says at its top that it is for development"
        secret = _read_env_file(path)["WALLET_JWT_SECRET"]
        assert len(secret) >= MIN_JWT_SECRET_LENGTH
        # Named for what it is, so that no one takes it for a real one.
        assert "dev-only" in secret and "not-a-secret" in secret, secret
        assert secret not in COMPOSE.read_text(), "written once, in the env file"


# Databases, logins and passwords ----------------------------------------------------------------


def test_each_wallet_service_connects_where_and_as_whom_it_should():
    services = _services()
    for name, (login, upstream) in WALLET_CONNECTIONS.items():
        url = _database_url(name)
        assert url.scheme == "postgresql", name
        assert url.hostname in services, f"{name}: {url.hostname} is no service of compose.yaml"
        assert (url.hostname, url.port) == (upstream, _listen_port(upstream)), name
        assert url.username == login, name
        assert url.path == f"/{DATABASE}", name


def test_the_apis_go_through_pgbouncer_in_transaction_mode_without_a_statement_cache():
    pgbouncer = _environment(_services()["pgbouncer"])
    assert pgbouncer["POOL_MODE"] == "transaction"
    for name in API_SERVICES:
        assert _database_url(name).hostname == "pgbouncer"
        assert load_settings(_environment(_services()[name])).statement_cache_size == 0, name


def test_the_worker_connects_directly_and_listens():
    # LISTEN/NOTIFY and session state do not pass a transaction pooler.
    assert _database_url("worker").hostname == "postgres"
    assert load_settings(_environment(_services()["worker"])).worker_listen_notify is True


def test_pgbouncer_logs_in_to_postgres_as_the_api_login():
    pgbouncer = _environment(_services()["pgbouncer"])
    api = _database_url(API_SERVICES[0])
    assert (pgbouncer["DB_HOST"], int(pgbouncer["DB_PORT"])) == ("postgres", POSTGRES_PORT)
    assert (pgbouncer["DB_USER"], pgbouncer["DB_PASSWORD"]) == (api.username, api.password)
    assert pgbouncer["DB_NAME"] == api.path.lstrip("/")
    # PgBouncer logs in to PostgreSQL (SCRAM passwords) with the client's password: it needs it in
    # clear in its userlist, which edoburu/pgbouncer writes so for scram-sha-256 only.
    assert pgbouncer["AUTH_TYPE"] == "scram-sha-256"


def test_every_login_used_is_a_bootstrap_login_with_the_password_the_init_gave_it():
    roles, passwords = _bootstrap_roles(), _init_passwords()
    assert roles, "no role found in roles.sql"
    assert set(passwords) <= {role for role, can_login in roles.items() if can_login}
    for name in WALLET_CONNECTIONS:
        url = _database_url(name)
        assert roles.get(url.username) is True, f"{name}: {url.username} is no login of roles.sql"
        assert url.password == passwords.get(url.username), f"{name}: not the password the init set"
        assert url.password.startswith("dev-only-"), f"{name}: a dev password says so"


def test_the_database_is_created_for_its_owner_after_the_roles():
    postgres = _services()["postgres"]
    mounted = [volume for volume in postgres["volumes"] if isinstance(volume, dict)]
    (roles,) = [volume for volume in mounted if Path(volume["source"]).name == ROLES_SQL.name]
    assert (ROOT / roles["source"]).resolve() == ROLES_SQL
    assert roles["type"] == "bind" and roles["read_only"] is True
    (init,) = [item["target"] for item in postgres["configs"]]
    scripts = [PurePosixPath(roles["target"]), PurePosixPath(init)]
    assert all(script.parent == INIT_FOLDER and script.suffix == ".sql" for script in scripts)
    # The image runs them in name order: the roles must exist before the passwords and the owner.
    assert sorted(script.name for script in scripts) == [script.name for script in scripts]
    owner = _database_url("migrate").username
    assert f"CREATE DATABASE {DATABASE} OWNER {owner};" in _init_sql()
    assert re.search(
        rf"^\\connect {DATABASE}\nREVOKE CREATE ON SCHEMA public FROM PUBLIC;$", _init_sql(), re.M
    )


def test_the_postgres_image_is_a_supported_official_one_and_pgbouncer_is_pinned():
    services = _services()
    assert re.fullmatch(r"docker\.io/library/postgres:(15|16)", services["postgres"]["image"])
    assert re.fullmatch(r"docker\.io/edoburu/pgbouncer:v\d+\.\d+\.\d+-p\d+", services["pgbouncer"]["image"])


# Start order and health -------------------------------------------------------------------------


def test_every_dependency_names_a_condition_it_can_meet():
    services = _services()
    for name, service in services.items():
        depends_on = service.get("depends_on", {})
        assert isinstance(depends_on, dict), f"{name}: depends_on with a condition for each service"
        for dependency, how in depends_on.items():
            assert dependency in services, f"{name} depends on unknown {dependency}"
            condition = how["condition"]
            if condition == "service_healthy":
                assert "healthcheck" in services[dependency], f"{name}: {dependency} has no healthcheck"
            elif condition == "service_completed_successfully":
                assert dependency in ONE_SHOT_SERVICES, f"{name}: {dependency} never completes"
            else:
                pytest.fail(f"{name}: {dependency} {condition}: started is not ready")


def test_whatever_connects_to_a_database_waits_for_it_to_be_healthy():
    services = _services()
    for name in services:
        for upstream in _upstreams(name):
            assert services[name]["depends_on"][upstream] == {"condition": "service_healthy"}, name


def test_everything_that_uses_the_schema_waits_for_the_migration():
    services = _services()
    for name in WALLET_CONNECTIONS.keys() - {"migrate"}:
        assert services[name]["depends_on"]["migrate"] == {"condition": "service_completed_successfully"}
    assert services["migrate"]["restart"] == "no"


def test_the_start_order_has_no_cycle():
    services, done = _services(), set()

    def visit(name: str, path: tuple[str, ...]) -> None:
        assert name not in path, " -> ".join((*path, name))
        if name not in done:
            for dependency in services[name].get("depends_on", {}):
                visit(dependency, (*path, name))
            done.add(name)

    for name in services:
        visit(name, ())


def test_every_long_running_service_has_a_healthcheck_and_restarts():
    for name, service in _services().items():
        if name in ONE_SHOT_SERVICES:
            assert service["restart"] == "no" and "healthcheck" not in service, name
            continue
        assert service["restart"] == "unless-stopped", name
        healthcheck = service["healthcheck"]
        assert healthcheck["test"][0] == "CMD", f"{name}: exec form, no shell needed"
        assert not set(healthcheck["test"]) & set(MISSING_FROM_THE_IMAGE), name
        assert {"interval", "timeout", "retries", "start_period"} <= set(healthcheck), name


def test_postgres_is_healthy_only_once_its_init_has_run():
    # During the init scripts the image's temporary server listens on the Unix socket only; a
    # pg_isready over TCP passes once the real server is up, after them.
    test = _services()["postgres"]["healthcheck"]["test"]
    assert test[1] == "pg_isready"
    assert _option(test, "-h") == LOOPBACK and _option(test, "-p") == str(POSTGRES_PORT)


def test_pgbouncer_is_probed_on_its_own_port():
    test = _services()["pgbouncer"]["healthcheck"]["test"]
    assert test[1] == "pg_isready"
    assert _option(test, "-h") == LOOPBACK and _option(test, "-p") == str(_listen_port("pgbouncer"))


def test_the_apis_are_probed_on_readyz_with_python():
    for name in API_SERVICES:
        service = _services()[name]
        test = service["healthcheck"]["test"]
        assert test[1:3] == ["python", "-c"], name
        compile(test[3], f"{name} healthcheck", "exec")
        port = _option(service["command"], "--port")
        assert f"'http://{LOOPBACK}:{port}/readyz'" in test[3], name


def test_the_worker_is_probed_by_its_heartbeat():
    test = _services()["worker"]["healthcheck"]["test"]
    assert test[1:3] == ["python", "-c"]
    compile(test[3], "worker healthcheck", "exec")
    assert "procrastinate.procrastinate_workers" in test[3] and "last_heartbeat" in test[3]


# Ports ------------------------------------------------------------------------------------------


def test_only_the_apis_publish_a_port_and_only_on_the_loopback():
    host_ports = []
    for name, service in _services().items():
        published = list(_published(service))
        if name not in API_SERVICES:
            assert not published, f"{name}: reach it with `docker compose exec`, not a published port"
            continue
        assert len(published) == 1, name
        ((host_ip, host_port, container_port),) = published
        assert host_ip == LOOPBACK, f"{name}: published on {host_ip or 'every interface'}"
        assert container_port == int(_option(service["command"], "--port")), name
        host_ports.append(host_port)
    assert len(set(host_ports)) == len(API_SERVICES), host_ports


def test_the_two_apis_differ_only_in_their_host_port():
    first, second = (dict(_services()[name]) for name in API_SERVICES)
    assert first.pop("ports") != second.pop("ports")
    assert first == second


# The README -------------------------------------------------------------------------------------


def _readme_section() -> str:
    text = README.read_text()
    assert README_SECTION in text
    start = text.index(README_SECTION)
    end = text.find("\n## ", start + len(README_SECTION))
    return text[start : end if end >= 0 else len(text)]


def test_the_readme_shows_the_cluster_before_kubernetes():
    text = README.read_text()
    assert text.index(README_SECTION) < text.index("## Deploying on Kubernetes")
    assert "docker compose up -d" in _readme_section()


def test_the_readme_names_only_services_and_ports_that_exist():
    section, services = _readme_section(), _services()
    named = re.findall(
        r"docker compose (?:exec|run|logs|restart|stop|start)(?: -{1,2}[\w-]+)* ([a-z][\w-]*)", section
    )
    assert named, "the section shows how to reach the services"
    assert set(named) <= set(services), sorted(set(named) - set(services))
    published = {port for name in API_SERVICES for _, port, _ in _published(services[name])}
    mentioned = {int(port) for port in re.findall(r"(?:127\.0\.0\.1|localhost):(\d+)", section)}
    assert mentioned and mentioned <= published, sorted(mentioned - published)
