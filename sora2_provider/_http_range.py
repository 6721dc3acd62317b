"""One ``Range: bytes=...`` header, read as RFC 9110 says: the plugin's video route and the emulator's downloads."""

from __future__ import annotations


class RangeNotSatisfiable(Exception):
    """A ``Range`` that starts at or past the end of the object (HTTP 416)."""


def byte_range(header: str | None, size: int) -> tuple[int, int] | None:
    """``[start, stop)`` of a single-range ``Range: bytes=...`` header, or None to send the whole object (no
    header, a malformed one or several ranges: RFC 9110 lets a server ignore those). Raises
    :class:`RangeNotSatisfiable` for a range starting at or past ``size``."""
    if not header or not header.strip().lower().startswith("bytes="):
        return None
    spec = header.strip()[len("bytes=") :].strip()
    if "," in spec or "-" not in spec:
        return None
    first, last = (part.strip() for part in spec.split("-", 1))
    try:
        if not first:  # suffix: the last N bytes
            length = int(last)
            if length <= 0 or size == 0:
                raise RangeNotSatisfiable(header)
            return max(0, size - length), size
        start = int(first)
        stop = size if not last else int(last) + 1
    except ValueError:
        return None
    if start >= size:
        raise RangeNotSatisfiable(header)
    if stop <= start:
        return None
    return start, min(stop, size)
