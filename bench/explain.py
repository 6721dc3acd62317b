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
        "s3fs keeps a whole part in a BytesIO and copies it when it uploads it (`buffer.read(blocksize)`), and "
        "aiobotocore holds the request body: about three parts live at once. With fsspec's default block size "
        "(50 MiB for s3fs) that is ~155 MiB whatever the video size; `atomic_writer` must open the object with "
        "`block_size=WRITE_BLOCK_SIZE` (8 MiB parts measured ~29 MiB added). A miss here means the part size grew "
        "again or another copy of the data appeared in the path."
    ),
    "P3 MB/s, operator -> file://": (
        "the operator does more than the baseline loop: the hook hashes every chunk (sha256, reported in the XCom) "
        "in the thread that reads the socket and writes the file, and `atomic_writer` fsyncs the file before it "
        "renames it into place, while the baseline only fills the page cache. The rows 'raw stream-to-file + "
        "sha256' and '+ sha256 + fsync' are the raw loop doing that same work, and the note under P3 gives the "
        "operator's ratio to them: the target, as stated, compares a durable and verified store with one that is "
        "neither. Fixes, if the speed matters more than the simplicity: hash in a second thread fed by a bounded "
        "queue of 2-4 chunks (hashlib releases the GIL on large updates), which overlaps hashing with the network "
        "on a worker with a spare core; start write-back during the download (e.g. `os.fdatasync` of the "
        "written part every 64 MiB in that same thread) so the final fsync has little left to flush; and state "
        "the target against the '+ sha256 + fsync' row."
    ),
    "P3 MB/s, operator -> moto S3": (
        "the target compares with a stream to local disk, but the data goes through moto, a single-process "
        "Python server: the row 'raw stream -> boto3 -> moto' is the most that moto takes here, far below 0.9x "
        "of local disk, so no S3 writer can meet this target on this machine (measure against real S3, or against "
        "that row). Against moto's own ceiling (the note under P3) the gap is that s3fs uploads a part "
        "synchronously inside `write()` when its buffer fills, so the download stalls during every part upload, "
        "while boto3's `upload_fileobj` uploads parts from threads. Fix: a writer thread with a bounded queue "
        "between `download` and the S3 file (2-3 parts in flight, memory stays a few parts), together with the "
        "smaller parts of the P2 fix."
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
