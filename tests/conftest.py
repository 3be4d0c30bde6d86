"""Keep every test away from the user's own Airflow: a private AIRFLOW_HOME, set before Airflow loads."""

from __future__ import annotations

import os
import tempfile

for _name in [n for n in os.environ if n.startswith("AIRFLOW__")]:
    del os.environ[_name]
os.environ["AIRFLOW_HOME"] = tempfile.mkdtemp(prefix="forklift-tests-airflow-home-")
os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
os.environ["AIRFLOW__CORE__UNIT_TEST_MODE"] = "False"
