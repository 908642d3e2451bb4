"""Background jobs on procrastinate: delayed deposits, saga retries, reconciliation."""
