"""Reading what ``dag.test()`` printed: which exception line each task's tries ended with."""

from __future__ import annotations

import re
import sys
from typing import Any

import pytest

_START = re.compile(r"\[DAG TEST\] starting task_id=(\S+)")
_END = re.compile(r"\[DAG TEST\] end task task_id=(\S+)")
#: The last line of a Python traceback: ``package.module.SomeError: message`` at the start of a line.
_EXCEPTION_LINE = re.compile(r"^(?:[A-Za-z_][\w]*\.)*[A-Za-z_]\w*(?:Error|Exception|Timeout|Interrupt)(?:: .*)?$")


def task_error_lines(text: str) -> dict[str, list[str]]:
    """Exception lines printed while each task ran, in order (``dag.test()`` runs one task at a time)."""
    found: dict[str, list[str]] = {}
    current: str | None = None
    for line in text.splitlines():
        if started := _START.search(line):
            current = started.group(1)
            continue
        if _END.search(line):
            current = None
            continue
        if current is not None and _EXCEPTION_LINE.match(line.strip()):
            found.setdefault(current, []).append(line.strip())
    return found


class SessionConsole:
    """What the process printed while a wide-scoped fixture ran: pytest's global capture, read and echoed back.

    (The ``console`` fixture reads ``capfd``, which only exists per test.) Empty when pytest runs with ``-s``.
    """

    def __init__(self, config: pytest.Config) -> None:
        self.capman: Any = config.pluginmanager.getplugin("capturemanager")
        self.text = ""

    def read(self) -> str:
        if self.capman is None or not self.capman.is_globally_capturing():
            return ""
        out, err = self.capman.read_global_capture()
        sys.stdout.write(out)
        sys.stderr.write(err)
        self.text += out + err
        return out + err
