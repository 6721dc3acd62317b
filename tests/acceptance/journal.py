"""The journal the acceptance DAGs write (one JSON line per event) and helpers that describe what they saw.

Nothing here imports Airflow at module level: this module is imported while pytest collects, before the session's
``AIRFLOW_HOME`` is final, and Airflow reads its configuration when first imported.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

MP4_SIGNATURE = b"ftyp"


def journal(path: str, **event: Any) -> None:
    """Append one event to a row's journal (JSON lines)."""
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(json.dumps({"time": time.time(), "pid": os.getpid(), **event}, default=repr) + "\n")


def read_journal(path: str | Path) -> list[dict[str, Any]]:
    file = Path(path)
    if not file.exists():
        return []
    return [json.loads(line) for line in file.read_text().splitlines() if line.strip()]


def describe_output(uri: str) -> dict[str, Any]:
    """What a reader of ``uri`` sees: nothing, an object starting like an MP4, or something else (partial)."""
    from airflow.sdk import ObjectStoragePath

    path = ObjectStoragePath(uri)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return {"kind": "nothing", "bytes": 0}
    kind = "mp4" if data[4:8] == MP4_SIGNATURE else "partial"
    return {"kind": kind, "bytes": len(data)}


def error_line(err: BaseException) -> str:
    """The last line of a traceback as Airflow prints it: ``module.Class: first line of the message``."""
    cls = type(err)
    name = cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"
    message = str(err).splitlines()[0] if str(err) else ""
    return f"{name}: {message}" if message else name
