"""Real MP4 files for the emulator, and padding them to any size without holding them in memory.

Public and stable, like the rest of :mod:`sora2_provider.testing`. The videos are H.264 (libx264, or MPEG-4
part 2 where the PyAV build lacks it) of the exact requested size and duration: a job's test card
(:func:`card_mp4`), or plain / random frames cached on disk (:func:`mp4_file`). PyAV and Pillow come with the
``emulator`` extra. A padded file is the real MP4 followed by one ``free`` box of zeros (:func:`pad_mp4`).
"""

from __future__ import annotations

import os
import struct
import tempfile
import threading
from collections.abc import Callable, Iterable, Iterator
from io import BytesIO
from pathlib import Path
from typing import BinaryIO

import av

from sora2_provider.testing._card import TestCard

__all__ = [
    "CARD_FPS",
    "CHUNK_SIZE",
    "DEFAULT_FPS",
    "TestCard",
    "cache_dir",
    "card_mp4",
    "free_box_header",
    "is_valid_mp4_prefix",
    "make_mp4",
    "mp4_file",
    "pad_mp4",
    "padded_size",
]

DEFAULT_FPS = 4
CARD_FPS = 8
CHUNK_SIZE = 1 << 20
_FORMAT_VERSION = 1  # bump when the encoding changes, so stale cache files are not served
_MAX_32BIT_BOX = 0xFFFFFFFF
_generate_lock = threading.Lock()
_ZEROS = bytes(CHUNK_SIZE)


def cache_dir() -> Path:
    """Directory of the cached MP4s: ``$SORA2_EMULATOR_CACHE`` or ``~/.cache/sora2-emulator``."""
    configured = os.environ.get("SORA2_EMULATOR_CACHE")
    return Path(configured) if configured else Path.home() / ".cache" / "sora2-emulator"


def mp4_file(width: int, height: int, seconds: int, fps: int = DEFAULT_FPS, *, noise: bool = False) -> Path:
    """Path of a cached MP4 of this size and duration, encoding it first when it is not cached yet.

    ``noise`` makes frames of random pixels instead of solid colours: an MP4 of a real video's weight (about
    3 MB a second at 720p instead of a few KB), for players that must fetch byte ranges as they seek."""
    suffix = "-noise" if noise else ""
    path = cache_dir() / f"v{_FORMAT_VERSION}-{width}x{height}-{seconds}s-{fps}fps{suffix}.mp4"
    if path.is_file():
        return path
    with _generate_lock:
        if not path.is_file():
            path.parent.mkdir(parents=True, exist_ok=True)
            frames = _plain_frames(width, height, seconds * fps, noise)
            kind = "noise" if noise else "plain"
            _write_atomically(path, lambda target: _encode(target, width, height, fps, frames, kind=kind))
    return path


def make_mp4(width: int, height: int, seconds: int, fps: int = DEFAULT_FPS) -> bytes:
    """The bytes of a valid MP4 of ``width`` x ``height`` lasting ``seconds`` (cached on disk)."""
    return mp4_file(width, height, seconds, fps).read_bytes()


def _write_atomically(path: Path, write: Callable[[str], None]) -> None:
    handle, temp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    os.close(handle)
    try:
        write(temp)
        os.replace(temp, path)
    finally:
        if os.path.exists(temp):
            os.remove(temp)


def card_mp4(card: TestCard, fps: int = CARD_FPS) -> bytes:
    """The MP4 of a test card: its text on every frame, a running timecode and a sweeping bar; same card, same bytes."""
    buffer = BytesIO()
    frames = (av.VideoFrame.from_image(image) for image in card.frames(fps))
    _encode(buffer, card.width, card.height, fps, frames, kind="card")
    return buffer.getvalue()


def _pick_codec() -> str:
    try:
        av.codec.Codec("libx264", "w")
        return "libx264"
    except Exception:  # any lookup failure means this build lacks it
        return "mpeg4"


def _plain_frames(width: int, height: int, count: int, noise: bool) -> Iterator[av.VideoFrame]:
    """Solid frames whose colour drifts, so the video is not one still image; or frames of random pixels."""
    for index in range(count):
        yield _noise_frame(width, height) if noise else _solid_frame(width, height, luma=40 + (index * 7) % 180)


def _encode(
    target: str | BinaryIO, width: int, height: int, fps: int, frames: Iterable[av.VideoFrame], *, kind: str
) -> None:
    """Encode ``frames`` at ``fps``; ``kind`` (``plain``, ``noise`` or ``card``) picks the quality settings."""
    codec = _pick_codec()
    with av.open(target, mode="w", format="mp4") as container:
        stream = container.add_stream(codec, rate=fps)
        assert isinstance(stream, av.VideoStream)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.bit_rate = {"noise": 25_000_000, "card": 2_000_000}.get(kind, 50_000)
        if codec == "libx264":
            stream.options = _x264_options(kind, fps)
        else:
            stream.codec_context.thread_count = 1
        for index, frame in enumerate(frames):
            frame.pts = index
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))


def _x264_options(kind: str, fps: int) -> dict[str, object]:
    if kind == "noise":
        return {"preset": "ultrafast", "crf": "30", "g": str(fps)}  # a keyframe a second, as real videos
    if kind == "card":
        # sharp text, a keyframe every 4 s, and a fixed thread count: the same card gives the same bytes on any machine
        return {"preset": "ultrafast", "tune": "stillimage", "crf": "28", "g": str(4 * fps), "threads": "2"}
    return {"preset": "ultrafast", "tune": "stillimage", "crf": "40"}


def _noise_frame(width: int, height: int) -> av.VideoFrame:
    frame = av.VideoFrame(width, height, "yuv420p")
    for plane in frame.planes:
        plane.update(os.urandom(plane.buffer_size))
    return frame


def _solid_frame(width: int, height: int, luma: int) -> av.VideoFrame:
    frame = av.VideoFrame(width, height, "yuv420p")
    for plane, value in zip(frame.planes, (luma, 96, 160), strict=True):
        plane.update(bytes([value]) * plane.buffer_size)
    return frame


def is_valid_mp4_prefix(data: bytes) -> bool:
    """True when ``data`` starts with an ``ftyp`` box, as every MP4 must."""
    return len(data) >= 8 and data[4:8] == b"ftyp" and struct.unpack(">I", data[:4])[0] >= 8


def free_box_header(box_size: int) -> bytes:
    """Header of a ``free`` box of ``box_size`` bytes in all; 64-bit (``size=1`` + largesize) above 4 GiB-1."""
    if box_size < 8:
        raise ValueError(f"a free box needs at least 8 bytes, not {box_size}")
    if box_size <= _MAX_32BIT_BOX:
        return struct.pack(">I4s", box_size, b"free")
    return struct.pack(">I4sQ", 1, b"free", box_size)


def padded_size(real_size: int, total_size: int | None) -> int:
    """The size actually served: ``total_size`` when a free box fits (8+ bytes over the real file), else real."""
    if total_size is None or total_size < real_size + 8:
        return real_size
    return total_size


def pad_mp4(
    data_or_path: bytes | str | os.PathLike[str],
    total_size: int,
    start: int = 0,
    stop: int | None = None,
    chunk_size: int = CHUNK_SIZE,
) -> Iterator[bytes]:
    """Yield bytes ``[start, stop)`` of the MP4 padded to exactly ``total_size`` bytes with a ``free`` box.

    ``total_size`` equal to the real size yields the file unchanged; otherwise it must exceed it by at
    least 8 bytes. Only one chunk is in memory at a time, whatever ``total_size`` is.
    """
    real_size = len(data_or_path) if isinstance(data_or_path, bytes) else os.path.getsize(data_or_path)
    if total_size < real_size:
        raise ValueError(f"cannot pad a {real_size}-byte MP4 down to {total_size} bytes")
    header = free_box_header(total_size - real_size) if total_size > real_size else b""
    stop = total_size if stop is None else min(stop, total_size)
    segments = (
        (0, real_size, _reader(data_or_path)),
        (real_size, len(header), lambda offset, size: header[offset : offset + size]),
        (real_size + len(header), total_size - real_size - len(header), _zeros),
    )
    for begin, length, read in segments:
        offset, end = max(start, begin), min(stop, begin + length)
        while offset < end:
            chunk = read(offset - begin, min(chunk_size, end - offset))
            yield chunk
            offset += len(chunk)


def _zeros(_offset: int, size: int) -> bytes:
    return _ZEROS[:size] if size <= len(_ZEROS) else bytes(size)


def _reader(data_or_path: bytes | str | os.PathLike[str]) -> Callable[[int, int], bytes]:
    if isinstance(data_or_path, bytes):
        data = data_or_path
        return lambda offset, size: data[offset : offset + size]

    def read(offset: int, size: int) -> bytes:
        with open(data_or_path, "rb") as handle:
            handle.seek(offset)
            return handle.read(size)

    return read
