"""forklift's provider declaration: valid for the installed Airflow, and the same defaults as the code (both lines)."""

from __future__ import annotations

import dataclasses
import json
from importlib.metadata import distribution
from pathlib import Path

import airflow
import jsonschema
import pytest

from forklift.provider_info import CONFIG_OPTIONS, get_provider_info
from forklift.settings import Settings, load_settings


def test_valid_for_this_airflow() -> None:
    schema = json.loads((Path(airflow.__file__).parent / "provider_info.schema.json").read_text())
    jsonschema.validate(get_provider_info(), schema)


def test_registered_under_the_distribution_name() -> None:
    # Airflow refuses a provider whose package-name differs from the distribution that ships it.
    dist = distribution("airflow-forklift")
    entry = [ep for ep in dist.entry_points if ep.group == "apache_airflow_provider"]
    assert [ep.value for ep in entry] == ["forklift.provider_info:get_provider_info"]
    assert get_provider_info()["package-name"] == dist.metadata["Name"]


def test_declared_defaults_are_the_codes_defaults() -> None:
    """Airflow hands forklift the declared defaults once providers' config is loaded: they must parse to
    exactly what forklift uses when nothing is set at all."""
    declared = {key: opt["default"] for key, opt in CONFIG_OPTIONS.items()}
    with_defaults = load_settings(
        lambda section, key: declared.get(key) if section == "forklift" else None, parallelism=4
    )
    bare = load_settings(lambda section, key: None, parallelism=4)
    assert with_defaults == bare


def test_every_setting_is_declared() -> None:
    fields = {f.name for f in dataclasses.fields(Settings)} - {"parallelism_from_core"}  # derived, not a setting
    assert set(CONFIG_OPTIONS) == fields


@pytest.mark.parametrize("key", sorted(CONFIG_OPTIONS))
def test_each_option_says_what_it_does(key: str) -> None:
    option = CONFIG_OPTIONS[key]
    assert len(option["description"]) > 40 and option["type"] in {"string", "boolean", "integer", "float"}
