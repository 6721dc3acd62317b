"""``make airflow`` as a newcomer runs it: the printed block's Video tab plays the example run's video in Chromium,
and Ctrl-C (SIGINT to the terminal's process group) or SIGTERM leaves nothing running and the port free.

``make airflow`` runs in a session of its own with ``PORT`` set to a free port and ``--home`` in a temp dir (the
checkout's ``.airflow/`` is a developer's own). What it started is found by psutil: every descendant of ``make``
while it runs, and every process in their sessions (LocalExecutor task processes come and go)."""

from __future__ import annotations

import os
import queue
import re
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import pytest
from playwright.sync_api import BrowserContext, expect

from scripts.processes import in_sessions
from tests.support import free_port, wait_for
from tests.ui.test_plugin import VIDEO_TAB, plugin_frame

pytestmark = [pytest.mark.ui, pytest.mark.timeout(900)]

REPO = Path(__file__).resolve().parents[2]
READY_TIMEOUT = 600  # seconds from `make airflow` to its ready block (about a minute idle)
STOP_TIMEOUT = 120
#: A playing video: decoded frames, a duration, and its clock moving.
PLAYS = """() => new Promise(done => { const v = document.querySelector('video'); v.muted = true;
  const start = v.currentTime; v.play();
  setTimeout(() => done({readyState: v.readyState, duration: v.duration, moved: v.currentTime - start}), 1500); })"""


@dataclass
class Started:
    """A running ``make airflow``: its process, what it printed, the ready block's fields and the processes seen."""

    popen: subprocess.Popen[str]
    port: int
    output: list[str] = field(default_factory=list)
    block: dict[str, str] = field(default_factory=dict)
    seen: dict[int, float] = field(default_factory=dict)  # PID -> create time (so a reused PID does not count)
    sessions: set[int] = field(default_factory=set)
    lines: queue.Queue[str | None] = field(default_factory=queue.Queue)

    def read(self, timeout: float) -> str | None:
        """The next line printed, or None at the end of the output."""
        line = self.lines.get(timeout=timeout)
        if line is not None:
            self.output.append(line)
        return line

    def note_processes(self) -> None:
        """Record every descendant of ``make`` and its session."""
        with_children = [psutil.Process(self.popen.pid)]
        with_children += with_children[0].children(recursive=True)
        for proc in with_children:
            try:
                self.seen[proc.pid] = proc.create_time()
                self.sessions.add(os.getsid(proc.pid))
            except (psutil.NoSuchProcess, ProcessLookupError):
                continue
        self.sessions.discard(os.getsid(0))  # pytest's own session

    def alive(self) -> list[str]:
        """What is still running of every process seen and of every session they ran in."""
        left = []
        for pid, created in self.seen.items():
            try:
                proc = psutil.Process(pid)
                if proc.create_time() == created and proc.status() != psutil.STATUS_ZOMBIE:
                    left.append(f"{pid} {' '.join(proc.cmdline())[:120]}")
            except psutil.NoSuchProcess:
                continue
        return left + [f"{p.pid} (session)" for p in in_sessions(self.sessions) if p.pid not in self.seen]


def start_make_airflow(home: Path) -> Started:
    port = free_port()
    argv = ["make", "--no-print-directory", "airflow", f"PORT={port}", f"AIRFLOW_ARGS=--home {home}"]
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS")}
    popen = subprocess.Popen(
        argv, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    started = Started(popen, port)

    def pump() -> None:
        for line in popen.stdout or ():
            started.lines.put(line.rstrip("\n"))
        started.lines.put(None)

    threading.Thread(target=pump, daemon=True).start()
    return started


def read_ready_block(started: Started) -> None:
    """Read the output up to the end of the ready block (two lines of ``=``), noting processes as they appear."""
    deadline = time.monotonic() + READY_TIMEOUT
    banners = 0
    while banners < 2:
        started.note_processes()
        try:
            line = started.read(timeout=1)
        except queue.Empty:
            assert time.monotonic() < deadline, "no ready block:\n" + "\n".join(started.output[-40:])
            continue
        assert line is not None, "make airflow ended before its ready block:\n" + "\n".join(started.output[-40:])
        if re.fullmatch(r"=+", line):
            banners += 1
        elif banners == 1 and (field := re.match(r"\s+([\w ]+?):\s+(.+)$", line)):
            started.block[field.group(1)] = field.group(2)
    started.note_processes()


def stop(started: Started, sig: int) -> int:
    """Send ``sig`` as a terminal would (SIGINT to the process group) or a supervisor (SIGTERM to make's PID); return
    make's exit code once the output ended."""
    if sig == signal.SIGINT:
        os.killpg(started.popen.pid, sig)
    else:
        started.popen.send_signal(sig)
    code = started.popen.wait(timeout=STOP_TIMEOUT)
    while started.read(timeout=10) is not None:
        pass
    return code


def port_free(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as a server binds: TIME_WAIT does not count
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def kill_leftovers(started: Started) -> None:
    """Whatever a failed test left: SIGKILL by PID."""
    for pid, created in started.seen.items():
        try:
            proc = psutil.Process(pid)
            if proc.create_time() == created:
                proc.kill()
        except psutil.NoSuchProcess:
            continue
    for proc in in_sessions(started.sessions):
        proc.kill()


@pytest.fixture(scope="module")
def local_airflow(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Started]:
    started = start_make_airflow(tmp_path_factory.mktemp("local-airflow") / "home")
    try:
        read_ready_block(started)
        yield started
    finally:
        if started.popen.poll() is None:
            started.popen.kill()
        kill_leftovers(started)


def test_the_printed_video_tab_plays_the_example_video(
    local_airflow: Started, browser_context: BrowserContext
) -> None:
    block = local_airflow.block
    url = f"http://127.0.0.1:{local_airflow.port}"
    assert block["Video tab"].startswith(f"{url}/dags/sora2_daily_video/runs/"), block
    assert block["Sora 2 page"] == f"{url}/plugin/sora2", block
    assert block["Login"].startswith("none needed"), block  # the simple auth manager, every visitor an admin
    page = browser_context.new_page()
    try:
        page.goto(block["Video tab"])
        frame = plugin_frame(page, "Video", VIDEO_TAB)
        frame.wait_for_function("() => document.querySelector('video')?.readyState >= 2")
        player = frame.evaluate(PLAYS)
        assert player["readyState"] >= 2 and player["duration"] > 0 and player["moved"] > 0, player
        page.goto(block["Sora 2 page"])
        expect(plugin_frame(page, "Sora 2", re.compile(r"/sora2/(\?.*)?$")).locator("video").first).to_be_attached()
    finally:
        page.close()


def test_ctrl_c_stops_every_process_and_frees_the_port(local_airflow: Started) -> None:
    assert len(local_airflow.sessions) >= 5, local_airflow.seen  # the emulator and four Airflow components at least
    code = stop(local_airflow, signal.SIGINT)
    assert any("nothing left running" in line for line in local_airflow.output[-5:]), local_airflow.output[-20:]
    assert code in (0, -signal.SIGINT), code  # make, interrupted itself, ends by the same signal once its child is done
    assert local_airflow.alive() == []
    assert port_free(local_airflow.port)


def test_sigterm_during_the_start_stops_what_was_started(tmp_path: Path) -> None:
    """SIGTERM to make (a supervisor's stop) once the Airflow components run, before the ready block."""
    started = start_make_airflow(tmp_path / "home")
    try:
        wait_for("the Airflow components started", lambda: _components_started(started), timeout=READY_TIMEOUT)
        stop(started, signal.SIGTERM)
        assert any("nothing left running" in line for line in started.output[-5:]), started.output[-20:]
        assert started.alive() == []
        assert port_free(started.port)
    finally:
        kill_leftovers(started)


def _components_started(started: Started) -> bool:
    started.note_processes()
    while True:
        try:
            line = started.read(timeout=0.1)
        except queue.Empty:
            break
        assert line is not None, "make airflow ended:\n" + "\n".join(started.output[-40:])
    return any("Starting api-server" in line for line in started.output) and len(started.sessions) >= 5
