"""OpenLineage of ``Sora2GenerateVideoOperator``: the stored video, a reference image from storage and the ``sora2``
run facet, built from the values of one run. Imported only when the OpenLineage provider asks.
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

from airflow.providers.common.compat.openlineage.facet import (
    InputDataset,
    OutputDataset,
    OutputStatisticsOutputDatasetFacet,
)
from airflow.providers.openlineage.extractors import OperatorLineage
from attrs import define
from openlineage.client.facet_v2 import RunFacet

from sora2_provider.models import estimate_cost
from sora2_provider.storage import to_object_storage_path

__all__ = ["FACET_NAME", "SCHEMA_FILE", "SCHEMA_URL", "Sora2RunFacet", "dataset_name", "operator_lineage"]

SCHEMA_FILE = Path(__file__).with_name("facets") / "sora2_run_facet.json"
#: The facet's JSON schema is the package's own file: this path is relative to the installed package's root.
SCHEMA_URL = "sora2_provider/facets/sora2_run_facet.json#/$defs/Sora2RunFacet"
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
    path = to_object_storage_path(location) if not hasattr(location, "protocol") else location
    protocol = path.protocol if isinstance(path.protocol, str) else path.protocol[0]
    if protocol in ("file", "local"):
        return f"file://{socket.gethostname()}", "/" + path.path.lstrip("/")
    bucket, _, key = path.path.lstrip("/").partition("/")  # not ``.bucket``: Airflow 3.1's keeps the conn id in it
    return (f"{protocol}://{bucket}" if bucket else protocol), key


def operator_lineage(
    result: dict[str, Any],
    input_reference: Any,
    *,
    model: Any,
    duration: Any,
    size: Any,
    failed: bool = False,
) -> OperatorLineage:
    """The ``OperatorLineage`` of one run: ``result`` is the operator's XCom dict (empty when nothing was stored);
    ``model``, ``duration`` and ``size`` as the task was given them stand in for what the result lacks."""
    outputs: list[Any] = []
    if result.get("uri") and not failed:
        statistics = OutputStatisticsOutputDatasetFacet(size=result.get("bytes"), fileCount=1)
        outputs.append(OutputDataset(*dataset_name(result["uri"]), outputFacets={"outputStatistics": statistics}))
    return OperatorLineage(
        inputs=_reference_inputs(input_reference),
        outputs=outputs,
        run_facets={FACET_NAME: _run_facet(result, model, duration, size)},
    )


def _reference_inputs(reference: Any) -> list[Any]:
    """A reference image from a local file or object storage is a dataset; an http(s) URL is not."""
    if reference is None or (isinstance(reference, str) and reference.lower().startswith("http")):
        return []
    location = reference if "://" in str(reference) else f"file://{reference}"
    return [InputDataset(*dataset_name(location))]


def _run_facet(result: dict[str, Any], model: Any, duration: Any, size: Any) -> Sora2RunFacet:
    model = str(result.get("model") or model)
    duration = int(result.get("duration") or duration)
    size = str(result.get("size") or size or "")
    try:
        estimated: float | None = estimate_cost(model, duration, size or None)
    except ValueError:
        estimated = None
    return Sora2RunFacet(
        model=model,
        duration=duration,
        size=size,
        request_id=result.get("request_id"),
        cost=result.get("cost"),
        estimated_cost=estimated,
        decision=result.get("decision"),
        generation_seconds=result.get("generation_seconds"),
    )
