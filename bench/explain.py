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
        "the operator stores the MP4 durably (fsync before the rename) and hashes it (the XCom's sha256); the "
        "baseline does neither. In this run the baseline's own rounds spread from 426 to 3579 MB/s (two rounds at "
        "the disk's speed, three into the page cache), and its median, 2665 MB/s, is beyond what sha256 alone "
        "reaches here (the raw loop that hashes in line: 438 MB/s median, 982 at best): no writer that hashes "
        "every byte can reach 0.8x of it on this machine. The operator reached 1.90x the raw loop that hashes "
        "and 1.42x the one that hashes and fsyncs (it hashes in a thread of its own while the transfer goes on), "
        "and 0.50x the raw loop that fsyncs without hashing. Profiled earlier with 1 GiB in interleaved rounds: "
        "the pipeline's queues and threads add 0.1-0.2 s of CPU per GiB; the writer's write-back (fadvise every "
        "8 MiB, fdatasync every 64 MiB) against a plain write and one final fsync, queue depths 4, 8 and 16, and "
        "1, 2 or 4 MiB chunks changed nothing beyond the noise, so they stay. Closing the gap needs a cheaper "
        "hash than sha256 (the XCom promises sha256) or a spare core for it."
    ),
    "P3 MB/s, operator -> moto S3": (
        "0.74x in this run (per-round ratios 0.79, 0.71, 0.90), 0.857x in the previous full run; 0.46x and "
        "0.645x before the fix. The fix: a "
        "multipart upload created without a checksum algorithm makes S3 (and moto 5.2) compute a full-object "
        "CRC64NVME at completion, which cost moto 7-12 s of CPU per GiB here, while boto3's transfer manager "
        "(the baseline) declares CRC32 and completes with each part's checksum. `S3PartWriter` now does the same "
        "(unless the client sends checksums only when required): completion 3 s instead of 7-12 s. Part size and "
        "parts in flight were measured too: 8 MiB x 2 (P2: 59.8 MiB added), 5 MiB x 4 (59.4 MiB), 5 MiB x 3 "
        "(48.8 MiB), 6 MiB x 3 (63.8 MiB, too close to 64); smaller parts cost moto more CPU per byte and were no "
        "faster, so 8 MiB x 2 stays. What is left: the operator also hashes the stream (sha256), and moto and both "
        "clients share the 2 cores."
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
        "the operator module imports its own light modules (models, state, storage, spend, metrics, the trigger) "
        "at the top and only the hook (with `requests`) lazily; a miss here comes from machine noise (see the "
        "samples in results.json) or from a new top-level import: run `python -X "
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
