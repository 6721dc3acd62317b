"""What ``Sora2GenerateVideoOperator`` leaves in XCom: the result dict of a stored video and the error key."""

from __future__ import annotations

from typing import Any

from sora2_provider.models import DownloadResult, VideoRequest

__all__ = ["ERROR_XCOM_KEY", "video_result"]

#: XCom key of the one-line reason a try failed (the Video tab of the UI plugin shows it).
ERROR_XCOM_KEY = "sora2_error"


def video_result(
    uri: str,
    request: VideoRequest,
    stored: DownloadResult,
    *,
    decision: str,
    request_id: str | None = None,
    cost: float | None = None,
    remaining_credits: float | None = None,
    source_url: str | None = None,
    generation_seconds: float | None = None,
    resumed_from: str | None = None,
) -> dict[str, Any]:
    """The operator's return value (plain JSON): where the video is (``stored``: its bytes and sha256), what
    made it, what it cost, and how this try came to its job (``decision``: ``new_submit``, ``resumed``,
    ``adopted_from_history`` or ``existing_output``)."""
    return {
        "uri": uri,
        "request_id": request_id,
        "model": request.model,
        "duration": request.duration,
        "size": request.size,
        "prompt": request.prompt,
        "bytes": stored.bytes,
        "sha256": stored.sha256,
        "content_type": stored.content_type or "video/mp4",
        "cost": cost,
        "remaining_credits": remaining_credits,
        "source_url": source_url,
        "generation_seconds": generation_seconds,
        "decision": decision,
        "resumed_from": resumed_from,
    }
