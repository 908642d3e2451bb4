# Every target installs what it needs first: on a fresh machine `make run` or `make test`
# is the only command to type.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install run test soak fuzz lint docs format bench lock clean pgbouncer chromium wrk promtool

install: $(STAMP)

$(STAMP): pyproject.toml requirements.lock
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c requirements.lock -e '.[dev,embedded]'
	touch $(STAMP)

# make run HOST=0.0.0.0 PORT=8080 to listen elsewhere.
HOST ?= 127.0.0.1
PORT ?= 8000
run: install
	$(BIN)/wallet run --host $(HOST) --port $(PORT)

# pytest exits 5 when it collects no tests; make would report only its own status 2, so say why.
test: install pgbouncer chromium promtool
	@status=0; $(BIN)/pytest || status=$$?; \
	if [ "$$status" -eq 5 ]; then \
		echo "make test: pytest collected no tests (exit 5); that is a failure, not a pass" >&2; \
	fi; \
	exit "$$status"

# PgBouncer for its test (Debian's package); where it cannot be installed, that test skips.
pgbouncer:
	@command -v pgbouncer >/dev/null || test -x /usr/sbin/pgbouncer || \
		{ [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
		  apt-get install -y -qq pgbouncer >/dev/null 2>&1; } || \
		echo "pgbouncer not installed: its test will be skipped"

# Headless Chromium for the docs page's browser test (Debian's package); skipped where missing.
chromium:
	@command -v chromium >/dev/null || \
		{ [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
		  apt-get install -y -qq chromium >/dev/null 2>&1; } || \
		echo "chromium not installed: the docs page's browser test will be skipped"

# promtool for the alert rules' checks in tests/deploy (Debian's `prometheus` package ships it:
# about 20 MB, seconds to install; on a host run by systemd the package also enables its server,
# `systemctl disable --now prometheus` if you do not want it). Where missing, those checks skip.
promtool:
	@command -v promtool >/dev/null || \
		{ [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
		  apt-get install -y -qq --no-install-recommends prometheus >/dev/null 2>&1; } || \
		echo "promtool not installed: the alert rules' promtool checks will be skipped"

soak: install
	$(BIN)/pytest -m soak

# Schemathesis with every phase and check, as `make test` runs it, but longer and with a new
# seed each time (the run prints it; WALLET_FUZZ_SEED=N replays one).
fuzz: install
	WALLET_FUZZ_EXAMPLES=$${WALLET_FUZZ_EXAMPLES:-300} WALLET_FUZZ_SEED=$${WALLET_FUZZ_SEED:-$$(date +%s)} \
		$(BIN)/pytest tests/api/test_openapi_fuzz.py -k command_line

# Python (ruff), SQL (sqlfluff, configured in .sqlfluff) and the Kubernetes manifests (validated
# in strict mode by kubernetes-validate, and the hardening asserted, in tests/deploy; the alert
# rules by promtool).
lint: install promtool
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/sqlfluff lint --disable-progress-bar sql migrations
	$(BIN)/pytest -q -p no:cacheprovider tests/deploy

# docs/errors.md is generated from the one error table, core/errors.py (a test checks it).
docs: install
	$(BIN)/python -m core.errors > docs/errors.md

format: install
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

# Every suite, or some: `make bench SUITES="sql history"` (see bench/README.md).
SUITES ?=
# The HTTP suite needs wrk (Debian's package), installed here as root like pgbouncer for `make test`;
# where it cannot be, bench/ says the HTTP suite was skipped and runs the others.
bench: install wrk
	$(BIN)/python -m bench $(SUITES)

wrk:
	@command -v wrk >/dev/null || \
		{ [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
		  apt-get install -y -qq wrk >/dev/null 2>&1; } || \
		echo "wrk not installed: make bench will skip its HTTP suite"

# Pin what `make install` resolves today into requirements.lock (commit the result).
lock:
	rm -rf /tmp/wallet-lock-venv && $(PYTHON) -m venv /tmp/wallet-lock-venv
	/tmp/wallet-lock-venv/bin/pip install --quiet --upgrade pip
	/tmp/wallet-lock-venv/bin/pip install --quiet '.[dev,embedded]'
	/tmp/wallet-lock-venv/bin/pip freeze --exclude wallet > requirements.lock

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis
