# forklift: `make demo` and `make test` are all a fresh machine needs.
SHELL := /bin/bash
PYTHON ?= python3
VENV3 ?= .venv-airflow3
PY3 := $(VENV3)/bin/python
PYTEST_ARGS ?=

.PHONY: demo test test-unit test-integration venv lock-airflow3 clean

venv: $(VENV3)/.installed

# The Airflow 3.3 environment: exact pins from requirements/, then forklift itself (editable).
$(VENV3)/.installed: requirements/airflow-3.3.txt pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 10), "forklift needs Python >= 3.10, found " + sys.version.split()[0]'
	$(PYTHON) -m venv $(VENV3)
	$(PY3) -m pip install --quiet -r requirements/airflow-3.3.txt
	$(PY3) -m pip install --quiet --no-deps -e .
	touch $@

demo: venv
	$(PY3) examples/demo.py $(if $(COMPARE),--compare) $(if $(PARALLELISM),--parallelism $(PARALLELISM)) $(if $(RUN_MODE),--run-mode $(RUN_MODE))

test: venv
	$(PY3) -m pytest $(PYTEST_ARGS)

test-unit: venv
	$(PY3) -m pytest -m "not integration" $(PYTEST_ARGS)

test-integration: venv
	$(PY3) -m pytest -m integration $(PYTEST_ARGS)

# Re-pin the Airflow 3 environment from what pip resolves today.
lock-airflow3:
	rm -rf .venv-lock && $(PYTHON) -m venv .venv-lock
	.venv-lock/bin/pip install --quiet "apache-airflow==3.3.*" pytest pytest-timeout
	(echo "# The Airflow 3.3 test/demo environment, pinned (Airflow's constraints files are not reachable here)."; \
	 echo "# Regenerate: make lock-airflow3"; .venv-lock/bin/pip freeze) > requirements/airflow-3.3.txt
	rm -rf .venv-lock

clean:
	rm -rf $(VENV3) .pytest_cache build src/*.egg-info
