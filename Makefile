# forklift: `make demo` and `make test` are all a fresh machine needs.
SHELL := /bin/bash
PYTHON ?= python3
PYTEST_ARGS ?=

# Every Airflow line forklift serves, each with its pinned environment requirements/airflow-<line>.txt
# in .venv-<line>. `make test` runs the whole suite on FULL_LINES and a smoke subset on SMOKE_LINES.
FULL_LINES := 3.4 3.3 2.11
SMOKE_LINES := 3.2 3.1 2.10
LINES := $(FULL_LINES) $(SMOKE_LINES)
# The line `make demo` and `make bench` use. AIRFLOW_LINE=3 / 2 still works (3.3 / 2.11).
AIRFLOW_LINE ?=
AIRFLOW_VERSION ?= $(if $(filter 2,$(AIRFLOW_LINE)),2.11,3.3)
ifeq ($(filter $(AIRFLOW_VERSION),$(LINES)),)
$(error AIRFLOW_VERSION=$(AIRFLOW_VERSION) is not a line forklift serves; use one of: $(LINES))
endif

VENVL := .venv-lint
venv-of = .venv-$(1)
py-of = .venv-$(1)/bin/python
is-2 = $(filter 2.%,$(1))
DEMO_PY := $(call py-of,$(AIRFLOW_VERSION))
# Airflow 2 lines need a PostgreSQL (they refuse SQLite with a parallel executor).
DEMO_DEPS := $(call venv-of,$(AIRFLOW_VERSION))/.installed $(if $(call is-2,$(AIRFLOW_VERSION)),system-deps)

.PHONY: demo test lint system-deps bench docs venv venv2 venvs clean test-summary stream-a stream-b \
	$(addprefix test-,$(LINES)) $(addprefix smoke-,$(LINES))

venv: $(call venv-of,3.3)/.installed
venv2: $(call venv-of,2.11)/.installed
venvs: $(foreach l,$(LINES),$(call venv-of,$(l))/.installed)

# Each line's environment: exact pins from requirements/, then forklift itself (editable).
.venv-%/.installed: requirements/airflow-%.txt pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 10), "forklift needs Python >= 3.10, found " + sys.version.split()[0]'
	$(PYTHON) -m venv .venv-$*
	.venv-$*/bin/python -m pip install --quiet -r requirements/airflow-$*.txt
	# With its dependencies: proves forklift installs next to the pinned Airflow with no resolver override.
	.venv-$*/bin/python -m pip install --quiet -e .
	touch $@

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

demo: $(DEMO_DEPS)
	$(DEMO_PY) examples/demo.py $(if $(COMPARE),--compare) $(if $(PARALLELISM),--parallelism $(PARALLELISM)) $(if $(RUN_MODE),--run-mode $(RUN_MODE))

# forklift against Airflow's own LocalExecutor, same machine, same run (AIRFLOW_VERSION=2.11: on a
# private PostgreSQL). Prints the table and the targets; writes benchmarks/results/. BENCH_ARGS: see --help.
BENCH_ARGS ?=
bench: $(DEMO_DEPS)
	$(DEMO_PY) -m pip install --quiet -r requirements/bench.txt
	$(DEMO_PY) benchmarks/bench.py $(BENCH_ARGS)

# The docs site (MkDocs, Material theme) into build/site, warnings as errors. The configuration
# reference is generated from forklift's provider declaration (docs/hooks/config_reference.py).
docs: venv
	$(call py-of,3.3) -m pip install --quiet -r requirements/docs.txt
	NO_MKDOCS_2_WARNING=1 $(call py-of,3.3) -m mkdocs build --strict --quiet

# The whole suite: lint and types; the engine once (on 3.3); the adapter, unit and real-Airflow tests on
# every full line and the smoke subset (-m smoke) on the others; the docs; then what ran, per line.
# The lines run in two streams at once, balanced by their measured times (A: 3.4 22 min, 2.11 16 min;
# B: 3.3 with the engine 27 min, then 3.2, 3.1 and 2.10 5 min each, and the docs): the suite mostly
# waits on Airflow's own loops, so two deployments share 2 cores (one stream alone takes ~80 min there).
# Lint runs beside them, and each stream builds its later lines' environments while its first line's
# tests run, so neither waits on pip. TEST_JOBS=1 runs everything one after the other. The output
# interleaves, each pytest line prefixed with its Airflow line (and kept whole in build/test-reports/).
TEST_JOBS ?= 2
# The summary is printed whatever the outcome, last, so the tail of a failed CI log names what failed.
test: system-deps
	@rm -f $(REPORTS)/*.summary
	@status=0; \
	$(MAKE) --no-print-directory -j$$(( $(TEST_JOBS) > 1 ? $(TEST_JOBS) + 1 : 1 )) lint stream-a stream-b || status=$$?; \
	$(MAKE) --no-print-directory test-summary; exit $$status

# $(1): the stream's first target and $(2) its line; $(3): the lines of the targets after it, $(4).
define run_stream
	@$(MAKE) --no-print-directory $(call venv-of,$(2))/.installed
	@mkdir -p $(REPORTS); \
	$(MAKE) --no-print-directory $(foreach l,$(3),$(call venv-of,$(l))/.installed) > $(REPORTS)/venvs-$(2).log 2>&1 & builds=$$!; \
	status=0; $(MAKE) --no-print-directory $(1) || status=$$?; \
	wait $$builds || { echo "building the environments of $(3) failed:"; tail -20 $(REPORTS)/venvs-$(2).log; exit 1; }; \
	[ $$status = 0 ] || exit $$status; \
	for t in $(4); do $(MAKE) --no-print-directory $$t || exit 1; done
endef

stream-a:
	$(call run_stream,test-3.4,3.4,2.11,test-2.11)
stream-b:
	$(call run_stream,test-3.3,3.3,3.2 3.1 2.10,smoke-3.2 smoke-3.1 smoke-2.10 docs)

REPORTS := build/test-reports
line-tests = tests/adapter $(if $(call is-2,$(1)),tests/airflow2,tests/airflow3) tests/integration
# pytest's last line (counts and time) and its FAILED/ERROR lines are kept per line for the summary,
# written whatever pytest's outcome; the recipe's exit status is pytest's.
define run_line
	@mkdir -p $(REPORTS)
	@set -o pipefail; status=0; \
	$(call py-of,$(1)) -m pytest $(2) --durations=15 $(PYTEST_ARGS) 2>&1 | tee $(REPORTS)/$(1).log | sed -u 's/^/[$(1)] /' || status=$$?; \
	{ echo "Airflow $(1) ($(3)): $$(grep -m1 -o '^apache-airflow==.*' requirements/airflow-$(1).txt)"; \
	  grep -E '^=+ .*(passed|failed|error).* in ' $(REPORTS)/$(1).log | tail -1; \
	  grep -E '^(FAILED|ERROR) ' $(REPORTS)/$(1).log | cut -c1-300 | sed 's/^/  /'; } > $(REPORTS)/$(1).summary; \
	exit $$status
endef

$(addprefix test-,$(LINES)): test-%: .venv-%/.installed system-deps
	$(call run_line,$*,$(if $(filter 3.3,$*),tests/engine) $(call line-tests,$*),full suite)

$(addprefix smoke-,$(LINES)): smoke-%: .venv-%/.installed system-deps
	$(call run_line,$*,-m "smoke or not integration" $(call line-tests,$*),unit tests + smoke subset)

test-summary:
	@echo "== what ran, per Airflow line"; for l in $(LINES); do f=$(REPORTS)/$$l.summary; \
	  if [ -f "$$f" ]; then cat "$$f"; else echo "Airflow $$l: not run (an earlier failure stopped its stream)"; fi; done

# Back-compat names for the two lines the suite first ran on.
test-airflow3: test-3.3
test-airflow2: test-2.11

# Re-pin a line's environment from what pip resolves today.
# 3.4 is pinned to its beta until a final is on the index: pip takes a pre-release only where a
# requirement names it exactly, hence the core and SDK pins beside it.
lock-3.4:
	$(MAKE) _lock LINE=3.4 SPEC='apache-airflow[statsd,celery]==3.4.0b2" "apache-airflow-core[statsd]==3.4.0b2" "apache-airflow-task-sdk==1.4.0b2'
lock-3.3 lock-3.1: lock-%:
	$(MAKE) _lock LINE=$* SPEC='apache-airflow[statsd,celery]==$*.*'
# 3.2.2 leaves fastapi and cadwyn open; their later majors fail its api-server at start
# ("TITerminalStatePayload needs a discriminator field"), so they are held where 3.3 has them.
lock-3.2:
	$(MAKE) _lock LINE=3.2 SPEC='apache-airflow[statsd,celery]==3.2.*" "fastapi<0.137" "cadwyn<8'
lock-2.11 lock-2.10: lock-%:
	$(MAKE) _lock LINE=$* SPEC='apache-airflow[postgres,statsd,celery]==$*.*'
_lock:
	rm -rf .venv-lock-$(LINE) && $(PYTHON) -m venv .venv-lock-$(LINE)
	# py-spy: the test harness dumps a component's stacks when it does not stop on SIGTERM.
	# celery 5.7 dropped what apache-airflow-providers-celery 3.26 imports (celery.backends.database.retry).
	# psycopg2 (and asyncpg for Airflow 3's async engine): the tests run two schedulers on one PostgreSQL on every line.
	.venv-lock-$(LINE)/bin/pip install --quiet "$(SPEC)" "celery<5.7" pytest pytest-timeout py-spy psycopg2-binary $(if $(filter 3.%,$(LINE)),asyncpg)
	(echo "# The Airflow $(LINE) test/demo environment, pinned (Airflow's constraints files are not reachable here)."; \
	 echo "# Regenerate: make lock-$(LINE)"; .venv-lock-$(LINE)/bin/pip freeze) > requirements/airflow-$(LINE).txt
	rm -rf .venv-lock-$(LINE)

clean:
	rm -rf $(foreach l,$(LINES),$(call venv-of,$(l))) .venv-airflow3 .venv-airflow2 $(VENVL) .pytest_cache .ruff_cache .mypy_cache build src/*.egg-info
