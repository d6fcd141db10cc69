"""Interruptions, crashes, full disks and concurrent use: nothing lost, nothing crashes."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from PIL import Image

from searchlite import IndexWriteError, SearchEngine
from searchlite.config import FAISS_FILENAME, LOCK_FILENAME

from tests import kill_loop


def paths_of(hits) -> list[str]:
    return [h.path for h in hits]


@pytest.mark.slow
def test_kill_9_at_random_moments_and_crashes_in_the_save_path(tmp_path: Path, tiny_model) -> None:
    """20 random SIGKILLs while indexing a changing folder, then a crash at each targeted point of
    the save path; after each one searches work; the resumed index equals an uninterrupted one."""
    config, checkpoint = tiny_model
    result = kill_loop.kill_loop(tmp_path, rounds=20, seed=1, model_args=["--model", str(config), "--pretrained", str(checkpoint)])
    assert result["killed_mid_run"] >= 5  # the harness really killed runs in flight
    assert result["crashed_at_point"] == len(kill_loop.CRASH_POINTS)


# --- Ctrl-C -------------------------------------------------------------------------------------


def indexed_so_far(index: Path) -> int:
    try:
        with SearchEngine.open(index, create=False) as engine:
            return engine.info()["images"]
    except Exception:  # noqa: BLE001 - not created yet
        return 0


@pytest.mark.slow
def test_ctrl_c_saves_says_how_to_resume_and_exits_130(tmp_path: Path, tiny_model, photos: Path) -> None:
    for i in range(150):  # enough work to be interrupted in the middle of it
        Image.open(photos / "astronaut.jpg").rotate(i).resize((800, 800)).save(photos / f"many {i:03d}.png")
    config, checkpoint = tiny_model
    index = tmp_path / "index"
    cmd = [sys.executable, "-m", "searchlite", "index", str(photos), "--index", str(index),
           "--model", str(config), "--pretrained", str(checkpoint), "--batch-size", "4", "--workers", "1"]
    # Ctrl-C as a terminal sends it: a run started with SIGINT ignored keeps ignoring it (as Python does),
    # and pytest run in the background by a non-interactive shell ("pytest &", nohup) passes that on
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    started = time.monotonic()
    deadline = started + 120  # a hang guard: it takes seconds
    while (seen := indexed_so_far(index)) < 4:  # wait until batches are being committed (one decoder: it lasts)
        assert proc.poll() is None, f"the run ended before it was interrupted: {proc.stderr.read()}"
        assert time.monotonic() < deadline, "no batch was committed within 120s"
        time.sleep(0.1)
    interrupted = time.monotonic()
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, (f"{seen} indexed {interrupted - started:.1f}s after the start, when interrupted; "
                                    f"exited {time.monotonic() - interrupted:.1f}s later; stderr: {stderr[-500:]!r}")
    assert "interrupted" in stderr and "run the same command again" in stderr
    assert "Traceback" not in stderr
    with SearchEngine.open(index, create=False) as engine:
        done = engine.info()["images"]
        assert 0 < done < 160
        hits = engine.search("x", k=1000)
        assert len(hits) == len(set(paths_of(hits))) == done
        report = engine.index(photos)  # resume
        assert report.added == 160 - done
    assert not list(index.glob("*.tmp"))


@pytest.mark.parametrize("interrupted_in, nth_call", [("add", 2), ("remove", 1)])
def test_ctrl_c_between_a_batchs_commit_and_its_faiss_update_loses_nothing(
    monkeypatch: pytest.MonkeyPatch, engine_factory, photos: Path, index_dir: Path, interrupted_in: str, nth_call: int
) -> None:
    """Ctrl-C can land after SQLite committed a batch and before FAISS took it in: the vector cache
    saved then must not claim to hold that batch, or its images would never be found."""
    from searchlite import VectorIndex
    from searchlite.config import IndexSettings

    engine_factory(settings=IndexSettings(batch_size=2)).index(photos)
    files = sorted(photos.rglob("*.*"))
    for path in files[4:6]:  # deleted: their vectors are removed
        path.unlink()
    for i, path in enumerate(files[:4]):  # new files: new rows, encoded in new batches
        new = photos / f"new {i}{path.suffix}"
        new.write_bytes(path.read_bytes() + b"\0")
        files.append(new)
    real = getattr(VectorIndex, interrupted_in)
    calls = []

    def interrupted(self, *args):
        calls.append(1)
        if len(calls) == nth_call:
            raise KeyboardInterrupt
        return real(self, *args)

    monkeypatch.setattr(VectorIndex, interrupted_in, interrupted)
    with pytest.raises(KeyboardInterrupt):
        engine_factory(settings=IndexSettings(batch_size=2)).index(photos)
    monkeypatch.undo()
    with SearchEngine.open(index_dir, create=False) as engine:
        existing = sorted(str(p) for p in files if p.exists())
        assert sorted(paths_of(engine.search("x", k=1000))) == existing  # each once, none missing
        engine.index(photos)  # resume
        assert sorted(paths_of(engine.search("x", k=1000))) == existing


# --- one writer, many readers ---------------------------------------------------------------------

HOLD_LOCK = """
import sys
from pathlib import Path
from searchlite.storage.writelock import writer_lock
with writer_lock(Path(sys.argv[1])):
    print("locked", flush=True)
    sys.stdin.read()
"""


def test_a_second_indexer_is_refused_at_once_and_a_dead_ones_lock_does_not_block(
    engine_factory, photos: Path, index_dir: Path, tiny_model
) -> None:
    engine_factory().index(photos)
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(index_dir / LOCK_FILENAME)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    cmd = [sys.executable, "-m", "searchlite", "index", str(photos), "--index", str(index_dir)]
    try:  # the holder never lets go by itself: a second indexer that waits for it never ends
        second = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    except subprocess.TimeoutExpired:
        pytest.fail("the second indexer waited for the lock instead of refusing at once")
    assert second.returncode == 1
    assert f"pid {holder.pid}" in second.stderr and "is writing to the index" in second.stderr
    assert holder.poll() is None  # refused while the lock was held, not after it was let go
    holder.kill()  # kill -9: the kernel drops its lock
    holder.wait()
    third = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert third.returncode == 0, third.stderr


def test_searches_keep_working_while_an_index_run_goes_on(engine_factory, photos: Path, index_dir: Path) -> None:
    writer = engine_factory()
    writer.index(photos)
    for i in range(60):
        Image.open(photos / "cats" / "chelsea the cat.JPG").rotate(i * 6).save(photos / f"new {i:02d}.jpg")
    errors: list[BaseException] = []
    counts: list[int] = []
    running = threading.Event()
    running.set()
    searched = threading.Condition()  # notified after each finished search (or error)

    def wait_for_a_search(done: int, total: int) -> None:
        """Between the writer's batches, let a reader finish a search (so reads really interleave
        with the run), with a deadline that only guards against a hang."""
        with searched:
            seen = len(counts)
            assert searched.wait_for(lambda: len(counts) > seen or errors, timeout=60), "no search finished while the index run went on"

    def reader() -> None:
        with SearchEngine.open(index_dir, create=False) as engine:
            while running.is_set():
                try:
                    hits = engine.search("a cat", k=1000)
                    assert len(hits) == len(set(paths_of(hits)))
                    assert all(os.path.exists(p) for p in paths_of(hits))
                    with searched:
                        counts.append(len(hits))
                        searched.notify_all()
                except BaseException as e:  # noqa: BLE001 - reported below
                    with searched:
                        errors.append(e)
                        searched.notify_all()
                    return

    threads = [threading.Thread(target=reader) for _ in range(3)]
    for t in threads:
        t.start()
    try:
        writer.index(photos, progress=wait_for_a_search)
    finally:
        running.clear()
        for t in threads:
            t.join()
    assert not errors, errors[0]
    assert min(counts) >= 10 and len(counts) >= 3


# --- full disks and I/O errors --------------------------------------------------------------------


@pytest.mark.parametrize("fault", ["enospc-fsync", "eio-replace"])
def test_a_failed_vector_save_is_a_clear_error_and_loses_nothing(
    fault: str, engine_factory, photos: Path, index_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = engine_factory()
    engine.index(photos)
    before = paths_of(engine.search("a cat", k=10))
    old_file = (index_dir / FAISS_FILENAME).read_bytes()
    Image.open(photos / "astronaut.jpg").rotate(30).save(photos / "new.jpg")

    code, call = (errno.ENOSPC, "fsync") if fault == "enospc-fsync" else (errno.EIO, "replace")

    def broken(*_args, **_kwargs):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(os, call, broken)
    with pytest.raises(IndexWriteError) as e:
        engine.index(photos)
    monkeypatch.undo()
    assert os.strerror(code) in str(e.value) and "run the same command again" in str(e.value)
    assert (index_dir / FAISS_FILENAME).read_bytes() == old_file  # the old file is untouched
    assert sorted(p.name for p in index_dir.iterdir() if p.name.endswith(".tmp")) == []
    engine.close()
    with SearchEngine.open(index_dir) as reopened:  # loads, and has lost nothing committed
        hits = paths_of(reopened.search("a cat", k=11))
        assert set(before) <= set(hits) and str(photos / "new.jpg") in hits


def test_a_full_database_rolls_back_the_batch_and_keeps_the_previous_index(
    engine_factory, photos: Path, index_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sqlite3

    import searchlite.storage.store as store

    engine = engine_factory()
    engine.index(photos)
    before = [(h.path, round(h.score, 5)) for h in engine.search("a cat", k=10)]
    for i in range(5):
        Image.open(photos / "astronaut.jpg").rotate(i * 20 + 10).save(photos / f"new {i}.jpg")

    def disk_full(*_args, **_kwargs):
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(store.Transaction, "put", disk_full)
    with pytest.raises(IndexWriteError, match="database or disk is full.*nothing committed before is lost"):
        engine.index(photos)
    monkeypatch.undo()
    engine.close()
    with SearchEngine.open(index_dir) as reopened:
        assert [(h.path, round(h.score, 5)) for h in reopened.search("a cat", k=10)] == before
        assert reopened.info()["images"] == 10
        assert reopened.index(photos).added == 5  # and the next run catches up
