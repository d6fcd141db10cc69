"""Decoding ahead in the background: on a CPU, a run of several batches decodes the next batch while
the model encodes one, with decoder processes that only take the cycles nothing else wants; a
decoder starved by other work hands its file to a foreground one."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import searchlite.media.decode_worker as decode_worker
from searchlite.config import IndexSettings
from searchlite.media.decode_worker import DecodePool
from tests.conftest import decoder_processes

pytestmark = pytest.mark.skipif(not hasattr(os, "SCHED_IDLE") or not os.path.isdir("/proc/self"), reason="needs Linux's SCHED_IDLE and /proc")


def _policies() -> list[int]:
    """Scheduling policies of this process's decoder children."""
    return [os.sched_getscheduler(pid) for pid in decoder_processes()]


def _jpeg(size: tuple[int, int]) -> bytes:
    rng = np.random.default_rng(3)
    out = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(out, "JPEG", quality=90)
    return out.getvalue()


def test_background_decoders_give_the_same_pixels_on_idle_cycles() -> None:
    data = _jpeg((640, 480))
    foreground, background = DecodePool(1, 30, None), DecodePool(1, 30, None, background=True)
    try:
        want = foreground.decode(data, min_side=64)
        got = background.decode(data, min_side=64)
        assert got.image.tobytes() == want.image.tobytes() and (got.width, got.height) == (640, 480)
        assert sorted(_policies()) == sorted([os.SCHED_OTHER, os.SCHED_IDLE])
    finally:
        foreground.close()
        background.close()


def test_a_starved_background_decoder_hands_the_file_to_a_foreground_one(monkeypatch: pytest.MonkeyPatch) -> None:
    # as if other work took every cycle: no CPU time for the child over each (short) wait
    monkeypatch.setattr(decode_worker, "BACKGROUND_PATIENCE_S", 0.01)
    monkeypatch.setattr(decode_worker, "_cpu_seconds", lambda pid: 0.0)
    data = _jpeg((2400, 1800))
    pool = DecodePool(2, 30, None, background=True)
    try:
        with pool.worker() as first, pool.worker() as second:
            decoded = first.decode(data)
            assert (decoded.width, decoded.height) == (2400, 1800)
            assert not pool.background  # the whole pool, for the rest of the run
            assert second.decode(data).image.tobytes() == decoded.image.tobytes()
        assert _policies() == [os.SCHED_OTHER, os.SCHED_OTHER]
    finally:
        pool.close()


def test_a_slow_background_decode_that_progresses_is_not_taken_for_starved(monkeypatch: pytest.MonkeyPatch) -> None:
    ticks = iter(range(1_000_000))
    monkeypatch.setattr(decode_worker, "BACKGROUND_PATIENCE_S", 0.01)
    monkeypatch.setattr(decode_worker, "_cpu_seconds", lambda pid: float(next(ticks)))  # a core's worth each wait
    pool = DecodePool(1, 30, None, background=True)
    try:
        assert pool.decode(_jpeg((2400, 1800))).width == 2400
        assert pool.background and _policies() == [os.SCHED_IDLE]
    finally:
        pool.close()


def test_a_video_never_goes_to_a_background_child(tmp_path: Path) -> None:
    pytest.importorskip("av")
    from tests.conftest import load_script

    video = tmp_path / "clip.mp4"
    load_script("make_shape_videos").write_video(video, [(Image.new("RGB", (64, 64), "red"), 1.0)])
    pool = DecodePool(1, 30, None, background=True)
    try:
        with pool.worker() as worker:
            worker.decode(_jpeg((320, 240)))
            assert _policies() == [os.SCHED_IDLE]
            frames = worker.decode_video(video.read_bytes(), 30, interval_s=0.5, max_frames=4, min_side=32)
        assert frames.images and _policies() == [os.SCHED_OTHER]  # a new child, in the foreground
        assert pool.background  # images still go to the background
    finally:
        pool.close()


def test_a_run_of_several_batches_decoded_ahead_equals_one_batch(engine_factory, photos: Path, tmp_path: Path) -> None:
    ahead = engine_factory(settings=IndexSettings(batch_size=3))
    seen: set[int] = set()
    report = ahead.index(photos, progress=lambda *_: seen.update(_policies()))
    assert os.SCHED_IDLE in seen  # its decoders worked in the background
    whole = engine_factory(index=tmp_path / "whole", settings=IndexSettings(batch_size=64))
    whole.index(photos)
    assert report.added == 10 and report.failed == 0
    for query in ("a cat", "coffee", "a rocket"):
        got, want = ahead.search(query, k=10), whole.search(query, k=10)
        assert [h.path for h in got] == [h.path for h in want]
        assert [h.score for h in got] == pytest.approx([h.score for h in want], abs=1e-5)
