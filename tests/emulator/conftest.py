"""Fixtures of the emulator tests: one shared fast emulator (reset before each test), a factory for
emulators with special settings, and a small HTTP client that polls with a deadline."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import requests

from sora2_provider.testing.emulator import Sora2Emulator

API_KEY = "SG_c0ffee5ec7e70042"  # the key tests/conftest.py guards against leaking
OTHER_KEY = "SG_0123456789abcdef"
BALANCE = 100.0
TIME_SCALE = 0.002  # sora-2 renders in 0.36 s, sora-2-pro in 0.8 s
TERMINAL = ("COMPLETED", "FAILED")
OWN_KEY = "<own key>"  # default of ``Api.get``/``post``: send this Api's key; None sends no key


class Api:
    """``requests`` against one emulator, with the test key unless told otherwise."""

    def __init__(self, emulator: Sora2Emulator, api_key: str = API_KEY) -> None:
        self.emulator, self.api_key = emulator, api_key
        self.session = requests.Session()

    def url(self, path_or_url: str) -> str:
        return path_or_url if path_or_url.startswith("http") else self.emulator.url + path_or_url

    def headers(self, api_key: str | None, extra: dict[str, str] | None) -> dict[str, str]:
        api_key = self.api_key if api_key == OWN_KEY else api_key
        headers = {"x-api-key": api_key} if api_key else {}
        return {**headers, **(extra or {})}

    def get(self, path: str, api_key: str | None = OWN_KEY, headers: dict[str, str] | None = None,
            **kwargs: Any) -> requests.Response:
        return self.session.get(self.url(path), headers=self.headers(api_key, headers), timeout=30, **kwargs)

    def post(self, path: str, api_key: str | None = OWN_KEY, headers: dict[str, str] | None = None,
             **kwargs: Any) -> requests.Response:
        return self.session.post(self.url(path), headers=self.headers(api_key, headers), timeout=30, **kwargs)

    def submit(self, model: str = "sora-2", **body: Any) -> dict[str, Any]:
        """Submit a v2 job (prompt and 4 s by default) and return the accepted answer."""
        answer = self.post(f"/v2/{model}", json={"prompt": "a lighthouse at dusk", "duration": 4, **body})
        assert answer.status_code == 200, answer.text
        return answer.json()

    def poll(self, request_id: str, until: tuple[str, ...] = TERMINAL, timeout: float = 15.0) -> list[str]:
        """Poll the status until one of ``until``; return every status seen, in order."""
        seen: list[str] = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status = self.get(f"/v2/requests/{request_id}/status").json()["status"]
            if not seen or seen[-1] != status:
                seen.append(status)
            if status in until:
                return seen
            time.sleep(0.01)
        raise AssertionError(f"job {request_id} still {seen[-1:]} after {timeout} s")


def wait_for(condition: Callable[[], Any], timeout: float = 10.0, what: str = "condition") -> Any:
    """Poll ``condition`` until it returns something truthy, failing after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.01)
    raise AssertionError(f"{what} not reached within {timeout} s")


@pytest.fixture(scope="session")
def shared_emulator() -> Iterator[Sora2Emulator]:
    with Sora2Emulator(time_scale=TIME_SCALE, api_keys={API_KEY: BALANCE, OTHER_KEY: BALANCE}) as emulator:
        yield emulator


@pytest.fixture
def emu(shared_emulator: Sora2Emulator) -> Sora2Emulator:
    """The shared emulator with no jobs, faults or log, both keys at 100 credits, both models available."""
    shared_emulator.reset()
    for key in (API_KEY, OTHER_KEY):
        shared_emulator.set_balance(key, BALANCE, 0.0)
    for model in ("sora-2", "sora-2-pro"):
        shared_emulator.set_model_state(model, "available")
    return shared_emulator


@pytest.fixture
def api(emu: Sora2Emulator) -> Api:
    return Api(emu)


@pytest.fixture
def other_api(emu: Sora2Emulator) -> Api:
    """The shared emulator as seen by a second account."""
    return Api(emu, OTHER_KEY)


@pytest.fixture
def api_for() -> Callable[..., Api]:
    """``api_for(emulator, api_key=<test key>)``: an :class:`Api` of another emulator or key."""
    return Api


@pytest.fixture(name="wait_for")
def wait_for_fixture() -> Callable[..., Any]:
    return wait_for


@pytest.fixture
def make_emulator() -> Iterator[Callable[..., Sora2Emulator]]:
    """Start emulators with special settings (stopped after the test); the test key has 100 credits."""
    started: list[Sora2Emulator] = []

    def make(**kwargs: Any) -> Sora2Emulator:
        kwargs.setdefault("time_scale", TIME_SCALE)
        kwargs.setdefault("api_keys", {API_KEY: BALANCE})
        emulator = Sora2Emulator(**kwargs).start()
        started.append(emulator)
        return emulator

    yield make
    for emulator in started:
        emulator.stop()
