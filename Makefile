# forklift: `make demo` and `make test` are all a fresh machine needs.
SHELL := /bin/bash
PYTHON ?= python3
PYTEST_ARGS ?=
# Which Airflow line `make demo` uses: 3 (Airflow 3.3, SQLite) or 2 (Airflow 2.11, a private PostgreSQL).
AIRFLOW_LINE ?= 3

VENV3 := .venv-airflow3
VENV2 := .venv-airflow2
VENVL := .venv-lint
PY3 := $(VENV3)/bin/python
PY2 := $(VENV2)/bin/python
DEMO_PY := $(if $(filter 2,$(AIRFLOW_LINE)),$(PY2),$(PY3))

.PHONY: demo test test-airflow3 test-airflow2 lint system-deps bench docs venv venv2 lock-airflow3 lock-airflow2 clean

venv: $(VENV3)/.installed
venv2: $(VENV2)/.installed

# Each line's environment: exact pins from requirements/, then forklift itself (editable).
define make_venv
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 10), "forklift needs Python >= 3.10, found " + sys.version.split()[0]'
	$(PYTHON) -m venv $(1)
	$(1)/bin/python -m pip install --quiet -r $(2)
	$(1)/bin/python -m pip install --quiet --no-deps -e .
	touch $(1)/.installed
endef

$(VENV3)/.installed: requirements/airflow-3.3.txt pyproject.toml
	$(call make_venv,$(VENV3),requirements/airflow-3.3.txt)

$(VENV2)/.installed: requirements/airflow-2.11.txt pyproject.toml
	$(call make_venv,$(VENV2),requirements/airflow-2.11.txt)

$(VENVL)/.installed: requirements/lint.txt
	$(PYTHON) -m venv $(VENVL)
	$(VENVL)/bin/python -m pip install --quiet -r requirements/lint.txt
	touch $@

# Format, lint and type-check (src/ strictly); a red lint is a red build. `ruff format .` fixes the first.
lint: $(VENVL)/.installed
	$(VENVL)/bin/ruff format --check --quiet . || { echo "make lint: run '$(VENVL)/bin/ruff format .'"; exit 1; }
	$(VENVL)/bin/ruff check .
	$(VENVL)/bin/mypy

# What the integration tests start besides Airflow: PostgreSQL (Airflow 2, two schedulers on one DB) and
# Redis (the Celery hand-off). Installed with apt-get where that is possible (CI runs as root on Debian);
# elsewhere, this says what to install. forklift's test helpers themselves never install anything.
system-deps:
	@need=""; \
	{ command -v initdb >/dev/null || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; } || need="$$need postgresql"; \
	command -v redis-server >/dev/null || need="$$need redis-server"; \
	if [ -n "$$need" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing:$$need"; \
	    DEBIAN_FRONTEND=noninteractive apt-get update -q >/dev/null && \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -q $$need >/dev/null; \
	  else echo "missing system packages:$$need; install them (e.g. sudo apt-get install$$need)"; exit 1; fi; \
	fi

demo: $(if $(filter 2,$(AIRFLOW_LINE)),venv2 system-deps,venv)
	$(DEMO_PY) examples/demo.py $(if $(COMPARE),--compare) $(if $(PARALLELISM),--parallelism $(PARALLELISM)) $(if $(RUN_MODE),--run-mode $(RUN_MODE))

# forklift against Airflow's own LocalExecutor, same machine, same run (AIRFLOW_LINE=2: Airflow 2.11 on
# PostgreSQL). Prints the table and the targets; writes benchmarks/results/. BENCH_ARGS: see --help.
BENCH_ARGS ?=
bench: $(if $(filter 2,$(AIRFLOW_LINE)),venv2 system-deps,venv)
	$(DEMO_PY) -m pip install --quiet -r requirements/bench.txt
	$(DEMO_PY) benchmarks/bench.py $(BENCH_ARGS)

# The docs site (MkDocs, Material theme) into build/site, warnings as errors. The configuration
# reference is generated from forklift's provider declaration (docs/hooks/config_reference.py).
docs: venv
	$(PY3) -m pip install --quiet -r requirements/docs.txt
	NO_MKDOCS_2_WARNING=1 $(PY3) -m mkdocs build --strict --quiet

# The whole suite: lint and types, the engine once, then the adapter and the real-Airflow tests on each
# line; and the docs.
test: lint test-airflow3 test-airflow2 docs

test-airflow3: venv system-deps
	$(PY3) -m pytest tests/engine tests/adapter tests/airflow3 tests/integration $(PYTEST_ARGS)

test-airflow2: venv2 system-deps
	$(PY2) -m pytest tests/adapter tests/airflow2 tests/integration $(PYTEST_ARGS)

# Re-pin a line's environment from what pip resolves today.
lock-airflow3:
	$(MAKE) _lock LINE=3.3 SPEC='apache-airflow[statsd,celery]==3.3.*'
lock-airflow2:
	$(MAKE) _lock LINE=2.11 SPEC='apache-airflow[postgres,statsd,celery]==2.11.*'
_lock:
	rm -rf .venv-lock && $(PYTHON) -m venv .venv-lock
	# py-spy: the test harness dumps a component's stacks when it does not stop on SIGTERM.
	# celery 5.7 dropped what apache-airflow-providers-celery 3.26 imports (celery.backends.database.retry).
	# psycopg2 (and asyncpg for Airflow 3's async engine): the tests run two schedulers on one PostgreSQL on every line.
	.venv-lock/bin/pip install --quiet "$(SPEC)" "celery<5.7" pytest pytest-timeout py-spy psycopg2-binary $(if $(filter 3.%,$(LINE)),asyncpg)
	(echo "# The Airflow $(LINE) test/demo environment, pinned (Airflow's constraints files are not reachable here)."; \
	 echo "# Regenerate: make lock-airflow$(firstword $(subst ., ,$(LINE)))"; .venv-lock/bin/pip freeze) > requirements/airflow-$(LINE).txt
	rm -rf .venv-lock

clean:
	rm -rf $(VENV3) $(VENV2) $(VENVL) .pytest_cache .ruff_cache .mypy_cache build src/*.egg-info
