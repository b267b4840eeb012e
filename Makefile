# Two commands on a fresh machine with only python3:  make demo  and  make test.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell cat requirements/dev.lock pyproject.toml | cksum | cut -d' ' -f1)

.PHONY: help venv demo test test-fast lint format bench soak lock clean system-deps node-deps

help:
	@echo "make demo   - set up and run the embedded demo (http://127.0.0.1:8000)"
	@echo "make test   - set up and run every test (installs Debian packages it needs when root)"
	@echo "make lint   - ruff and mypy --strict"
	@echo "make bench  - run the benchmarks, write docs/BENCHMARKS.md"

$(STAMP): requirements/dev.lock pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements/dev.lock
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

venv: $(STAMP)

# npm packages the tests start with node (oidc-provider: an OAuth authorization server for token
# exchange, an OpenID provider for back-channel logout; chatkit-node-backend-sdk: a ChatKit backend
# on Node for the conformance suite), exactly as locked.
NODE_DIR   := tests/support/node
NODE_STAMP := $(NODE_DIR)/node_modules/.installed
$(NODE_STAMP): $(NODE_DIR)/package.json $(NODE_DIR)/package-lock.json
	cd $(NODE_DIR) && npm ci --no-audit --no-fund --loglevel=error
	touch $(NODE_STAMP)

node-deps: system-deps $(NODE_STAMP)

system-deps:
	@scripts/system-deps.sh

demo: venv
	$(BIN)/chatkit-gateway demo

lint: venv
	$(BIN)/ruff check gateway tests scripts bench fuzz
	$(BIN)/ruff format --check gateway
	$(BIN)/mypy

# The suite runs on every core, at most two: its tests start real servers and browsers, and two
# workers halve its time on the two cores it is budgeted for (under 15 minutes).
TEST_WORKERS ?= $(shell $(PYTHON) -c 'import os; print(min(2, len(os.sched_getaffinity(0))))')

test: venv system-deps node-deps lint
	$(BIN)/python -m pytest -n $(TEST_WORKERS)

test-fast: venv
	$(BIN)/python -m pytest -x -q

format: venv
	$(BIN)/ruff format gateway
	$(BIN)/ruff check --fix gateway tests scripts

bench: venv system-deps
	$(BIN)/python -m bench

soak: venv system-deps
	$(BIN)/python -m bench.soak

# Re-pin every dependency from what pyproject.toml asks for (needs the registry).
lock:
	rm -rf /tmp/ckg-lock && $(PYTHON) -m venv /tmp/ckg-lock
	/tmp/ckg-lock/bin/pip install --quiet . && /tmp/ckg-lock/bin/pip freeze --exclude chatkit-gateway > requirements/runtime.lock
	/tmp/ckg-lock/bin/pip install --quiet --upgrade '.[test]' setuptools wheel && /tmp/ckg-lock/bin/pip freeze --all --exclude chatkit-gateway --exclude pip > requirements/dev.lock
	rm -rf /tmp/ckg-lock

clean:
	rm -rf $(VENV) $(NODE_DIR)/node_modules .pytest_cache .mypy_cache .ruff_cache .hypothesis *.egg-info
