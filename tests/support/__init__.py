"""What the tests (and bench/) share: real `wallet serve` and `wallet worker` processes
(processes), databases cloned from a migrated template (databases), calls into the ledger's
SQL functions (ledger), the money model the ledger is held to (money) and tokens (tokens).

Imported by their full name from the repository's root, e.g.
`from tests.support.processes import wallet_serve`: pytest puts the root on sys.path because
tests/ is a package, and the editable install does too, for `python -m bench`.
"""
