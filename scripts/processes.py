"""Processes that ``make demo``, ``make airflow`` and the tests start and stop by PID, each in a session of its own.

Airflow's task supervisors put each task process into a process group of its own, so a process group does not hold
everything a component started, but its session does: stopping or killing a process signals, by PID, every live
process whose session id is that process's PID. ``Processes.leftovers`` lists whatever is still alive in any session
ever started here. Also the Sora 2 emulator as such a process, and the calling environment without ``AIRFLOW*``.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil


@dataclass
class _Started:
    argv: list[str]
    env: dict[str, str]
    popen: subprocess.Popen[bytes]
    stop_signal: int
    stage: int
    user: str | None
    service: bool  # runs until stopped (False: a one-shot command, which may exit)
    killed: bool = False  # by ``Processes.kill``: down on purpose until restarted


class Processes:
    """Subprocesses in sessions of their own, known by name; whatever they fork stays findable by session id."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.started: dict[str, _Started] = {}
        self.sessions: set[int] = set()  # every session id (= leader PID) started here, restarted ones included
        self.stop_times: dict[str, float] = {}

    def start(
        self,
        name: str,
        argv: Sequence[str],
        env: dict[str, str],
        *,
        stop_signal: int = signal.SIGTERM,
        stage: int = 0,
        user: str | None = None,
        service: bool = True,
    ) -> subprocess.Popen[bytes]:
        """Start ``argv`` as ``name`` (output appended to ``<log_dir>/<name>.log``). ``stage``: lower stops first;
        ``user``: run as that user (and its group only); ``service=False``: a command that may exit by itself."""
        if name in self.started and self.started[name].popen.poll() is None:
            raise AssertionError(f"{name} is already running (PID {self.started[name].popen.pid})")
        self.log_dir.mkdir(parents=True, exist_ok=True)
        with (self.log_dir / f"{name}.log").open("ab") as log:
            popen = subprocess.Popen(
                list(argv),
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # session id = its PID: everything it forks can be found by that id
                **as_user(user),
            )
        self.started[name] = _Started(list(argv), env, popen, stop_signal, stage, user, service)
        self.sessions.add(popen.pid)
        return popen

    def restart(self, name: str) -> subprocess.Popen[bytes]:
        """Start ``name`` again with the same command and environment (after it was killed or stopped)."""
        old = self.started[name]
        return self.start(
            name, old.argv, old.env, stop_signal=old.stop_signal, stage=old.stage, user=old.user, service=old.service
        )

    def pid(self, name: str) -> int:
        return self.started[name].popen.pid

    def alive(self, name: str) -> bool:
        return name in self.started and self.started[name].popen.poll() is None

    def check_alive(self, names: Sequence[str] | None = None) -> None:
        """Fail with the log tail of any of ``names`` (default: every service not killed on purpose) that exited."""
        for name in names if names is not None else [n for n, s in self.started.items() if s.service and not s.killed]:
            proc = self.started[name].popen
            if proc.poll() is not None:
                raise AssertionError(f"{name} (PID {proc.pid}) exited with {proc.returncode}:\n{self.log_tail(name)}")

    def session(self, name: str) -> list[psutil.Process]:
        """The live processes of ``name``'s session: the leader and everything it forked, at any depth."""
        return in_sessions({self.pid(name)})

    def kill(self, name: str, sig: int = signal.SIGKILL, timeout: float = 30) -> list[int]:
        """Send ``sig`` to every process of ``name``'s session, by PID, until none is left; return their PIDs."""
        killed: list[int] = []
        deadline = time.monotonic() + timeout
        while members := self.session(name):
            for proc in members:
                with contextlib.suppress(psutil.NoSuchProcess):
                    proc.send_signal(sig)
                    killed.append(proc.pid)
            psutil.wait_procs(members, timeout=2)
            if time.monotonic() > deadline:
                raise AssertionError(f"{name}: processes still alive after {sig!r}: {self.session(name)}")
        self.started[name].popen.wait(timeout=10)
        self.started[name].killed = True
        return sorted(set(killed))

    def stop(self, grace: float = 30) -> dict[str, float]:
        """Stop every running process, stage by stage: its stop signal to the leader by PID, up to ``grace`` s to
        exit, then SIGKILL to whatever is left in its session. Records the seconds each leader took to exit."""
        for stage in sorted({started.stage for started in self.started.values()}):
            names = [name for name, started in self.started.items() if started.stage == stage]
            began = time.monotonic()
            for name in names:
                if self.alive(name):
                    self.started[name].popen.send_signal(self.started[name].stop_signal)
            for name in names:
                popen = self.started[name].popen
                with contextlib.suppress(subprocess.TimeoutExpired):
                    popen.wait(timeout=max(0.1, began + grace - time.monotonic()))
                    self.stop_times[name] = round(time.monotonic() - began, 1)
            for name in names:
                self.kill(name)
        return self.stop_times

    def leftovers(self) -> list[str]:
        """Every process still alive in any session started here (empty once everything is stopped)."""
        return [f"{p.pid} {' '.join(_cmdline(p))[:200]}" for p in in_sessions(self.sessions)]

    def log_tail(self, name: str, lines: int = 40) -> str:
        path = self.log_dir / f"{name}.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""


def as_user(user: str | None) -> dict[str, Any]:
    return {} if user is None else {"user": user, "group": user, "extra_groups": []}


def in_sessions(sessions: set[int]) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter():
        with contextlib.suppress(ProcessLookupError, psutil.NoSuchProcess, psutil.ZombieProcess):
            if os.getsid(proc.pid) in sessions and proc.status() != psutil.STATUS_ZOMBIE:
                found.append(proc)
    return found


def _cmdline(proc: psutil.Process) -> list[str]:
    try:
        return proc.cmdline()
    except psutil.Error:
        return ["?"]


# ---------------------------------------------------------------------------------------------- shared by the scripts

#: The API key ``make demo`` and ``make airflow`` give the emulator and the ``sora2_default`` connection.
LOCAL_API_KEY = "SG_local_0000"
EMULATOR_URL = re.compile(r"^http://127\.0\.0\.1:\d+", re.MULTILINE)


def without_airflow_settings() -> dict[str, str]:
    """This process's environment without any ``AIRFLOW*`` variable: a script's Airflow never reads the caller's."""
    return {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}


def start_emulator(processes: Processes, *, time_scale: float, balance: float, timeout: float = 60) -> str:
    """Start the Sora 2 emulator (``sora2-emulator``) on a free loopback port as ``emulator``; return its base URL,
    the first line it prints."""
    argv = [
        sys.executable, "-m", "sora2_provider.testing.emulator", "--host", "127.0.0.1", "--port", "0",
        "--time-scale", str(time_scale), "--api-key", LOCAL_API_KEY, "--balance", str(balance),
    ]  # fmt: skip
    log = processes.log_dir / "emulator.log"
    offset = log.stat().st_size if log.exists() else 0  # the log is appended to: read this start's lines only
    processes.start("emulator", argv, without_airflow_settings())
    deadline = time.monotonic() + timeout
    while not (found := EMULATOR_URL.search(log.read_bytes()[offset:].decode(errors="replace"))):
        if not processes.alive("emulator"):
            raise SystemExit(f"the Sora 2 emulator exited:\n{processes.log_tail('emulator')}")
        if time.monotonic() > deadline:
            raise SystemExit(f"the Sora 2 emulator did not start within {timeout:.0f} s; log: {log}")
        time.sleep(0.1)  # poll its log for the URL line
    return found.group(0)
