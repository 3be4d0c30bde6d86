"""Helpers for testing with forklift against real Airflow: :mod:`.stack` runs a deployment, :mod:`.measure` measures it."""
