"""P2 memory: peak RSS added while the operator stores a 1 GiB MP4 to ``file://``, moto S3, and (when their
extras and Azurite are installed, as ``make test-stores`` and ``make bench`` do) GCS and Azure Blob.

The emulator serves every MP4 padded to 1 GiB (``pad_output_to``); it and the moto server run in processes of
their own. Each variant runs in a fresh interpreter that first loads what it needs, and for the operator also
writes a small object to the same store (so the S3 client and the modules ``execute`` imports lazily are in
place), then measures RSS around the transfer alone: a 2 ms sampling thread plus ``ru_maxrss``.

Variants: the operator (``deferrable=False``: submit, poll, atomic store) to ``file://`` and to ``s3://``; the
seed's approach (``requests.post(v1).content`` then write); the official SDK (``run_sync(...).content`` then
write); a raw ``requests`` stream (``iter_content(1 MiB)``) to a file. Target: <= 64 MiB added.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench.common import (
    API_KEY,
    PYTHON,
    MiB,
    MotoS3,
    Result,
    RssSampler,
    base_env,
    bench_main,
    connection_json,
    ensure_airflow_env,
    log,
    operator_context,
    ratio,
    rss_bytes,
    s3_connection_json,
    scratch_dir,
)
from bench.common import Emulator as EmulatorProcess

TITLE = "P2 peak RSS added while storing a 1 GiB MP4"
TARGET_MIB = 64
PROMPT = "A paper boat drifting down a rain-soaked gutter"
BODY = {"prompt": PROMPT, "duration": 4, "size": "1280x720"}
VARIANTS = ("seed_content", "sdk_content", "raw_stream", "provider_file", "provider_s3")
#: The other object stores, measured when their extras (``make test-stores`` installs them) and Azurite are there.
STORE_VARIANTS = {"provider_gcs": "GCS (gcp-storage-emulator)", "provider_azure": "Azure Blob (Azurite)"}
STORE_LABELS = {"provider_file": "file://", "provider_s3": "moto S3", **STORE_VARIANTS}


def _store_variants() -> list[str]:
    """The GCS and Azure variants this environment can run (gcsfs / adlfs installed, Azurite under .stores/)."""
    import importlib.util

    from tests.stores.servers import AZURITE

    found = []
    if importlib.util.find_spec("gcsfs") and importlib.util.find_spec("gcp_storage_emulator"):
        found.append("provider_gcs")
    if importlib.util.find_spec("adlfs") and AZURITE.exists():
        found.append("provider_azure")
    return found


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--size-mib", type=int, help="padded MP4 size (default 1024; quick 32)")


def run(result: Result, args: argparse.Namespace) -> None:
    size = (args.size_mib or (32 if args.quick else 1024)) * MiB
    variants = [*VARIANTS, *_store_variants()]
    result.params = {"mp4_bytes": size, "variants": variants, "sampling": "2 ms RSS thread + ru_maxrss"}
    airflow_home = ensure_airflow_env()
    with scratch_dir("sora2-bench-p2-") as scratch:
        emulator = EmulatorProcess(time_scale=0.001, pad_output_to=size, log_path=scratch / "emulator.log")
        moto = MotoS3(log_path=scratch / "moto.log")
        stores = _start_stores(variants, scratch)
        try:
            output_url = emulator.submit_and_wait()
            rows: dict[str, dict[str, Any]] = {}
            for variant in variants:
                log(f"P2: {variant} ({size // MiB} MiB) in a fresh interpreter")
                rows[variant] = _run_child(variant, emulator.url, moto.endpoint, output_url, scratch, airflow_home,
                                           stores)
                if variant == "provider_s3":
                    rows[variant]["stored_bytes"] = moto.size("p2/out.mp4")
                    moto.client().delete_object(Bucket=moto.bucket, Key="p2/out.mp4")
                if rows[variant]["stored_bytes"] != size:
                    raise RuntimeError(f"{variant} stored {rows[variant]['stored_bytes']} bytes, not {size}")
        finally:
            emulator.stop()
            moto.stop()
            for server in stores.values():
                server.stop()
    result.figures = rows
    seed = rows["seed_content"]["peak_added_mib"]
    for variant in (v for v in variants if v in STORE_LABELS):
        label = STORE_LABELS[variant]
        added = rows[variant]["peak_added_mib"]
        result.check(f"P2 peak RSS added, operator -> {label}", round(added, 1), "MiB",
                     baseline_name="seed .content", baseline=round(seed, 1), ratio=ratio(added, seed),
                     target=f"<= {TARGET_MIB} MiB", passed=added <= TARGET_MIB)
    for variant, label in (("sdk_content", "official SDK run_sync().content"),
                           ("raw_stream", "raw requests stream-to-file")):
        added = rows[variant]["peak_added_mib"]
        result.check(f"P2 peak RSS added, {label}", round(added, 1), "MiB",
                     baseline_name="seed .content", baseline=round(seed, 1), ratio=ratio(added, seed))
    missing = sorted(set(STORE_VARIANTS) - set(variants))
    if missing:
        result.notes.append(f"not measured here: {', '.join(missing)} (`make test-stores` installs their extras and "
                            "Azurite; `make bench` does too)")
    for variant in (v for v in variants if v in STORE_LABELS):
        row = rows[variant]
        result.notes.append(
            f"{variant}: RSS {row['rss_before_mib']:.0f} MiB before the transfer, peak {row['peak_rss_mib']:.0f} MiB; "
            f"first use of the store (client, lazy imports) added {row.get('first_use_mib', 0):.0f} MiB before that"
        )


def _start_stores(variants: list[str], scratch: Path) -> dict[str, Any]:
    """The GCS API (in memory) and Azurite, as processes of their own, for the variants that need them."""
    from tests.stores.servers import AzuriteServer, GcsServer

    stores: dict[str, Any] = {}
    try:
        if "provider_gcs" in variants:
            stores["provider_gcs"] = GcsServer(in_memory=True, log_path=scratch / "gcs.log")
        if "provider_azure" in variants:
            stores["provider_azure"] = AzuriteServer(log_path=scratch / "azurite.log")
    except BaseException:
        for server in stores.values():
            server.stop()
        raise
    return stores


def _run_child(variant: str, url: str, s3: str, output_url: str, scratch: Path, airflow_home: Path,
               stores: dict[str, Any]) -> dict[str, Any]:
    out = scratch / f"{variant}.json"
    argv = [PYTHON, "-m", "bench.p2_memory", "--child", variant, "--url", url, "--s3", s3,
            "--output-url", output_url, "--dir", str(scratch), "--json", str(out)]
    env = base_env()
    env["SORA2_BENCH_AIRFLOW_HOME"] = str(airflow_home)
    if variant in stores:
        from tests.stores.servers import GCS_CLIENT_ENV

        env.update(GCS_CLIENT_ENV)
        env["SORA2_BENCH_STORE_CONN"] = json.dumps(stores[variant].connection())
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=900, check=False)
    if done.returncode != 0 or not out.exists():
        raise RuntimeError(f"P2 child {variant} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return json.loads(out.read_text())


# --------------------------------------------------------------------------- the measured process


def child_main() -> None:
    parser = argparse.ArgumentParser()
    for name in ("--child", "--url", "--s3", "--output-url", "--dir"):
        parser.add_argument(name, required=True)
    parser.add_argument("--json", type=Path, required=True)
    args = parser.parse_args()
    measure = {"seed_content": _seed, "sdk_content": _sdk, "raw_stream": _raw, "provider_file": _provider,
               "provider_s3": _provider, "provider_gcs": _provider, "provider_azure": _provider}[args.child]
    row = measure(args)
    args.json.write_text(json.dumps({"variant": args.child, **row}))


def _measured(transfer: Any) -> dict[str, Any]:
    sampler = RssSampler()
    started = time.perf_counter()
    with sampler.measure():
        stored = transfer()
    seconds = time.perf_counter() - started
    return {"peak_added_mib": sampler.peak_added / MiB, "rss_before_mib": sampler.before / MiB,
            "peak_rss_mib": (sampler.before + sampler.peak_added) / MiB, "samples": sampler.samples,
            "seconds": round(seconds, 2), "stored_bytes": stored}


def _write(path: Path, data: bytes) -> int:
    with path.open("wb") as handle:
        handle.write(data)
    size = path.stat().st_size
    path.unlink()
    return size


def _seed(args: argparse.Namespace) -> dict[str, Any]:
    import requests

    path = Path(args.dir) / "seed.mp4"

    def transfer() -> int:
        body = requests.post(f"{args.url}/v1/sora-2", json=BODY, headers={"x-api-key": API_KEY}, timeout=900).content
        return _write(path, body)

    return _measured(transfer)


def _sdk(args: argparse.Namespace) -> dict[str, Any]:
    from segmind import SegmindClient

    client = SegmindClient(api_key=API_KEY, base_url=args.url + "/v1")
    path = Path(args.dir) / "sdk.mp4"

    def transfer() -> int:
        return _write(path, client.run_sync("sora-2", **BODY).content)

    return _measured(transfer)


def _raw(args: argparse.Namespace) -> dict[str, Any]:
    import requests

    path = Path(args.dir) / "raw.mp4"

    def transfer() -> int:
        with requests.get(args.output_url, stream=True, timeout=900) as answer, path.open("wb") as handle:
            answer.raise_for_status()
            for chunk in answer.iter_content(MiB):
                handle.write(chunk)
        size = path.stat().st_size
        path.unlink()
        return size

    return _measured(transfer)


def _provider(args: argparse.Namespace) -> dict[str, Any]:
    ensure_airflow_env()
    os.environ["AIRFLOW_CONN_SORA2_DEFAULT"] = connection_json(args.url)
    os.environ["AIRFLOW_CONN_AWS_DEFAULT"] = s3_connection_json(args.s3)
    from sora2_provider.operators.sora2 import Sora2GenerateVideoOperator

    if args.child == "provider_s3":
        uri = f"s3://aws_default@{MotoS3.bucket}/p2/out.mp4"
    elif args.child == "provider_gcs":
        os.environ["AIRFLOW_CONN_GOOGLE_CLOUD_DEFAULT"] = os.environ["SORA2_BENCH_STORE_CONN"]
        uri = "gs://google_cloud_default@sora2-test/p2/out.mp4"
    elif args.child == "provider_azure":
        os.environ["AIRFLOW_CONN_WASB_DEFAULT"] = os.environ["SORA2_BENCH_STORE_CONN"]
        uri = "abfs://wasb_default@sora2-test/p2/out.mp4"
    else:
        uri = f"file://{args.dir}/provider/out.mp4"
    loaded = rss_bytes()
    _first_use(uri)
    first_use = rss_bytes() - loaded
    operator = Sora2GenerateVideoOperator(task_id="generate", prompt=PROMPT, output_path=uri, duration=4,
                                          size="1280x720", deferrable=False, poll_interval=0.05, overwrite=True)
    context = operator_context("bench_p2", "generate", f"p2_{args.child}")

    def transfer() -> int:
        return operator.execute(context)["bytes"]

    row = _measured(transfer)
    row["first_use_mib"] = first_use / MiB
    if args.child == "provider_file":
        path = Path(args.dir) / "provider" / "out.mp4"
        row["stored_bytes"] = path.stat().st_size
        path.unlink()
    elif args.child in STORE_VARIANTS:
        from sora2_provider.storage import to_object_storage_path

        stored = to_object_storage_path(uri)
        row["stored_bytes"] = stored.stat().st_size
        stored.unlink()
    return row


def _first_use(uri: str) -> None:
    """What any first call loads once per process: the hook and its session, the store's client, a small write."""
    from sora2_provider.hooks.sora2 import Sora2Hook
    from sora2_provider.job_events import JobWatch  # noqa: F401
    from sora2_provider.state import JobStateStore  # noqa: F401  (execute imports it lazily)
    from sora2_provider.storage import atomic_writer, to_object_storage_path

    Sora2Hook().get_conn()
    warm = to_object_storage_path(uri.replace("out.mp4", "warm-up.bin"))
    warm.parent.mkdir(parents=True, exist_ok=True)
    with atomic_writer(warm) as handle:
        handle.write(b"\0" * (64 * 1024))
    warm.unlink()


if __name__ == "__main__":
    if "--child" in sys.argv:
        child_main()
    else:
        bench_main("p2_memory", TITLE, run, add_args)
