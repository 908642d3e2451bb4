"""procrastinate's job-queue schema, as the pinned procrastinate release ships it.

procrastinate's `schema --apply` is not idempotent and its upgrades ship as migration
files, so the schema is applied here once, and the version applied is recorded in
wallet.components. A later upgrade of procrastinate adds a migration that applies its
shipped migration files from the recorded version on (see api/migrate.py).
"""

from yoyo import step

from api.migrate import apply_procrastinate_schema

__depends__ = {"0002_roles"}

steps = [step(apply_procrastinate_schema)]
