"""procrastinate's job-queue schema, as the pinned procrastinate release ships it.

procrastinate's `schema --apply` is not idempotent and its upgrades ship as migration
files, so the schema is applied here once, and the version applied is recorded in
wallet.components. A later upgrade of procrastinate adds a migration that applies its
shipped migration files from the recorded version on. This file imports nothing of the
project: a migration is frozen once applied.
"""

import importlib.metadata
import importlib.resources

from yoyo import step

__depends__ = {"0002_roles"}


def apply_procrastinate_schema(connection) -> None:
    """yoyo step: procrastinate's schema for the installed (pinned) release, recorded by version."""
    version = importlib.metadata.version("procrastinate")
    schema = importlib.resources.files("procrastinate.sql").joinpath("schema.sql").read_text()
    cursor = connection.cursor()
    cursor.execute(
        """
        CREATE TABLE wallet.components (
            name        text PRIMARY KEY,
            version     text NOT NULL,
            applied_at  timestamptz NOT NULL DEFAULT now()
        )
        """
    )
    cursor.execute(schema)
    cursor.execute("INSERT INTO wallet.components (name, version) VALUES ('procrastinate', %s)", (version,))
    # The API and the worker (wallet_app) use the queue; they own none of its objects.
    cursor.execute(
        """
        DO $$
        DECLARE
            v_object record;
        BEGIN
            FOR v_object IN
                SELECT format('%I.%I', n.nspname, c.relname) AS name, c.relkind
                FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                WHERE c.relname LIKE 'procrastinate\\_%' AND c.relkind IN ('r', 'S')
                  AND n.nspname = current_schema()
            LOOP
                IF v_object.relkind = 'r' THEN
                    EXECUTE format('GRANT SELECT, INSERT, UPDATE, DELETE ON %s TO wallet_app', v_object.name);
                ELSE
                    EXECUTE format('GRANT USAGE, SELECT ON SEQUENCE %s TO wallet_app', v_object.name);
                END IF;
            END LOOP;
            FOR v_object IN
                SELECT p.oid::regprocedure AS name
                FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
                WHERE p.proname LIKE 'procrastinate\\_%' AND n.nspname = current_schema()
            LOOP
                EXECUTE format('GRANT EXECUTE ON FUNCTION %s TO wallet_app', v_object.name);
            END LOOP;
        END
        $$
        """
    )


steps = [step(apply_procrastinate_schema)]
