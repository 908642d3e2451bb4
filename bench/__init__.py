"""Benchmarks: `python -m bench [suite ...]` (see bench/README.md)."""


class BenchmarkFailed(RuntimeError):
    """A run that was not clean: a failed transaction, a ledger violation, a wrong setting."""
