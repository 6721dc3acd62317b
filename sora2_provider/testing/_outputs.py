"""The MP4 each completed job is served: its test card, rendered on first request into this emulator's own temporary
directory (or a shared noise video, for players that need a real video's weight), and the size it is served at."""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
import weakref
from pathlib import Path

from sora2_provider.testing.backend import Job
from sora2_provider.testing.video import TestCard, card_mp4, mp4_file, padded_size


class OutputVideos:
    """One emulator's job videos; :meth:`clear` deletes the rendered cards (they are rendered again when asked)."""

    def __init__(self, pad_output_to: int | None = None, noise: bool = False) -> None:
        self.pad_output_to, self.noise = pad_output_to, noise
        self._directory: Path | None = None
        self._remove_directory: weakref.finalize | None = None  # also at exit, if the emulator is never stopped
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()

    def file(self, job: Job) -> tuple[Path, int]:
        """The job's MP4 (rendered now when new: call it off the event loop) and the size it is served at."""
        width, height = _dimensions(job.request.size)
        if self.noise:
            path = mp4_file(width, height, job.request.duration, noise=True)
        else:
            path = self._card_file(job, width, height)
        return path, padded_size(path.stat().st_size, self.pad_output_to)

    def clear(self) -> None:
        """Delete the rendered cards."""
        with self._guard:
            remove, self._remove_directory, self._directory = self._remove_directory, None, None
            self._locks.clear()
        if remove is not None:
            remove()

    def _card_file(self, job: Job, width: int, height: int) -> Path:
        request = job.request
        path = self._folder() / f"{job.request_id}.mp4"
        with self._lock(job.request_id):
            if not path.is_file():
                card = TestCard(request.prompt, request.model, width, height, request.duration, job.request_id)
                _write_atomically(path, card_mp4(card))
        return path

    def _folder(self) -> Path:
        with self._guard:
            if self._directory is None:
                self._directory = Path(tempfile.mkdtemp(prefix="sora2-emulator-cards-"))
                self._remove_directory = weakref.finalize(self, shutil.rmtree, self._directory, True)
            return self._directory

    def _lock(self, request_id: str) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault(request_id, threading.Lock())


def _write_atomically(path: Path, data: bytes) -> None:
    """Write ``data`` so that a reader sees the whole file or none."""
    temporary = path.with_suffix(".tmp")
    temporary.write_bytes(data)
    os.replace(temporary, path)


def _dimensions(size: str) -> tuple[int, int]:
    width, height = size.split("x")
    return int(width), int(height)
