# Thin wrappers; `make help` lists the targets. Everything runs from .venv.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
MEMBERS := shared services gateway auth-service history-service presence-service notify-service deploy/local clients/python
PYPROJECTS := $(addsuffix /pyproject.toml,$(MEMBERS))

.PHONY: help venv run up down status test test-fast lint check bench clean

help: ## list targets
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-10s %s\n", $$1, $$2}'

venv: $(STAMP) ## create .venv and install every package (editable) and the dev tools

$(STAMP): $(PYPROJECTS) requirements-dev.txt constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c constraints.txt -r requirements-dev.txt \
		$(addprefix -e ,$(MEMBERS))
	touch $(STAMP)

run: venv ## start the whole stack in the foreground (Ctrl-C stops it)
	$(BIN)/chat-stack run

up: venv ## start the whole stack detached (pids and logs under .run/)
	$(BIN)/chat-stack up

down: ## stop a stack started with `make up`
	@if [ -x $(BIN)/chat-stack ]; then $(BIN)/chat-stack down; fi

status: venv ## show what `make up` started
	$(BIN)/chat-stack status

AXE := tests/e2e/axe/node_modules/axe-core/axe.min.js

test: venv $(AXE) ## run every test (unit, integration, end-to-end) on real servers
	$(BIN)/pytest -q

# The browser tests' accessibility check (pinned by its lockfile); without
# npm those checks are skipped with a reason (CI installs npm).
$(AXE): tests/e2e/axe/package-lock.json
	@if command -v npm >/dev/null; then \
		cd tests/e2e/axe && npm ci --no-audit --no-fund --loglevel=error; \
	else echo "npm not found: the axe-core checks will be skipped"; fi

test-fast: venv ## unit tests only
	$(BIN)/pytest -q tests/unit

lint: venv ## ruff and mypy --strict
	$(BIN)/ruff check .
	$(BIN)/mypy shared/src services/src gateway/src auth-service/src history-service/src presence-service/src notify-service/src deploy/local/src clients/python/src

check: lint test ## the gate CI runs

bench: venv ## fan-out benchmark (see tests/load/RESULTS.md)
	$(BIN)/python tests/load/fanout.py

clean: ## remove the venv and caches (keeps .run/ data)
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
