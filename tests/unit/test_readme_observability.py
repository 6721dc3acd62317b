"""The docs' spend cap, lineage and metrics pages hold what the code does (their code blocks run here; the
spend-cap DAG is parsed by test_readme.py's ``test_dag_examples_parse``)."""

from __future__ import annotations

import json
import re

from tests.doc_blocks import ROOT, all_blocks, exported, section

__all__ = ["exported"]  # tests/operator/test_observability.py runs the docs' OpenLineage transport


def test_openlineage_transport_example_is_a_file_transport():
    from openlineage.client.transport.file import FileConfig

    (value,) = exported("AIRFLOW__OPENLINEAGE__TRANSPORT").values()
    config = json.loads(value)
    assert config["type"] == "file"
    assert FileConfig.from_dict(config).append is True


def test_facet_example_matches_the_shipped_schema_and_the_facet_class():
    import attrs
    import jsonschema

    from sora2_provider.lineage import SCHEMA_FILE, SCHEMA_URL, Sora2RunFacet

    (block,) = [b for b in all_blocks("python") if "SORA2_RUN_FACET" in b.code]
    namespace: dict = {}
    exec(compile(block.code, block.where, "exec"), namespace)
    example = namespace["SORA2_RUN_FACET"]
    assert example["_schemaURL"] == SCHEMA_URL
    schema = json.loads(SCHEMA_FILE.read_text())
    jsonschema.validate(example, schema["$defs"]["Sora2RunFacet"]["allOf"][1])
    fields = {f.name for f in attrs.fields(Sora2RunFacet) if not f.name.startswith("_")}
    assert set(example) - {"_producer", "_schemaURL"} == fields
    assert SCHEMA_URL.split("#")[0] == schema["$id"]


def test_metrics_table_names_every_metric_the_module_emits():
    source = (ROOT / "sora2_provider" / "metrics.py").read_text()
    emitted = {re.sub(r"\{\w+\}", "<reason>", name) for name in re.findall(r'_emit\("\w+", f?"([^"]+)"', source)}
    table = set(re.findall(r"^\| `sora2\.([^`]+)` \|", (ROOT / "docs" / "metrics.md").read_text(), flags=re.M))
    assert table == emitted  # docs/metrics.md is the table's one home (metrics.py's docstring no longer repeats it)


def test_statsd_example_sets_options_airflow_knows():
    from sora2_provider.compat import conf

    names = exported("AIRFLOW__METRICS__")
    assert set(names) == {f"AIRFLOW__METRICS__STATSD_{option}" for option in ("ON", "HOST", "PORT")}
    for name in names:
        assert conf.has_option("metrics", name.removeprefix("AIRFLOW__METRICS__").lower())


def test_spend_cap_section_names_the_bound_and_the_connection_field():
    from sora2_provider.get_provider_info import get_provider_info

    text = section("docs/costs.md", "Daily spend cap")
    assert "(P - 1) x the largest job's cost" in text
    fields = get_provider_info()["connection-types"][0]["conn-fields"]
    assert f'the "{fields["max_spend_per_day"]["label"]}" field' in text.replace("\n", " ")
