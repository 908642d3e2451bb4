"""The `wallet` command: migrate, verify (and, as they land, serve, worker, token)."""

from __future__ import annotations

import argparse
import sys

import psycopg

from api.database import DatabaseNotConfigured, database_url
from api.migrate import migrate


def cmd_migrate(_: argparse.Namespace) -> int:
    applied = migrate(database_url())
    print(f"migrations applied: {', '.join(applied) or 'none (up to date)'}; sql/ functions re-applied")
    return 0


def cmd_verify(_: argparse.Namespace) -> int:
    with psycopg.connect(database_url()) as connection:
        violations = connection.execute("SELECT check_name, detail FROM wallet.verify_ledger()").fetchall()
    for check_name, detail in violations:
        print(f"{check_name}: {detail}")
    if violations:
        print(f"ledger NOT consistent: {len(violations)} violation(s)", file=sys.stderr)
        return 1
    print("ledger consistent")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="wallet", description="Merchant wallet service")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("migrate", help="apply migrations and sql/ (idempotent)").set_defaults(
        handler=cmd_migrate
    )
    commands.add_parser("verify", help="check the ledger; exit 1 on any violation").set_defaults(
        handler=cmd_verify
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except DatabaseNotConfigured as error:
        print(f"wallet: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
