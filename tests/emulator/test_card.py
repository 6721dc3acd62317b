"""The emulator's test card: every completed job's video shows that job's prompt, model, size, duration and request
id, with a running timecode, as real H.264 at the requested size, and the same request always gives the same bytes.

A frame is checked against the card drawn for the job's own fields: no pixel of the decoded frame is more than a
compression error away from it, while a card of another prompt differs at thousands of pixels of the prompt area.
"""

from __future__ import annotations

import io
from typing import Any

import av
import pytest
from PIL import Image, ImageChops, ImageFilter

from sora2_provider.testing.emulator import Sora2Emulator
from sora2_provider.testing.video import CARD_FPS, TestCard, card_mp4

PROMPT = "a lighthouse at dusk, waves breaking on the rocks below, gulls circling the lamp"
MISMATCH = 80  # grey levels: far more than H.264 at this quality moves a pixel, far less than text against background


def decoded_frames(data: bytes) -> list[Image.Image]:
    with av.open(io.BytesIO(data)) as container:
        return [frame.to_image() for frame in container.decode(video=0)]


def mismatched_pixels(one: Image.Image, other: Image.Image, box: tuple[int, int, int, int] | None = None) -> int:
    """Pixels whose grey level differs by more than :data:`MISMATCH` (inside ``box``, if given)."""
    if box is not None:
        one, other = one.crop(box), other.crop(box)
    difference = ImageChops.difference(one.convert("L"), other.convert("L"))
    return sum(difference.histogram()[MISMATCH + 1 :])


def prompt_area(card: TestCard) -> tuple[int, int, int, int]:
    """The band below the header where the prompt is drawn."""
    return 0, round(card.height * 0.08), card.width, round(card.height * 0.4)


def job_card(emulator: Sora2Emulator, request_id: str) -> TestCard:
    """The card the emulator should render for a job, from its ledger entry."""
    entry = next(entry for entry in emulator.ledger if entry["request_id"] == request_id)
    width, height = (int(side) for side in entry["size"].split("x"))
    return TestCard(entry["prompt"], entry["model"], width, height, entry["duration"], request_id)


def completed_output(api: Any, **body: Any) -> tuple[str, bytes]:
    """Submit a job, wait for it, and download its video: ``(request_id, mp4 bytes)``."""
    request_id = api.submit(**body)["request_id"]
    api.poll(request_id)
    output = api.get(f"/v2/requests/{request_id}").json()["output"]
    answer = api.get(output)
    assert answer.status_code == 200 and answer.headers["content-type"] == "video/mp4"
    return request_id, answer.content


def test_a_frame_of_the_served_video_shows_the_jobs_own_card(api: Any, emu: Sora2Emulator) -> None:
    request_id, data = completed_output(api, prompt=PROMPT, duration=4)
    card = job_card(emu, request_id)
    assert (card.prompt, card.model, card.width, card.height, card.seconds) == (PROMPT, "sora-2", 720, 1280, 4)
    frames = decoded_frames(data)
    drawn = list(card.frames(CARD_FPS))
    assert len(frames) == len(drawn) == 4 * CARD_FPS
    someone_elses = list(TestCard("a red fox in fresh snow", "sora-2", 720, 1280, 4, request_id).frames(CARD_FPS))
    for index in (0, len(frames) // 2, len(frames) - 1):
        assert frames[index].size == (720, 1280)
        assert mismatched_pixels(frames[index], drawn[index]) == 0
        assert mismatched_pixels(frames[index], someone_elses[index], prompt_area(card)) > 1000


def test_the_prompt_area_holds_text_not_a_flat_colour(api: Any) -> None:
    _, data = completed_output(api, prompt=PROMPT, duration=4)
    frame = decoded_frames(data)[CARD_FPS]
    area = frame.crop(prompt_area(TestCard(PROMPT, "sora-2", 720, 1280, 4, "x"))).convert("L")
    edges = area.filter(ImageFilter.FIND_EDGES)
    assert sum(edges.histogram()[65:]) > 0.005 * area.width * area.height  # glyph outlines
    assert len(area.getcolors(256) or []) > 50  # anti-aliased text, not two or three flat colours


def test_the_first_and_last_second_differ_where_the_clock_runs_and_nowhere_else(api: Any, emu: Sora2Emulator) -> None:
    request_id, data = completed_output(api, prompt=PROMPT, duration=4)
    frames = decoded_frames(data)
    card = job_card(emu, request_id)
    first, last = frames[: CARD_FPS], frames[-CARD_FPS :]
    moving_strip = (0, round(card.height * 0.86), card.width, card.height)
    still_text = (0, round(card.height * 0.05), card.width, round(card.height * 0.8))
    for early, late in zip(first, last, strict=True):
        assert mismatched_pixels(early, late, moving_strip) > 1000  # timecode, frame counter, progress bar
        assert mismatched_pixels(early, late, still_text) == 0
    bars = (0, 0, card.width, round(card.height * 0.04))
    assert mismatched_pixels(first[0], last[-1], bars) > 100  # the block sweeping across the colour bars


@pytest.mark.parametrize(("model", "size", "seconds"), [("sora-2-pro", "1792x1024", 12), ("sora-2", "1280x720", 8)])
def test_the_card_is_h264_at_the_requested_size_and_duration(api: Any, model: str, size: str, seconds: int) -> None:
    _, data = completed_output(api, model=model, size=size, duration=seconds)
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == "h264"
        assert f"{stream.codec_context.width}x{stream.codec_context.height}" == size
        assert container.duration is not None and container.duration / 1e6 == pytest.approx(seconds, abs=0.01)
        assert sum(1 for _ in container.decode(stream)) == seconds * CARD_FPS


def test_the_same_request_gives_the_same_bytes_even_after_a_restart(make_emulator: Any, api_for: Any) -> None:
    emulator = make_emulator()
    api = api_for(emulator)
    request_id, data = completed_output(api, prompt=PROMPT, duration=4)
    assert data == card_mp4(job_card(emulator, request_id))
    emulator.stop()  # deletes the rendered videos: the next download renders the card again
    emulator.start()
    output = api.get(f"/v2/requests/{request_id}").json()["output"]
    assert api.get(output).content == data


def test_cards_of_different_requests_differ() -> None:
    card = TestCard(PROMPT, "sora-2", 720, 1280, 4, "11111111-1111-4111-8111-111111111111")
    data = card_mp4(card)
    assert card_mp4(card) == data
    other_id = TestCard(PROMPT, "sora-2", 720, 1280, 4, "22222222-2222-4222-8222-222222222222")
    assert card_mp4(other_id) != data


def test_a_long_prompt_is_cut_to_fit_above_the_details() -> None:
    request_id = "33333333-3333-4333-8333-333333333333"
    short = next(TestCard("a short prompt", "sora-2", 720, 1280, 4, request_id).frames(CARD_FPS))
    words = " ".join(f"word{number}" for number in range(900))
    unbroken = "x" * 400
    for prompt in (words, unbroken):
        long = next(TestCard(prompt, "sora-2", 720, 1280, 4, request_id).frames(CARD_FPS))
        details_and_clock = (0, round(1280 * 0.75), 720, 1280)
        assert mismatched_pixels(long, short, details_and_clock) == 0
        assert mismatched_pixels(long, short, (0, round(1280 * 0.08), 720, round(1280 * 0.75))) > 1000
