"""Fixtures of the hook tests: an emulator of their own with a distinctive key, and a guard against leaking it."""

from __future__ import annotations

import json
import os
import sys
import tempfile
from collections.abc import Callable, Iterator
from typing import Any

import pytest

os.environ.setdefault("AIRFLOW_HOME", tempfile.mkdtemp(prefix="sora2-hook-tests-"))

from tests.hook.support import HOOK_KEY, RATE_WINDOW, TIME_SCALE


@pytest.fixture
def hook_emulator() -> Iterator[Any]:
    """A fresh emulator over real HTTP: a 180 s render takes about 0.36 s; the key has 100 credits."""
    from sora2_provider.testing.emulator import Sora2Emulator

    with Sora2Emulator(time_scale=TIME_SCALE, api_keys={HOOK_KEY: 100.0}, rate_limit_window=RATE_WINDOW) as emulator:
        yield emulator


@pytest.fixture
def set_connection(monkeypatch: pytest.MonkeyPatch) -> Callable[..., None]:
    """Define ``sora2_default`` by environment variable: ``set_connection(host, password=HOOK_KEY, **extra)``."""

    def define(host: str | None, password: str | None = HOOK_KEY, **extra: Any) -> None:
        conn: dict[str, Any] = {"conn_type": "sora2", "host": host, "password": password, "extra": extra}
        monkeypatch.setenv("AIRFLOW_CONN_SORA2_DEFAULT", json.dumps({k: v for k, v in conn.items() if v}))

    return define


@pytest.fixture
def make_hook(hook_emulator: Any, set_connection: Callable[..., None]) -> Callable[..., Any]:
    """A hook on the emulator with tiny backoff waits: ``make_hook(max_retries=3, key=HOOK_KEY, **extra)``."""
    from sora2_provider.hooks.sora2 import Sora2Hook

    def build(max_retries: int = 3, key: str | None = HOOK_KEY, host: str | None = None, **extra: Any) -> Sora2Hook:
        set_connection(host or hook_emulator.url, key, **extra)
        hook = Sora2Hook(max_retries=max_retries, max_wait=5.0)
        hook.retry_backoff_initial = 0.01
        hook.retry_backoff_max = 0.05
        return hook

    return build


@pytest.fixture
def hook(make_hook: Callable[..., Any]) -> Any:
    return make_hook()


@pytest.fixture(autouse=True)
def no_hook_key_leak(caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]) -> Iterator[None]:
    """Fail any hook test whose DEBUG logs or console output contain the key."""
    caplog.set_level("DEBUG")
    yield
    out, err = capfd.readouterr()
    sys.stdout.write(out)
    sys.stderr.write(err)
    for where, text in (("log records", caplog.text), ("stdout", out), ("stderr", err)):
        assert HOOK_KEY not in text, f"the API key leaked into {where}"
