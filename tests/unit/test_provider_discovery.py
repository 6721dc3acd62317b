"""Airflow discovers the provider through its entry point and registers the ``sora2`` connection type."""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys
from pathlib import Path

import tomllib

from sora2_provider.get_provider_info import get_provider_info

PROJECT = tomllib.loads((Path(__file__).resolve().parents[2] / "pyproject.toml").read_text())["project"]


def test_airflow_providers_list_shows_the_distribution(airflow_db):
    airflow = Path(sys.executable).with_name("airflow")
    out = subprocess.run([str(airflow), "providers", "list", "-o", "json"], check=True, capture_output=True, text=True)
    assert '"package_name": "airflow-provider-sora2"' in out.stdout


def test_provider_info_names_this_distribution_and_release():
    """Airflow matches the provider dict to its distribution by name; its newest version is the one released."""
    info = get_provider_info()
    assert info["package-name"] == PROJECT["name"]
    assert info["versions"][0] == PROJECT["version"] == importlib.metadata.version(PROJECT["name"])


def test_sora2_connection_type_is_registered_with_its_form():
    """From Airflow 3.2 the form is customised from the provider dict; 3.1 reads no customisation from it (and the
    hook-method way needs Flask-AppBuilder there), so its form shows the generic fields, as the README says."""
    from airflow import __version__ as airflow_version
    from airflow.providers_manager import ProvidersManager
    from packaging.version import Version

    manager = ProvidersManager()
    assert manager.hooks["sora2"].hook_class_name == "sora2_provider.hooks.sora2.Sora2Hook"
    if Version(airflow_version) < Version("3.2"):
        assert "sora2" not in manager.field_behaviours, "3.1 customises the form now: update README's Compatibility"
        return
    behaviour = manager.field_behaviours["sora2"]
    assert set(behaviour["hidden_fields"]) == {"login", "schema", "port"}
    assert behaviour["relabeling"] == {"password": "API key", "host": "Base URL"}
    assert behaviour["placeholders"]["host"] == "https://api.segmind.com"
