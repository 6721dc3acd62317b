"""A local emulator of Segmind's Sora 2 API (see ``segmind-api.md``), for tests and demos without paying.

Public and stable: :class:`Sora2Emulator` and its control methods, and the ``sora2-emulator`` command (also
``python -m sora2_provider.testing.emulator``). It serves the inference, upload and history hosts on one port,
plus key-less test controls under ``/_emulator/``; every completed job's video is a test card of its request.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
import threading
import time
from typing import Any

from starlette.types import ASGIApp, Scope

from sora2_provider.testing._app import build_app
from sora2_provider.testing._outputs import OutputVideos
from sora2_provider.testing.backend import EmulatorState

__all__ = ["DEFAULT_API_KEY", "DEFAULT_BALANCE", "Sora2Emulator", "main"]

DEFAULT_API_KEY = "SG_emulator"
DEFAULT_BALANCE = 100.0


class Sora2Emulator:
    """Segmind's Sora 2 API on a local port, served by uvicorn in a background thread."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        time_scale: float = 1.0,
        api_keys: dict[str, float | None] | None = None,
        free_credits: float = 0.0,
        rate_limit_rpm: int | None = None,
        rate_limit_window: float = 60.0,
        record_ttl_seconds: float = 3600.0,
        pad_output_to: int | None = None,
        noise_video: bool = False,
        retired_models: tuple[str, ...] = (),
        forbidden_models: tuple[str, ...] = (),
    ) -> None:
        """``api_keys`` maps each accepted key to its credits (default ``{"SG_emulator": 100.0}``).

        Every completed job's MP4 is a test card showing its prompt, model, size, duration and request id, with a
        running timecode. ``pad_output_to`` serves every MP4 padded to that many bytes (a trailing ``free`` box),
        when it is at least 8 bytes more than the real file. ``noise_video`` serves MP4s of random pixels instead,
        of a real video's weight (megabytes a second). ``retired_models`` answer 410, ``forbidden_models`` 403.
        """
        self.host, self.port, self.pad_output_to = host, port, pad_output_to
        self.noise_video = noise_video
        self._videos = OutputVideos(pad_output_to, noise_video)
        self._state = EmulatorState(time_scale, record_ttl_seconds, rate_limit_rpm, rate_limit_window)
        for key, credits in (api_keys if api_keys is not None else {DEFAULT_API_KEY: DEFAULT_BALANCE}).items():
            self._state.set_balance(key, credits, free_credits)
        for models, state in ((retired_models, "retired"), (forbidden_models, "forbidden")):
            for model in models:
                self._state.set_model_state(model, state)
        self.app: ASGIApp = build_app(self._state, self._videos, self._close_connection)
        self._server: Any = None
        self._thread: threading.Thread | None = None
        self.url = ""

    # -- lifecycle -----------------------------------------------------------------------------------

    def start(self) -> Sora2Emulator:
        """Serve in a daemon thread; return once the port is bound and :attr:`url` is set."""
        import uvicorn  # lazy: uvicorn (emulator extra), loaded only when the emulator starts serving

        if self._server is not None:
            return self
        config = uvicorn.Config(
            self.app,
            host=self.host,
            port=self.port,
            log_level="warning",
            access_log=False,
            lifespan="off",
            http="h11",
            loop="asyncio",
            ws="none",
            timeout_graceful_shutdown=1,
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, name="sora2-emulator", daemon=True)
        self._thread.start()
        self._wait_until_started()
        port = self._server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://{_url_host(self.host)}:{port}"
        return self

    def _wait_until_started(self) -> None:
        deadline = time.monotonic() + 10
        while not self._server.started:
            if self._thread is None or not self._thread.is_alive() or time.monotonic() > deadline:
                self._server = None
                raise RuntimeError(f"the Sora 2 emulator could not serve on {self.host}:{self.port}")
            time.sleep(0.005)

    def stop(self) -> None:
        """Stop serving (in-flight answers get one second to finish) and delete the rendered videos."""
        if self._server is None or self._thread is None:
            return
        self._server.should_exit = True
        self._thread.join(timeout=5)
        if self._thread.is_alive():
            self._server.force_exit = True
            self._thread.join(timeout=5)
        self._server = self._thread = None
        self._videos.clear()

    def __enter__(self) -> Sora2Emulator:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -- test controls -------------------------------------------------------------------------------

    def set_balance(self, api_key: str, credits: float | None, free_credits: float | None = None) -> None:
        """Register ``api_key`` or change its balance; ``credits=None`` makes the credits call answer 404."""
        self._state.set_balance(api_key, credits, free_credits)

    def get_balance(self, api_key: str) -> dict[str, float | None]:
        """``{"credits", "free_credits"}`` of a key, after charging every job completed by now."""
        return self._state.balance(api_key).as_dict()

    def set_rate_window(self, api_key: str, calls: int, ends_in: float) -> None:
        """Make the current rate-limit window of ``api_key`` hold ``calls`` keyed calls and end ``ends_in`` seconds
        from now (at most ``rate_limit_window``): a test spends a window at its own pace, however long that takes
        on a busy machine, then gives it a known end."""
        self._state.set_rate_window(api_key, calls, ends_in)

    def set_model_state(self, model: str, state: str) -> None:
        """Make ``model`` ``available``, ``retired`` (410) or ``forbidden`` (403); any slug may be given."""
        self._state.set_model_state(model, state)

    def add_fault(
        self,
        endpoint: str,
        kind: str,
        *,
        on_call: int = 1,
        times: int = 1,
        status: int | None = None,
        message: str | None = None,
        delay: float | None = None,
        after_bytes: int | None = None,
    ) -> None:
        """Make calls ``on_call`` .. ``on_call + times - 1`` of ``endpoint``, counted from now, misbehave.

        Endpoints: submit_v2, submit_v1, status, result, download, credits, upload, asset, history,
        history_item. Kinds: ``status`` (answer ``status``, with ``message`` as the error if given),
        ``reset`` (close the connection unanswered), ``slow`` (wait ``delay`` s first; on download/submit_v1
        with ``after_bytes``, send that many body bytes, then pause ``delay`` s mid-stream), ``truncate``
        (download/submit_v1: full Content-Length, closed after ``after_bytes``), ``fail_job`` (the job
        ends FAILED with ``message``), ``submit_502_after_create`` / ``submit_drop_after_create`` (submit_v2:
        the job is created, runs and is charged, but the answer is a 502 / a dropped connection).
        """
        self._state.add_fault(
            endpoint,
            kind,
            on_call=on_call,
            times=times,
            status=status,
            message=message,
            delay=delay,
            after_bytes=after_bytes,
        )

    def clear_faults(self) -> None:
        """Remove every queued fault (call counts keep running)."""
        self._state.clear_faults()

    @property
    def ledger(self) -> list[dict[str, Any]]:
        """One entry per accepted job (v1 and v2): request_id, model, duration, size, status, charged, ..."""
        return self._state.ledger()

    @property
    def request_log(self) -> list[dict[str, Any]]:
        """Every Segmind call (controls excluded): endpoint, method, path, status (None: dropped), dropped, time."""
        return self._state.logged_requests()

    def charges(self) -> dict[str, float]:
        """``request_id -> credits charged`` for every charged job (so ``len`` counts them, ``sum`` totals)."""
        return self._state.charges()

    def running_jobs_peak(self) -> int:
        """Most jobs QUEUED or PROCESSING at the same moment so far."""
        return self._state.running_jobs_peak()

    def expire(self, request_id: str) -> None:
        """Expire a job's v2 record now: status and result answer 404; history and the output still work."""
        self._state.expire(request_id)

    def unlist(self, request_id: str) -> None:
        """Leave a job out of request-history listings, as a lagging history would (status and result work)."""
        self._state.unlist(request_id)

    def reset(self) -> None:
        """Forget faults, jobs (ledger, history and videos), uploads, call counts, rate windows and the request log."""
        self._state.reset()
        self._videos.clear()

    # -- the server side of a dropped connection ---------------------------------------------------------

    async def _close_connection(self, scope: Scope) -> None:
        """Close the client's connection (buffered bytes are still sent) and wait until it is gone."""
        connections = self._server.server_state.connections if self._server else set()
        protocol = next((c for c in list(connections) if c.client == scope.get("client")), None)
        if protocol is None:
            return
        protocol.transport.close()
        for _ in range(400):
            if protocol not in connections:
                return
            await asyncio.sleep(0.005)


def _url_host(host: str) -> str:
    if host in ("0.0.0.0", "::", ""):
        return "127.0.0.1"
    return f"[{host}]" if ":" in host else host


def main(argv: list[str] | None = None) -> int:
    """``sora2-emulator``: serve until SIGINT or SIGTERM; the first line on stdout is the base URL."""
    parser = argparse.ArgumentParser(prog="sora2-emulator", description="A local emulator of Segmind's Sora 2 API.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port (default)")
    parser.add_argument("--time-scale", type=float, default=1.0, help="multiplies generation and expiry times")
    parser.add_argument("--api-key", action="append", help=f"accepted key, repeatable (default {DEFAULT_API_KEY})")
    parser.add_argument("--balance", type=float, default=DEFAULT_BALANCE, help="credits of each key")
    parser.add_argument("--free-credits", type=float, default=0.0)
    parser.add_argument("--rate-limit-rpm", type=int, default=None, help="calls a key may make per window")
    parser.add_argument("--rate-limit-window", type=float, default=60.0, help="seconds (real, not scaled)")
    parser.add_argument("--record-ttl-seconds", type=float, default=3600.0, help="v2 record lifetime (scaled)")
    parser.add_argument("--pad-output-to", type=int, default=None, help="serve MP4s padded to this many bytes")
    args = parser.parse_args(argv)
    emulator = Sora2Emulator(
        args.host,
        args.port,
        time_scale=args.time_scale,
        api_keys={key: args.balance for key in (args.api_key or [DEFAULT_API_KEY])},
        free_credits=args.free_credits,
        rate_limit_rpm=args.rate_limit_rpm,
        rate_limit_window=args.rate_limit_window,
        record_ttl_seconds=args.record_ttl_seconds,
        pad_output_to=args.pad_output_to,
    )
    stopping = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stopping.set())
    with emulator:
        print(emulator.url, flush=True)
        print("Sora 2 emulator ready; controls under /_emulator/. Ctrl+C stops it.", file=sys.stderr, flush=True)
        while not stopping.wait(0.5):
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
