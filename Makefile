# The README's commands. Everything runs from the project's own virtualenv (.venv),
# created on first use and refreshed when a requirements file changes.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run cluster test lint format clean bench bench-profile chaos fuzz

$(STAMP): requirements.txt requirements-granian.txt requirements-dev.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	touch $(STAMP)

## run: the API under gunicorn on an embedded PostgreSQL with demo data (Ctrl-C stops both)
run: $(STAMP)
	$(BIN)/python -m devtools.run_dev

## cluster: make run's database behind PgBouncer (transaction mode) with a streaming replica for reads,
##          two API hosts behind HAProxy on 127.0.0.1:8000 (Ctrl-C stops everything); installs Debian's
##          pgbouncer and haproxy as root
cluster: $(STAMP)
	$(BIN)/python -m devtools.cluster

## test: lint, format check, import layers and the whole test suite against an embedded PostgreSQL;
##       installs Debian's pgbouncer, haproxy and prometheus (for promtool) first when root (their
##       tests are skipped without them, and fail under CI=true). TEST_WORKERS pytest processes share
##       the files (pytest-xdist), each with its own PostgreSQL; TEST_WORKERS=0 runs them one by one.
TEST_WORKERS ?= 3
test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports --no-logo
	$(BIN)/python -m devtools.debian pgbouncer haproxy promtool
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadgroup

BENCH_STAMP := $(VENV)/.bench-installed

$(BENCH_STAMP): $(STAMP) bench/requirements.txt
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r bench/requirements.txt
	touch $(BENCH_STAMP)

# The dashboard's second pass: its rentals (the statement's cost grows with them) and report folder.
BENCH_DASHBOARD_RENTALS ?= 10000000
BENCH_DASHBOARD_OUT ?= bench/dashboard-10m

## bench: load benchmarks vs peer pools, writes bench/REPORT.md and plots (~35 min; not in make test),
##        then GET /api/dashboard alone at BENCH_DASHBOARD_RENTALS (10M: ~20 min more, 16 of them the seed)
##        into bench/dashboard-10m/REPORT.md
##        BENCH_QUICK=1 make bench: 2-3 min smoke run into bench/results/quick/ (no 10M pass)
bench: $(BENCH_STAMP)
	$(BIN)/python -m bench.run
ifeq ($(BENCH_QUICK),)
	BENCH_SCENARIOS=dashboard BENCH_APPS=api BENCH_RENTALS=$(BENCH_DASHBOARD_RENTALS) \
		BENCH_OUT=$(BENCH_DASHBOARD_OUT) $(BIN)/python -m bench.run
endif

## bench-profile: py-spy profile of the API's hot path under load, writes bench/PROFILE.md
bench-profile: $(BENCH_STAMP)
	$(BIN)/python -m bench.profile

## chaos: the fault tests of tests/chaos/ at length (database and PgBouncer restarts, killed backends,
##        overload, slow queries, lock waits, SIGTERM, leaks, failover to a replica; ~8 min), figures to
##        docs/chaos-results.json.
##        make test runs the same tests once, briefly. CHAOS_SCALE=1 make chaos: the brief form.
CHAOS_SCALE ?= 5
chaos: $(STAMP)
	CHAOS_SCALE=$(CHAOS_SCALE) CHAOS_REPORT=docs/chaos-results.json $(BIN)/python -m pytest -v tests/chaos

## fuzz: schemathesis on every operation of /api/openapi.json at length (FUZZ_EXAMPLES per
##       operation, FUZZ_STATEFUL_RUNS linked call sequences; ~1.5 min), figures to docs/fuzz-results.json.
##       make test runs the same test with 30 examples per operation and 20 sequences.
FUZZ_EXAMPLES ?= 500
FUZZ_STATEFUL_RUNS ?= 300
fuzz: $(STAMP)
	FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) FUZZ_STATEFUL_RUNS=$(FUZZ_STATEFUL_RUNS) FUZZ_REPORT=docs/fuzz-results.json \
		$(BIN)/python -m pytest -v tests/test_fuzz.py

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/lint-imports --no-logo

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

## clean: remove the virtualenv, the development database and the cluster's files
clean:
	rm -rf $(VENV) .devdb .cluster .pytest_cache .ruff_cache .import_linter_cache
