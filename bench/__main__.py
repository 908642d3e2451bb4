"""`python -m bench [suite ...]`: run the named suites in order, or all of them."""

from __future__ import annotations

import shutil
import sys
from collections.abc import Callable

from bench import BenchmarkFailed, history_bench, holds_bench, http_bench, settlement_bench, sql_bench

# Each suite prints its table, writes bench/results/<name>.json and raises BenchmarkFailed
# when a run is not clean. The HTTP and delayed-deposit suites go here as they land.
SUITES: dict[str, Callable[[], None]] = {
    "sql": sql_bench.main,
    "http": http_bench.main,
    "settlement": settlement_bench.main,
    "history": history_bench.main,
    "holds": holds_bench.main,
}


def main(argv: list[str]) -> int:
    names = argv or list(SUITES)
    if not argv and shutil.which("wrk") is None:
        # All suites were asked for; the HTTP one cannot run. Asked for by name, it fails instead.
        names.remove("http")
        print("bench http: SKIPPED: wrk is not installed (apt-get install wrk; `make bench` does as root)")
    unknown = [name for name in names if name not in SUITES]
    if unknown:
        known = ", ".join(SUITES)
        print(f"bench: unknown suite {', '.join(unknown)}; known: {known}", file=sys.stderr)
        return 2
    for name in names:
        try:
            SUITES[name]()
        except BenchmarkFailed as error:
            print(f"bench {name}: FAILED: {error}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
