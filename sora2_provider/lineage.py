"""OpenLineage for ``Sora2GenerateVideoOperator``: what its COMPLETE (and FAIL) events say.

* output dataset: the stored video, named by OpenLineage's naming rules for its store: ``s3://bucket`` + key,
  ``gs://bucket`` + key, ``file://<worker host>`` + absolute path, ``<protocol>://<bucket>`` + key elsewhere
  (never the Airflow connection id);
* input dataset: the reference image when it came from object storage or a local file (an http(s) URL is a
  web resource, not a dataset);
* run facet ``sora2`` (:class:`Sora2RunFacet`): model, duration, size, request id, cost, estimated cost, decision
  and generation time; its JSON schema ships in the package (``sora2_provider/facets/sora2_run_facet.json``)
  and is published at :data:`SCHEMA_URL`. No API key, prompt or signed output URL ever goes into an event.

Only the OpenLineage provider calls this (through the operator's ``get_openlineage_facets_on_*`` methods), so the
OpenLineage client is imported here at top level and nowhere at DAG parse.
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import TYPE_CHECKING, Any

from attrs import define
from openlineage.client.facet_v2 import RunFacet

if TYPE_CHECKING:
    from sora2_provider.operators.sora2 import Sora2GenerateVideoOperator

SCHEMA_FILE = Path(__file__).with_name("facets") / "sora2_run_facet.json"
SCHEMA_URL = (
    "https://raw.githubusercontent.com/airflow-provider-sora2/airflow-provider-sora2/main/"
    "sora2_provider/facets/sora2_run_facet.json#/$defs/Sora2RunFacet"
)
FACET_NAME = "sora2"


@define
class Sora2RunFacet(RunFacet):
    """One Sora 2 generation (see ``sora2_provider/facets/sora2_run_facet.json``)."""

    model: str
    duration: int
    size: str
    request_id: str | None = None
    cost: float | None = None
    estimated_cost: float | None = None
    decision: str | None = None
    generation_seconds: float | None = None

    _additional_skip_redact = ["model", "duration", "size", "request_id", "decision"]

    @staticmethod
    def _get_schema() -> str:
        return SCHEMA_URL


def dataset_name(location: Any) -> tuple[str, str]:
    """(namespace, name) of an object-storage path or URL, by OpenLineage's naming rules."""
    from sora2_provider.storage import to_object_storage_path

    path = to_object_storage_path(location) if not hasattr(location, "protocol") else location
    protocol = path.protocol if isinstance(path.protocol, str) else path.protocol[0]
    if protocol in ("file", "local"):
        return f"file://{socket.gethostname()}", "/" + path.path.lstrip("/")
    bucket, _, key = path.path.lstrip("/").partition("/")  # not ``.bucket``: Airflow 3.1's keeps the conn id in it
    return (f"{protocol}://{bucket}" if bucket else protocol), key


def operator_lineage(operator: Sora2GenerateVideoOperator, task_instance: Any, *, failed: bool = False) -> Any:
    """The ``OperatorLineage`` of one run of the operator (after it stored a video, or after it failed)."""
    from airflow.providers.common.compat.openlineage.facet import (
        InputDataset,
        OutputDataset,
        OutputStatisticsOutputDatasetFacet,
    )
    from airflow.providers.openlineage.extractors import OperatorLineage

    from sora2_provider.models import estimate_cost

    result = operator.sora2_result or {}
    inputs: list[Any] = []
    reference = operator.input_reference
    if reference is not None and not (isinstance(reference, str) and reference.lower().startswith("http")):
        location = reference if "://" in str(reference) else f"file://{reference}"
        inputs.append(InputDataset(*dataset_name(location)))
    outputs: list[Any] = []
    if result.get("uri") and not failed:
        statistics = OutputStatisticsOutputDatasetFacet(size=result.get("bytes"), fileCount=1)
        facets: dict[str, Any] = {"outputStatistics": statistics}
        outputs.append(OutputDataset(*dataset_name(result["uri"]), outputFacets=facets))
    model = str(result.get("model") or operator.model)
    duration = int(result.get("duration") or operator.duration)
    size = str(result.get("size") or operator.size or "")
    try:
        estimated: float | None = estimate_cost(model, duration, size or None)
    except ValueError:
        estimated = None
    facet = Sora2RunFacet(
        model=model,
        duration=duration,
        size=size,
        request_id=result.get("request_id"),
        cost=result.get("cost"),
        estimated_cost=estimated,
        decision=result.get("decision"),
        generation_seconds=result.get("generation_seconds"),
    )
    return OperatorLineage(inputs=inputs, outputs=outputs, run_facets={FACET_NAME: facet})
