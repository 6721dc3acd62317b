"""The emulator's test card: one job's prompt, model, size, duration and request id drawn on every frame, with a
running timecode and a bar that sweeps across as the video plays. Pillow draws it (``emulator`` extra); the text
is laid out once and only the moving parts are drawn per frame."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from PIL import Image, ImageDraw, ImageFont

__all__ = ["TestCard"]

_BACKGROUND = (16, 20, 28)
_PANEL = (30, 36, 48)
_LABEL = (150, 160, 180)
_TEXT = (240, 242, 246)
_ACCENT = (255, 196, 0)
# The seven bars of a classic colour test card (75% white, yellow, cyan, green, magenta, red, blue).
_BARS = ((191, 191, 191), (191, 191, 0), (0, 191, 191), (0, 191, 0), (191, 0, 191), (191, 0, 0), (0, 0, 191))
_ELLIPSIS = "…"


@dataclass(frozen=True)
class TestCard:
    """What one card shows; the same card always gives the same frames."""

    __test__ = False  # not a pytest test class, whatever its name

    prompt: str
    model: str
    width: int
    height: int
    seconds: int
    request_id: str

    def frames(self, fps: int) -> Iterator[Image.Image]:
        """``seconds * fps`` RGB frames: the card at ``0, 1/fps, 2/fps, ...`` seconds."""
        layout = _Layout(self)
        base = layout.base()
        total = self.seconds * fps
        for index in range(total):
            frame = base.copy()
            layout.draw_moving(frame, index, fps, total)
            yield frame


class _Layout:
    """Where each part of a card goes, in pixels, scaled from the frame's shorter side."""

    def __init__(self, card: TestCard) -> None:
        self.card = card
        unit = min(card.width, card.height)
        self.margin = round(unit * 0.05)
        self.label_font = ImageFont.load_default(size=max(10, round(unit * 0.028)))
        self.meta_font = ImageFont.load_default(size=max(12, round(unit * 0.036)))
        self.prompt_font = ImageFont.load_default(size=max(14, round(unit * 0.052)))
        self.clock_font = ImageFont.load_default(size=max(16, round(unit * 0.075)))
        self.bars_height = round(card.height * 0.045)
        self.track_height = max(6, round(unit * 0.03))
        self.strip_top = card.height - self.margin - self.track_height - round(unit * 0.11)

    def base(self) -> Image.Image:
        """Everything that does not move: the colour bars, the header, the prompt and the job's details."""
        card, margin = self.card, self.margin
        image = Image.new("RGB", (card.width, card.height), _BACKGROUND)
        draw = ImageDraw.Draw(image)
        self._colour_bars(draw)
        top = self.bars_height + margin // 2
        draw.text((margin, top), "SORA 2 EMULATOR · TEST CARD", font=self.label_font, fill=_ACCENT)
        top += self._line_height(self.label_font) * 2
        details = [
            ("model", card.model),
            ("size", f"{card.width}x{card.height}"),
            ("duration", f"{card.seconds} s"),
            ("request id", card.request_id),
        ]
        details_height = len(details) * self._line_height(self.meta_font) + margin // 2
        prompt_bottom = self.strip_top - details_height - margin // 2
        top = self._prompt(draw, top, prompt_bottom)
        self._details(draw, max(top, prompt_bottom) + margin // 2, details)
        return image

    def draw_moving(self, image: Image.Image, index: int, fps: int, total: int) -> None:
        """What moves: the timecode and frame counter, the progress bar, and a block sweeping across the colour bars."""
        draw = ImageDraw.Draw(image)
        self._clock(draw, index, fps, total)
        width, margin, track_height = self.card.width, self.margin, self.track_height
        track_top = self.card.height - margin - track_height
        draw.rectangle((margin, track_top, width - margin, track_top + track_height), fill=_PANEL)
        filled = margin + round((width - 2 * margin) * (index + 1) / total)
        draw.rectangle((margin, track_top, filled, track_top + track_height), fill=_ACCENT)
        sweep = round((width - 2 * track_height) * index / max(1, total - 1))
        block = (sweep, 0, sweep + 2 * track_height, self.bars_height)
        draw.rectangle(block, fill=_TEXT, outline=_BACKGROUND, width=2)

    def _clock(self, draw: ImageDraw.ImageDraw, index: int, fps: int, total: int) -> None:
        draw.text((self.margin, self.strip_top), _timecode(index, fps), font=self.clock_font, fill=_TEXT)
        counter = f"frame {index + 1}/{total} · {fps} fps"
        left = self.card.width - self.margin - draw.textlength(counter, font=self.label_font)
        draw.text((left, self.strip_top), counter, font=self.label_font, fill=_LABEL)

    def _colour_bars(self, draw: ImageDraw.ImageDraw) -> None:
        width = self.card.width
        for number, colour in enumerate(_BARS):
            left, right = width * number // len(_BARS), width * (number + 1) // len(_BARS)
            draw.rectangle((left, 0, right, self.bars_height), fill=colour)

    def _prompt(self, draw: ImageDraw.ImageDraw, top: int, bottom: int) -> int:
        """Draw the prompt wrapped to the width, as many lines as fit above ``bottom``; return where it ends."""
        line_height = self._line_height(self.prompt_font)
        room = max(1, (bottom - top) // line_height)
        lines = _wrap(self.card.prompt, self.prompt_font, self.card.width - 2 * self.margin, room)
        for line in lines:
            draw.text((self.margin, top), line, font=self.prompt_font, fill=_TEXT)
            top += line_height
        return top

    def _details(self, draw: ImageDraw.ImageDraw, top: int, details: list[tuple[str, str]]) -> None:
        value_left = self.margin + round(draw.textlength("request id  ", font=self.meta_font))
        for label, value in details:
            draw.text((self.margin, top), label, font=self.meta_font, fill=_LABEL)
            draw.text((value_left, top), value, font=self.meta_font, fill=_TEXT)
            top += self._line_height(self.meta_font)

    @staticmethod
    def _line_height(font: ImageFont.FreeTypeFont | ImageFont.ImageFont) -> int:
        _, top, _, bottom = font.getbbox("Ag")
        return round((bottom - top) * 1.45)


def _wrap(text: str, font: ImageFont.FreeTypeFont | ImageFont.ImageFont, width: int, max_lines: int) -> list[str]:
    """Greedy word wrap by rendered width; words wider than a line are cut; an ellipsis ends a cut-short text."""
    lines: list[str] = []
    words = text.split()
    line = ""
    while words and len(lines) < max_lines:
        word = words.pop(0)
        candidate = f"{line} {word}" if line else word
        if font.getlength(candidate) <= width:
            line = candidate
            continue
        if line:
            lines.append(line)
            words.insert(0, word)
            line = ""
            continue
        cut = _fitting_prefix(word, font, width)
        lines.append(word[:cut])
        words.insert(0, word[cut:])
    if line and len(lines) < max_lines:
        lines.append(line)
    elif line or words:
        lines[-1] = _with_ellipsis(lines[-1], font, width)
    return lines


def _fitting_prefix(word: str, font: ImageFont.FreeTypeFont | ImageFont.ImageFont, width: int) -> int:
    """How many leading characters of ``word`` fit in ``width`` (at least one)."""
    low, high = 1, len(word)
    while low < high:
        middle = (low + high + 1) // 2
        low, high = (middle, high) if font.getlength(word[:middle]) <= width else (low, middle - 1)
    return low


def _with_ellipsis(line: str, font: ImageFont.FreeTypeFont | ImageFont.ImageFont, width: int) -> str:
    while line and font.getlength(line + _ELLIPSIS) > width:
        line = line[:-1]
    return line.rstrip() + _ELLIPSIS


def _timecode(index: int, fps: int) -> str:
    """``HH:MM:SS:FF`` of frame ``index``, as a broadcast timecode reads."""
    seconds, frame = divmod(index, fps)
    minutes, seconds = divmod(seconds, 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours:02d}:{minutes:02d}:{seconds:02d}:{frame:02d}"
