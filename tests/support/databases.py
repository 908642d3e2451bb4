"""Databases cloned from a migrated template: CREATE DATABASE ... TEMPLATE, and dropped after.

A clone costs a file copy, not a migration, so every test can have a database of its own.
The template must have no other session connected while it is copied.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator

import psycopg
from psycopg import sql

from core.database import with_database


def unique_name(prefix: str) -> str:
    """prefix and 12 random hex digits: a database name no other test (or session) picks."""
    return f"{prefix}_{uuid.uuid4().hex[:12]}"


def create_database(
    server_url: str, name: str, *, template: str | None = None, owner: str | None = None
) -> str:
    """CREATE DATABASE name [OWNER owner] [TEMPLATE template] through server_url (a login
    that may create databases); the URL of the new database, with server_url's login."""
    statement = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
    if owner is not None:
        statement += sql.SQL(" OWNER {}").format(sql.Identifier(owner))
    if template is not None:
        statement += sql.SQL(" TEMPLATE {}").format(sql.Identifier(template))
    with psycopg.connect(server_url, autocommit=True) as connection:
        connection.execute(statement)
    return with_database(server_url, name)


def drop_database(server_url: str, name: str) -> None:
    """DROP DATABASE IF EXISTS name WITH (FORCE): sessions still connected are ended."""
    with psycopg.connect(server_url, autocommit=True) as connection:
        connection.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@contextlib.contextmanager
def cloned_database(
    server_url: str, template: str, *, owner: str | None = None, prefix: str = "wallet_test"
) -> Iterator[str]:
    """A new database copied from template, dropped on the way out; yields its URL."""
    name = unique_name(prefix)
    url = create_database(server_url, name, template=template, owner=owner)
    try:
        yield url
    finally:
        drop_database(server_url, name)
