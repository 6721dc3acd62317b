"""
### Sora 2 image to video

Animate a private image: the image lives in your object storage (a local path, `s3://...`, `gs://...`), not on
a public web server. `Sora2GenerateVideoOperator` uploads it to Segmind first and sends the returned URL as
`input_reference`; the video starts from that frame.

1. **`reference_image`** returns the image's location, the Airflow Variable `sora2_reference_image`
   (default `<sora2_output_root>/reference/sample-720x1280.png`). So that the example runs out of the box, when
   nothing is there yet it writes a sample 720x1280 PNG (a sky gradient) to that location; point the Variable
   at your own image to use it instead.
2. **`generate_video`** (deferrable) uploads the image, submits the job and stores the MP4 at
   `<sora2_output_root>/image_to_video/<YYYY-MM-DD>/video.mp4`. A retry re-uploads the image (free) but never
   pays for a second job.

The image should have the video's size (here 720x1280, portrait) and be at most 20 MiB.

**Setup** as for `sora2_daily_video`: the `sora2_default` connection, the optional Variables `sora2_output_root`
(default `file:///tmp/sora2`) and `sora2_reference_image`, and the optional environment variable
`SORA2_POLL_INTERVAL` (default 10 s).
"""

from __future__ import annotations

import os
from datetime import timedelta

import pendulum
from airflow.sdk import DAG, task

from sora2_provider.operators.sora2 import Sora2GenerateVideoOperator

POLL_INTERVAL = float(os.environ.get("SORA2_POLL_INTERVAL", "10"))
MODEL, DURATION, SIZE = "sora-2", 4, "720x1280"
RUN_DATE = "{{ ds if ds is defined else dag_run.run_after | ds }}"
OUTPUT_ROOT = "{{ var.value.get('sora2_output_root', 'file:///tmp/sora2') }}"
REFERENCE_IMAGE = (
    "{{ var.value.get('sora2_reference_image', "
    "var.value.get('sora2_output_root', 'file:///tmp/sora2') ~ '/reference/sample-720x1280.png') }}"
)

with DAG(
    dag_id="sora2_image_to_video",
    description="Animate a private image from object storage with Sora 2",
    schedule=None,
    start_date=pendulum.datetime(2025, 1, 1, tz="UTC"),
    catchup=False,
    doc_md=__doc__,
    # Every task waits in the triggerer, checking every POLL_INTERVAL seconds; a failed try is retried twice.
    default_args={
        "retries": 2,
        "retry_delay": timedelta(minutes=1),
        "deferrable": True,
        "poll_interval": POLL_INTERVAL,
    },
    tags=["sora2", "example"],
) as dag:

    @task
    def reference_image(location: str) -> str:
        """The image to animate; writes a sample PNG there first when the location is empty."""
        from airflow.sdk import ObjectStoragePath

        path = ObjectStoragePath(location)
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(_sample_png(*map(int, SIZE.split("x"))))
            print(f"No image at {location}: wrote a sample {SIZE} PNG there")
        return location

    generate_video = Sora2GenerateVideoOperator(
        task_id="generate_video",
        prompt="The clouds start drifting and the sun slowly rises over the horizon, gentle camera push-in",
        input_reference=reference_image(REFERENCE_IMAGE),
        output_path=f"{OUTPUT_ROOT}/image_to_video/{RUN_DATE}/video.mp4",
        model=MODEL,
        duration=DURATION,
        size=SIZE,
        max_cost=0.5,
    )


def _sample_png(width: int, height: int) -> bytes:
    """A vertical sky-to-sea gradient as an RGB PNG, written with the standard library only."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    rows = []
    for y in range(height):
        t = y / max(height - 1, 1)
        sky, sea = (255, 170, 90), (20, 60, 120)
        pixel = bytes(round(a + (b - a) * t) for a, b in zip(sky, sea, strict=True))
        rows.append(b"\x00" + pixel * width)
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    image = zlib.compress(b"".join(rows), 9)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", image) + chunk(b"IEND", b"")
