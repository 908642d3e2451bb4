"""A database the previous release migrated, then this release's `wallet migrate`, has the
catalog of a new one this release alone migrated, apart from what `wallet migrate --post`
removes; after --post on both, they are the same. And everything the previous release's
code reaches (functions and their results, relations, columns and their types, types,
schemas) is still there after this release's `wallet migrate`: its pods keep working."""

from __future__ import annotations

from yoyo import read_migrations

from core.migrate import MIGRATIONS_DIR, migrate

from .catalog import Row, catalog, describe, kinds

# What the dump must see in the ledger's database (else it compares too little).
EXPECTED_KINDS = {
    "schema",
    "relation",
    "column",
    "constraint",
    "index",
    "trigger",
    "function",
    "function definition",
    "type",
    "sequence",
    "view",
    "extension",
    "default privileges",
    "applied migration",
    "component",
}


def reachable(rows: set[Row]) -> set[Row]:
    """What code calling the database relies on: names, function results and column types
    (not function bodies, which may improve, nor privileges added since)."""
    found = set()
    for kind, name, detail in rows:
        if kind == "function":
            found.add((kind, name, detail.split(" | ")[0]))  # 'returns ...'
        elif kind == "column":
            found.add((kind, name, detail.split(" | ")[1]))  # its type
        elif kind in {"relation", "type", "schema"}:
            found.add((kind, name, ""))
    return found


def test_the_previous_release_then_this_one_builds_the_catalog_this_one_builds_alone(
    previous_release, new_database
):
    upgraded, fresh = new_database(), new_database()

    applied_by_previous = previous_release.migrate(upgraded.owner_url)
    previous = catalog(upgraded.url)
    applied_by_this = migrate(upgraded.owner_url)
    migrate(fresh.owner_url)
    upgraded_rows, fresh_rows = catalog(upgraded.url), catalog(fresh.url)
    migrate(upgraded.owner_url, post=True)
    migrate(fresh.owner_url, post=True)
    upgraded_after_post, fresh_after_post = catalog(upgraded.url), catalog(fresh.url)

    assert sorted(applied_by_previous) == previous_release.migration_ids
    assert sorted(applied_by_previous + applied_by_this) == sorted(
        migration.id for migration in read_migrations(str(MIGRATIONS_DIR))
    )
    assert kinds(fresh_rows) >= EXPECTED_KINDS, EXPECTED_KINDS - kinds(fresh_rows)
    assert len(fresh_rows) > 500

    lost = reachable(previous) - reachable(upgraded_rows)
    assert not lost, f"this release's migrate took from the previous release's pods:\n{describe(lost)}"

    missing = fresh_rows - upgraded_rows
    assert not missing, f"in a fresh database, not in the upgraded one:\n{describe(missing)}"
    left_behind = (upgraded_rows - fresh_rows) - (upgraded_rows - upgraded_after_post)
    assert not left_behind, (
        f"in the upgraded database only, and not removed by --post:\n{describe(left_behind)}"
    )
    assert upgraded_after_post == fresh_after_post, (
        "after --post, upgraded only:\n"
        f"{describe(upgraded_after_post - fresh_after_post)}\n"
        f"fresh only:\n{describe(fresh_after_post - upgraded_after_post)}"
    )
