"""Why a target is missed and what would fix it, keyed by the start of a check's name: RESULTS.md shows the
entry of every row that says MISS. Written from the evidence of the runs (rows and figures named here are in
the same table and results.json); update an entry when the code it describes changes."""

EXPLANATIONS: dict[str, str] = {
    "P1 slot s, deferrable": (
        "the slot is held for the operator's own work on both sides of the deferral (prepare, record the job, "
        "submit, defer; then read the record, fetch the result, store, write the meta). At quick sizes the render "
        "is only 1.8 s, so 1% of it (18 ms) is below what two task-runner calls cost anyway; at the full size "
        "(18 s) the target holds. If it misses at full size, the `phases_s` figures say which side grew."
    ),
    "P2 peak RSS added, operator -> moto S3": (
        "the object is written by `S3PartWriter` (sora2_provider/_writers.py): `PARTS_IN_FLIGHT` parts of "
        "`WRITE_BLOCK_SIZE` upload at once on s3fs's event loop while the next one fills, behind the download "
        "pipeline's two queues of 4 x 1 MiB chunks. Each part in flight costs about 2.5x its size in RSS (the "
        "body, aiobotocore's and aiohttp's handling of it, and freed blocks kept by the allocator arenas of the "
        "threads involved): 3 x 8 MiB parts measured 76 MiB added, 2 x 8 MiB 60 MiB, one part at a time inside "
        "s3fs's `write()` 29 MiB. A miss means the part size or the parts in flight grew, or another copy of the "
        "data appeared in the path; fewer or smaller parts (S3's minimum is 5 MiB) bring it back."
    ),
    "P3 MB/s, operator -> file://": (
        "the download now hashes in a second thread and writes (with write-back started every 8 MiB, fdatasync "
        "every 64 MiB) in a third, fed by bounded queues, so the operator does the raw loop's transfer plus a "
        "sha256 and an fsync at the speed of the raw loop that only hashes (the note under P3: 0.98x of 'raw + "
        "sha256', 1.10x of 'raw + sha256 + fsync' in the 2026-12-02 run; before the pipeline it was 0.51x and "
        "0.89x of those, and 0.33x of the baseline). What is left is CPU: that run had a load average of about 10 "
        "on 2 cores (other engineers' test suites), so the hashing thread found no idle core and its work "
        "(sha256 of 1 GiB, ~0.7 s of CPU) was added to the transfer instead of overlapping it; the per-round "
        "ratios (0.42 to 0.73) follow the load, not the code. On a worker with a spare core the hash overlaps "
        "(hashlib releases the GIL); the fsync cannot beat the disk, and the baseline neither hashes nor makes "
        "the file durable. Re-run on a quiet machine before changing the design."
    ),
    "P3 MB/s, operator -> moto S3": (
        "parts now upload from s3fs's event loop, `PARTS_IN_FLIGHT` (2) at a time while the next fills, behind the "
        "download pipeline's writer thread, instead of one at a time inside `write()`: 0.645x of the raw boto3 "
        "upload to moto in the 2026-12-02 run (per round 0.51, 0.75, 0.83), vs 0.59x before. 3 parts in flight "
        "cost 76 MiB of RSS (P2's limit is 64), so 2. The rest of the gap: moto is a single Python process on "
        "the same 2 cores (load ~10 during the run), and boto3's `upload_fileobj` sends with 10 threads over "
        "urllib3 with no hashing, while the operator also hashes, and aiobotocore/aiohttp costs more CPU per "
        "part; from memory, without the download, the writer alone took 28-31 MB/s with 1, 3 or 6 parts in flight "
        "vs boto3's 34 MB/s in a one-off run, so more parts in flight would not close it here. Measure against a "
        "real S3 endpoint (or a quiet machine) before tuning further."
    ),
    "P4 import ms added, sensors.credits": (
        "`sora2_provider/sensors/credits.py` imports `sora2_provider.triggers.credits` at the top, which imports "
        "`airflow.triggers.base` (an airflow-core module, ~15 ms self time in `-X importtime`, see "
        "`importtime_top` in results.json), and `sora2_provider.models` (~10 ms). Fix: import `CreditsTrigger` "
        "inside `execute()` (deferrable branch only), move `CreditCheck`, `FATAL_CREDIT_ERRORS` and "
        "`credit_error_message` to a module that does not import `airflow.triggers.base`, and import `plan_cost` "
        "where it is used (literal plans are still validated at parse, which then pays the models import, as the "
        "operator's `_validate_literals` does)."
    ),
    "P4 import ms added, operators.sora2": (
        "the operator module itself imports only `airflow.sdk` and `sora2_provider.links`; a miss here comes "
        "from machine noise (see the samples in results.json) or from a new top-level import: run `python -X "
        "importtime -c 'import airflow.sdk, sora2_provider.operators.sora2'`."
    ),
    "P5 failed tries": (
        "a try failed: `failed_tries` in results.json holds the first messages. The hook retries a 429 until the "
        "reset time at most `max_retries` (5) times; many callers waking at the same reset can lose that race "
        "repeatedly."
    ),
    "P5 wall s vs rate-limit bound": (
        "the batch needed more keyed calls than the 2 per video the bound counts (`accepted_keyed_calls` and "
        "`refused_429` in results.json): with 200 calls filling exactly 4 windows of 50, a handful of extra calls "
        "(history reads, refusals of calls already in flight when a window closed) costs a whole extra window. "
        "The history watcher doubles its interval while the call budget makes it wait; if history reads still "
        "dominate, a longer poll interval trades latency for calls."
    ),
    "P5 keyed calls per video": (
        "count the endpoints in `accepted_keyed_calls` and `refused_429`: more than one history read per poll "
        "interval, status calls (jobs the history did not list in time fall back to their own status), or result "
        "calls (an event without the output URL) each push the figure up."
    ),
    "P5b": (
        "see the P5 entries: at 5 calls a window every extra call is a fifth of a window; `timeline_s` and "
        "`accepted_keyed_calls` in results.json show where the calls went."
    ),
    "P6 keyed calls per poll interval": (
        "the triggers share one history watcher per connection and loop: more calls per interval than ceil(in "
        "flight / 100) + 1 means extra pages (rows older than the oldest watched submit read) or status fallbacks "
        "(jobs the history did not list within the grace period)."
    ),
    "P6 event-loop lag p99": (
        "the loop shares the GIL with the default-executor threads doing the status calls; p99 rises with the "
        "number of calls per second. Compare with the bare pollers' lag (notes): if both miss, it is the machine "
        "(load) or the call rate, not the trigger. Fixes on the provider side: one hook (one `requests.Session`, "
        "one connection pool) per connection id shared by the triggers of a triggerer instead of one per trigger, "
        "and import the hook at the top of `triggers/sora2.py` (the first trigger otherwise blocks the loop for "
        "the import of requests, see the 'first Sora 2 trigger' row)."
    ),
}
