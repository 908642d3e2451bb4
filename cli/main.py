"""The `wallet` command (SPEC 2): migrate, serve, worker, token, verify, and run (make run)."""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta
from pathlib import Path

import asyncpg
import psycopg

from api.auth import SCOPES, mint_token
from core import ledger
from core.database import DatabaseNotConfigured, DatabaseUnreachable, check_reachable, database_url
from core.logs import configure_logging
from core.migrate import (
    DEFAULT_LOCK_TIMEOUT_SECONDS,
    MigrationLockTimeout,
    MigrationNotAdditive,
    UnsupportedMigration,
    migrate,
    run_migrations,
)
from core.settings import Settings, SettingsError, child_environment, export_to_children, load_settings
from jobs.app import run_worker

DEV_SECRET_FILE = "jwt-secret"
DEV_TOKEN_TTL_SECONDS = 24 * 3600
VERIFY_TIMEOUT_SECONDS = 900
EXIT_VERIFY_TIMED_OUT = 3
# `wallet migrate` gave up waiting for another session's migration lock: EX_TEMPFAIL of
# sysexits.h (try again later), apart from 1 (errors) and 2 (usage, configuration).
EXIT_MIGRATION_LOCKED = 75
# The database does not answer or refuses the login: EX_UNAVAILABLE of sysexits.h.
EXIT_DATABASE_UNREACHABLE = 69


def cmd_migrate(args: argparse.Namespace, settings: Settings) -> int:
    """Before a rollout: the migrations and sql/, adding only. With --post, after it: those,
    then the post-deploy steps that remove what only the previous release used. One
    transaction either way (README, "Upgrades and rolling deploys")."""
    try:
        run = run_migrations(database_url(settings), lock_timeout=args.lock_timeout, post=args.post)
    except MigrationLockTimeout as error:
        print(f"wallet migrate: {error}", file=sys.stderr)
        return EXIT_MIGRATION_LOCKED
    except (MigrationNotAdditive, UnsupportedMigration) as error:
        print(f"wallet migrate: {error}", file=sys.stderr)
        return 1
    print(f"migrations applied: {', '.join(run.applied) or 'none (up to date)'}; sql/ functions re-applied")
    if args.post:
        print(f"post-deploy steps applied: {', '.join(run.post_applied) or 'none (nothing to remove)'}")
    elif run.post_pending:
        print(
            f"post-deploy steps pending: {', '.join(run.post_pending)}; run `wallet migrate --post`"
            " once no pod of the previous release runs"
        )
    return 0


def _non_negative_seconds(text: str) -> float:
    seconds = float(text)
    if not 0 <= seconds <= 86_400:
        raise argparse.ArgumentTypeError("must be between 0 and 86400 seconds")
    return seconds


def cmd_verify(args: argparse.Namespace, settings: Settings) -> int:
    """Check the ledger (everything, or what changed since a checkpoint), optionally against a
    kept digest, and on success optionally record a checkpoint and print its digest."""
    return asyncio.run(_verify(args, database_url(settings)))


async def _verify(args: argparse.Namespace, url: str) -> int:
    # PostgreSQL ignores a statement_timeout set on a function: the caller brings the limit.
    connection = await asyncpg.connect(url, server_settings={"statement_timeout": f"{args.timeout}s"})
    try:
        try:
            if args.since is not None:
                violations = await ledger.verify_ledger_since(connection, args.since)
            else:
                violations = await ledger.verify_ledger(connection)
            if args.against is not None:
                violations += await ledger.verify_checkpoint(connection, args.against)
        except asyncpg.QueryCanceledError:
            print(f"wallet: verify did not finish within --timeout {args.timeout} s", file=sys.stderr)
            return EXIT_VERIFY_TIMED_OUT
        except asyncpg.PostgresError as error:
            if error.sqlstate == "WI400":
                print(f"wallet: {error.message}", file=sys.stderr)
                return 2
            raise
        for check_name, detail in violations:
            print(f"{check_name}: {detail}")
        if violations:
            print(f"ledger NOT consistent: {len(violations)} violation(s)", file=sys.stderr)
            return 1
        scope = "since the checkpoint before " + args.since.isoformat() if args.since else "in full"
        print(f"ledger consistent ({scope}{', and extends ' + args.against if args.against else ''})")
        if args.checkpoint:
            print(f"checkpoint: {await ledger.ledger_checkpoint(connection)}")
        return 0
    finally:
        await connection.close()


def cmd_stats(args: argparse.Namespace, settings: Settings) -> int:
    """One JSON object: the delayed-deposit settlement figures (wallet.settlement_stats) at
    the top level, as before holds existed, and the hold figures (wallet.hold_stats) under
    "holds". Both over the last --minutes, read in one snapshot."""
    from decimal import Decimal

    async def stats() -> dict:
        window = timedelta(minutes=args.minutes)
        connection = await asyncpg.connect(database_url(settings))
        try:
            async with connection.transaction(isolation="repeatable_read", readonly=True):
                settlement = dict(await ledger.settlement_stats(connection, window))
                holds = dict(await ledger.hold_stats(connection, window))
        finally:
            await connection.close()
        # Sums of money come back as numeric: whole numbers of minor units in JSON, not strings.
        holds = {name: int(value) if isinstance(value, Decimal) else value for name, value in holds.items()}
        return {**settlement, "holds": holds}

    print(json.dumps(asyncio.run(stats()), default=str))
    return 0


def cmd_serve(args: argparse.Namespace, settings: Settings) -> int:
    import uvicorn

    if settings.database_url is None:
        # One embedded server for every worker process, started here; uvicorn's processes
        # read their settings again from the environment.
        export_to_children(DATABASE_URL=database_url(settings))
    # uvicorn drains on SIGTERM/SIGINT (in-flight requests finish, the pool closes), then
    # re-raises the signal; a requested stop is a clean exit, so it lands here as exit 0.
    for stop_signal in (signal.SIGTERM, signal.SIGINT):
        signal.signal(stop_signal, _exit_cleanly)
    metrics_dir = None
    if args.workers > 1 and settings.metrics_dir is None:
        # Each process counts what it serves in files here; /metrics, answered by any one of
        # them, sums them all (prometheus_client and Litestar read this variable).
        metrics_dir = tempfile.mkdtemp(prefix="wallet-metrics-")
        export_to_children(PROMETHEUS_MULTIPROC_DIR=metrics_dir)
    try:
        uvicorn.run(
            "api.app:create_asgi_app",
            factory=True,
            host=args.host,
            port=args.port,
            workers=args.workers,
            log_level=settings.log_level.lower(),
            log_config=None,  # the app configures JSON logging itself
            access_log=False,
            timeout_graceful_shutdown=args.graceful_seconds,
            timeout_keep_alive=settings.http_keep_alive_seconds,
        )
    finally:
        if metrics_dir is not None:
            shutil.rmtree(metrics_dir, ignore_errors=True)
    return 0


def _exit_cleanly(*_: object) -> None:
    raise SystemExit(0)


def cmd_worker(args: argparse.Namespace, settings: Settings) -> int:
    """The job worker; SIGTERM (or Ctrl-C) lets running jobs finish, then exits 0."""
    configure_logging(settings.log_level)
    asyncio.run(run_worker(settings, database_url(settings), args.concurrency or settings.worker_concurrency))
    return 0


def cmd_token(args: argparse.Namespace, settings: Settings) -> int:
    if settings.jwt_algorithm != "HS256":
        print(
            f"wallet: tokens for WALLET_JWT_ALGORITHM={settings.jwt_algorithm} are signed by your "
            "identity provider; `wallet token` mints HS256 tokens only",
            file=sys.stderr,
        )
        return 2
    secret = settings.jwt_secret or _dev_secret(settings.data_dir, create=False)
    if not secret:
        print(
            "wallet: set WALLET_JWT_SECRET (or start `make run` once to create a dev secret)",
            file=sys.stderr,
        )
        return 2
    scopes = args.scope.split()
    unknown = sorted(set(scopes) - set(SCOPES))
    if unknown:
        print(
            f"wallet: unknown scope(s): {' '.join(unknown)}; known: {' '.join(SCOPES)}",
            file=sys.stderr,
        )
        return 2
    print(
        mint_token(
            secret,
            sub=args.sub,
            scopes=scopes,
            owner_id=args.owner_id,
            ttl_seconds=args.ttl,
            audience=settings.jwt_audience,
            issuer=settings.jwt_issuer,
        )
    )
    return 0


def cmd_run(args: argparse.Namespace, settings: Settings) -> int:
    """The whole service for local use: database, migrations, API and worker; Ctrl-C stops it all."""
    url = database_url(settings)  # the embedded server lives as long as this process
    secret = settings.jwt_secret or _dev_secret(settings.data_dir, create=True)
    migrate(url)
    token = mint_token(
        secret,
        sub="dev",
        scopes=list(SCOPES),
        ttl_seconds=DEV_TOKEN_TTL_SECONDS,
        audience=settings.jwt_audience,
        issuer=settings.jwt_issuer,
    )
    base = f"http://{args.host}:{args.port}"
    print(
        f"\nWallet service on {base}\n  docs:  {base}/schema\n  token: {token}\n"
        f"  try:   TOKEN={token}\n"
        f'         curl -H "Authorization: Bearer $TOKEN" {base}/v1/wallets\n',
        flush=True,
    )
    environment = child_environment(DATABASE_URL=url, WALLET_JWT_SECRET=secret)
    wallet = [sys.executable, "-m", "cli"]
    children = [
        subprocess.Popen([*wallet, "serve", "--host", args.host, "--port", str(args.port)], env=environment),
        subprocess.Popen([*wallet, "worker"], env=environment),
    ]
    return _supervise(children)


def _supervise(children: list[subprocess.Popen]) -> int:
    """Wait until SIGINT or SIGTERM (exit 0) or until a child exits on its own (exit with its
    code, at least 1: the API that cannot bind its port, a worker that cannot start); either
    way, stop the others."""
    requested = False

    def stop(*_: object) -> None:
        nonlocal requested
        requested = True

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    while not requested and all(child.poll() is None for child in children):
        time.sleep(0.2)
    failed = [child for child in children if child.poll() is not None]
    for child in children:
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)
    for child in children:
        child.wait()
    if requested:
        return 0
    code = failed[0].returncode
    print(
        f"wallet run: {' '.join(failed[0].args[3:4])} stopped (exit {code}); stopped the rest",
        file=sys.stderr,
    )
    return code if code > 0 else 1


def _dev_secret(data_dir: Path, *, create: bool) -> str | None:
    """The HS256 secret of `make run`, kept under WALLET_DATA_DIR (created on first use)."""
    path = data_dir / DEV_SECRET_FILE
    if path.exists():
        return path.read_text().strip()
    if not create:
        return None
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(secrets.token_urlsafe(48))
    path.chmod(0o600)
    return path.read_text().strip()


def _timestamp(text: str) -> datetime:
    """An RFC 3339 time with its offset (a time without one is ambiguous for an audit)."""
    try:
        value = datetime.fromisoformat(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"not an RFC 3339 timestamp: {text!r}") from error
    if value.tzinfo is None:
        raise argparse.ArgumentTypeError(f"give the offset too (e.g. {text}Z or {text}+03:30)")
    return value


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"a port is 1 to 65535, not {port}")
    return port


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="wallet", description="Merchant wallet service")
    commands = parser.add_subparsers(dest="command", required=True)

    migrate_command = commands.add_parser(
        "migrate",
        help="apply migrations and sql/ in one transaction, adding only (idempotent); --post after a rollout",
    )
    migrate_command.add_argument(
        "--lock-timeout",
        type=_non_negative_seconds,
        default=DEFAULT_LOCK_TIMEOUT_SECONDS,
        metavar="SECONDS",
        help=f"wait at most this long for another migration's lock, then exit {EXIT_MIGRATION_LOCKED}"
        f" naming its holder (default {DEFAULT_LOCK_TIMEOUT_SECONDS:g})",
    )
    migrate_command.add_argument(
        "--post",
        action="store_true",
        help="after a rollout, once no pod of the previous release runs: also apply the post-deploy"
        " steps (migrations/post/) that remove what only the previous release used",
    )
    migrate_command.set_defaults(handler=cmd_migrate, uses_database=True)
    verify = commands.add_parser("verify", help="check the ledger; exit 1 on any violation")
    verify.add_argument(
        "--checkpoint",
        action="store_true",
        help="when the ledger is consistent, record a checkpoint and print its digest (keep it elsewhere)",
    )
    verify.add_argument(
        "--against",
        metavar="DIGEST",
        help="also prove the ledger still extends this kept checkpoint digest (v1:<id>:<hex>)",
    )
    verify.add_argument(
        "--since",
        metavar="TIMESTAMP",
        type=_timestamp,
        help="check only what changed after the newest checkpoint at or before TIMESTAMP (RFC 3339)",
    )
    verify.add_argument(
        "--timeout",
        type=int,
        default=VERIFY_TIMEOUT_SECONDS,
        help=f"seconds the check may run (default {VERIFY_TIMEOUT_SECONDS})",
    )
    verify.set_defaults(handler=cmd_verify, uses_database=True)

    stats = commands.add_parser("stats", help="delayed-deposit settlement and hold figures as JSON")
    stats.add_argument("--minutes", type=int, default=60, help="window of deposits and holds counted")
    stats.set_defaults(handler=cmd_stats, uses_database=True)

    serve = commands.add_parser("serve", help="run the REST API")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=_port, default=8000, help="1 to 65535 (default 8000)")
    serve.add_argument("--workers", type=int, default=1, help="processes (default 1)")
    serve.add_argument(
        "--graceful-seconds",
        type=int,
        default=20,
        help="how long in-flight requests may finish after SIGTERM",
    )
    serve.set_defaults(handler=cmd_serve, uses_database=True, verifies_tokens=True)

    worker = commands.add_parser("worker", help="run the job worker")
    worker.add_argument("--concurrency", type=int, help="jobs at once (default WALLET_WORKER_CONCURRENCY)")
    worker.set_defaults(handler=cmd_worker, uses_database=True)

    token = commands.add_parser("token", help="mint a token for local use (HS256)")
    token.add_argument("--sub", required=True, help="who calls (the token's subject)")
    token.add_argument("--scope", required=True, help='space-separated scopes, e.g. "wallets:read"')
    token.add_argument("--owner-id", help="limit the token to this owner's wallets")
    token.add_argument("--ttl", type=int, default=3600, help="seconds until it expires")
    token.set_defaults(handler=cmd_token)

    run = commands.add_parser("run", help="migrations, API and worker on one machine (make run)")
    run.add_argument("--host", default="127.0.0.1")
    run.add_argument("--port", type=_port, default=8000, help="1 to 65535 (default 8000)")
    run.set_defaults(handler=cmd_run, uses_database=True)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = load_settings()
        if getattr(args, "verifies_tokens", False):
            settings.jwt_verification_key  # noqa: B018 - a missing key is named before anything starts
        if getattr(args, "uses_database", False) and settings.database_url is not None:
            try:
                check_reachable(settings.database_url)  # one line naming it, not a traceback later
            except DatabaseUnreachable as error:
                if not (args.handler is cmd_serve and settings.pool_min_size == 0):
                    raise
                # An API that opens no connection at start-up serves 503 until the database answers.
                print(f"wallet: {error}; serving 503 unavailable until it answers", file=sys.stderr)
        try:
            return args.handler(args, settings)
        except (OSError, psycopg.OperationalError, asyncpg.PostgresConnectionError) as error:
            if settings.database_url is None:
                raise
            raise DatabaseUnreachable(settings.database_url, error) from None  # lost mid-command
    except (DatabaseNotConfigured, SettingsError) as error:
        print(f"wallet: {error}", file=sys.stderr)
        return 2
    except DatabaseUnreachable as error:
        print(f"wallet: {error}", file=sys.stderr)
        return EXIT_DATABASE_UNREACHABLE
    except MigrationLockTimeout as error:  # `wallet run` migrates before it starts anything
        print(f"wallet: {error}", file=sys.stderr)
        return EXIT_MIGRATION_LOCKED


if __name__ == "__main__":
    sys.exit(main())
