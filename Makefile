# The two commands: `make run` (the service) and `make test` (the tests). Nothing to install first.
PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed

.PHONY: run test test-real bench bench-fleet bench-standby bench-webhooks clean

$(STAMP): setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -e ".[quickstart,test]"
	touch $(STAMP)

run: $(STAMP)
	$(VENV)/bin/provisioning quickstart

# Every test, in TEST_WORKERS pytest-xdist processes, each with its own database, queues and ports;
# the disruptive tests one after another on one of them, the quickstart's (default ports) on one,
# and the real-bench suite (tests/integration/real_bench) on one, on the Frappe + ERPNext bench
# that ../shared/realbench stands up (as root).
TEST_WORKERS ?= 4
test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/pytest -n $(TEST_WORKERS) --dist loadgroup

# The real-bench suite alone.
test-real: $(STAMP)
	$(VENV)/bin/pytest tests/integration/real_bench

# Figures beside their bare baselines (README, Performance); BENCH_ARGS=--full for the large sizes.
bench: $(STAMP)
	command -v wrk >/dev/null || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk)
	$(VENV)/bin/python -m benchmarks $(BENCH_ARGS)

# A fleet of simulated servers (README, Performance): placement, and jobs through 1, 2 and 4 servers' workers.
bench-fleet: $(STAMP)
	$(VENV)/bin/python -m benchmarks.fleet $(BENCH_ARGS)

# On the real bench of ../shared/realbench (made by its setup.sh if need be): about 20 minutes.
bench-standby: $(STAMP)
	$(VENV)/bin/python -m benchmarks.standby $(BENCH_ARGS)

# How soon a portal hears that a site is ready: webhooks beside the events exchange (README, Performance).
bench-webhooks: $(STAMP)
	$(VENV)/bin/python -m benchmarks.webhooks $(BENCH_ARGS)

clean:
	rm -rf $(VENV) var
