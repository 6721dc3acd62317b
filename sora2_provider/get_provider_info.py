"""Provider metadata read by Airflow's providers manager (entry point ``apache_airflow_provider``)."""

from __future__ import annotations

from importlib.util import find_spec

__all__ = ["get_provider_info"]

PLUGIN = {"name": "sora2", "plugin-class": "sora2_provider.plugins.sora2.Sora2Plugin"}


def get_provider_info() -> dict:
    # The UI plugin needs Airflow 3's FastAPI server; Airflow 2 gets none (plugins/sora2.py). A module lookup, not an
    # import (nor sora2_provider.compat): Airflow reads this while its configuration is still loading.
    plugins = [PLUGIN] if find_spec("airflow.api_fastapi") else []
    return {
        "package-name": "airflow-provider-sora2",
        "name": "Segmind Sora 2",
        "description": "Generate videos with Segmind's Sora 2 text-to-video API from Airflow DAGs: "
        "one paid job per task however often it retries, atomic writes to object storage, "
        "deferrable waiting and a credits sensor.",
        "versions": ["0.1.0"],
        "integrations": [
            {
                "integration-name": "Segmind Sora 2",
                "external-doc-url": "https://www.segmind.com/models/sora-2",
                "tags": ["ai"],
            }
        ],
        "hooks": [{"integration-name": "Segmind Sora 2", "python-modules": ["sora2_provider.hooks.sora2"]}],
        "operators": [{"integration-name": "Segmind Sora 2", "python-modules": ["sora2_provider.operators.sora2"]}],
        "sensors": [{"integration-name": "Segmind Sora 2", "python-modules": ["sora2_provider.sensors.credits"]}],
        "triggers": [
            {
                "integration-name": "Segmind Sora 2",
                "python-modules": ["sora2_provider.triggers.sora2", "sora2_provider.triggers.credits"],
            }
        ],
        "plugins": plugins,
        "extra-links": ["sora2_provider.links.Sora2VideoLink", "sora2_provider.links.Sora2OutputLink"],
        "connection-types": [
            {
                "hook-class-name": "sora2_provider.hooks.sora2.Sora2Hook",
                "hook-name": "Segmind Sora 2",
                "connection-type": "sora2",
                "conn-fields": {
                    "timeout": {
                        "label": "Read timeout (s)",
                        "schema": {"type": ["number", "null"], "minimum": 1, "default": 60},
                        "description": "Seconds to wait for each response (the v1 sync call waits up to 10x this).",
                    },
                    "connect_timeout": {
                        "label": "Connect timeout (s)",
                        "schema": {"type": ["number", "null"], "minimum": 1, "default": 10},
                        "description": "Seconds to wait for a TCP connection to Segmind.",
                    },
                    "retry_backoff": {
                        "label": "Retry backoff (s)",
                        "schema": {"type": ["number", "null"], "minimum": 0.001, "default": 0.5},
                        "description": "First wait before retrying a 5xx, dropped connection or timeout; "
                        "doubles each retry (with jitter), up to 30 s.",
                    },
                    "upload_host": {
                        "label": "Upload host",
                        "schema": {"type": ["string", "null"]},
                        "description": "Overrides https://workflows-api.segmind.com (image uploads). "
                        "Defaults to the Base URL when that is set.",
                    },
                    "history_host": {
                        "label": "History host",
                        "schema": {"type": ["string", "null"]},
                        "description": "Overrides https://api.spotprod.segmind.com (request history). "
                        "Defaults to the Base URL when that is set.",
                    },
                    "max_spend_per_day": {
                        "label": "Max spend per day (credits)",
                        "schema": {"type": ["number", "null"], "minimum": 0},
                        "description": "Refuse a new paid job that would take the account's spend over the last "
                        "24 h (request history: charged + estimated pending) above this. Empty: no cap.",
                    },
                    "state_root": {
                        "label": "Job record root",
                        "schema": {"type": ["string", "null"]},
                        "description": "Object-storage prefix for the pay-once job records, e.g. "
                        "s3://aws_default@bucket/_sora2_state/. Empty: Airflow's task state store (3.3+), "
                        "else beside each video.",
                    },
                },
                "ui-field-behaviour": {
                    "hidden-fields": ["schema", "port", "login"],
                    "relabeling": {"password": "API key", "host": "Base URL"},
                    "placeholders": {
                        "host": "https://api.segmind.com",
                        "password": "SG_0123456789abcdef",
                    },
                },
            }
        ],
    }
