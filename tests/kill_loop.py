"""kill -9 harness: run `searchlite index` on a changing folder and kill it at random moments; after
every kill the index must answer searches (no duplicates, no missing files), and at the end a
resumed index must equal an uninterrupted one built from scratch. Prints JSON.

    python tests/kill_loop.py --rounds 200                  # the long mode
    python tests/kill_loop.py --rounds 20 --model M --pretrained P

Without --model/--pretrained it builds a tiny random open_clip model of its own (no downloads).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import select
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from searchlite import SearchEngine
from searchlite.config import DB_FILENAME
from searchlite.storage.store import FAILED, INDEXED, SKIPPED, Store

TINY_CONFIG = {
    "embed_dim": 64,
    "vision_cfg": {"image_size": 64, "layers": 2, "width": 64, "head_width": 32, "patch_size": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}


def tiny_model(folder: Path) -> list[str]:
    """--model/--pretrained flags for a tiny random CLIP saved under folder."""
    import open_clip
    import torch

    config, checkpoint = folder / "tiny.json", folder / "tiny.pt"
    config.write_text(json.dumps(TINY_CONFIG))
    torch.manual_seed(0)
    torch.save(open_clip.CLIP(**TINY_CONFIG).state_dict(), checkpoint)
    return ["--model", str(config), "--pretrained", str(checkpoint)]


class Corpus:
    """A folder of distinct photos that changes a little between runs."""

    def __init__(self, folder: Path, rng: random.Random) -> None:
        import skimage.data

        self.folder = folder
        self.rng = rng
        self.sources = [Image.fromarray(getattr(skimage.data, n)()).convert("RGB").resize((192, 144))
                        for n in ("astronaut", "chelsea", "coffee", "rocket")]
        self.serial = 0
        folder.mkdir(parents=True, exist_ok=True)

    def add(self, n: int) -> None:
        for _ in range(n):
            self.serial += 1
            img = self.sources[self.serial % 4].rotate(self.serial * 13 % 360)
            sub = self.folder / f"d{self.serial % 3}"
            sub.mkdir(exist_ok=True)
            img.save(sub / f"img {self.serial:04d}.jpg", quality=85)
            if self.serial % 10 == 0:  # a bad file now and then
                (sub / f"bad {self.serial:04d}.jpg").write_bytes(b"\xff\xd8\xff broken")

    def files(self) -> list[Path]:
        return sorted(p for p in self.folder.rglob("*") if p.is_file())

    def mutate(self) -> None:
        """Add, delete, rename and rewrite a few files."""
        self.add(self.rng.randint(4, 10))
        files = [p for p in self.files() if p.suffix == ".jpg" and not p.name.startswith("bad")]
        for path in self.rng.sample(files, min(2, len(files))):
            path.unlink()
        files = [p for p in self.files() if p.name.startswith("img")]
        for path in self.rng.sample(files, min(2, len(files))):
            path.rename(path.with_name("renamed " + path.name))
        files = [p for p in self.files() if p.name.startswith("img")]
        for path in self.rng.sample(files, min(1, len(files))):
            Image.open(path).transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(path, quality=85)


def check_searchable(index: Path, corpus: Path) -> int:
    """After any kill: searches work, with no duplicates and no files that are gone. Returns hits."""
    if not (index / DB_FILENAME).exists():
        return 0
    with SearchEngine.open(index, create=False) as engine:
        if engine.info()["dim"] is None:  # killed before the model was recorded
            return 0
        hits = engine.search("a photo", k=100_000)
    paths = [h.path for h in hits]
    assert len(paths) == len(set(paths)), "duplicate results"
    assert all(os.path.exists(p) and p.startswith(str(corpus)) for p in paths), "a result is gone"
    scores = [h.score for h in hits]
    assert scores == sorted(scores, reverse=True)
    return len(hits)


def snapshot(index: Path) -> dict[str, tuple[str, np.ndarray | None]]:
    """path -> (state, vector) of a whole index, read from SQLite."""
    store = Store.open(index / DB_FILENAME)
    try:
        vectors = {}
        for ids, chunk in store.iter_vectors():
            rows = store.fetch(ids.tolist())
            vectors.update({rows[i].path: v for i, v in zip(ids.tolist(), chunk)})
        return {r.path: (state, vectors.get(r.path)) for state in (INDEXED, FAILED, SKIPPED)
                for r in store.rows_in_state(state)}
    finally:
        store.close()


def assert_same_index(resumed: Path, reference: Path) -> None:
    a, b = snapshot(resumed), snapshot(reference)
    assert set(a) == set(b), f"paths differ: {sorted(set(a) ^ set(b))[:5]}"
    for path, (state, vector) in a.items():
        assert state == b[path][0], (path, state, b[path][0])
        if vector is not None:
            assert float(vector @ b[path][1]) > 0.99999, path
    with SearchEngine.open(resumed, create=False) as x, SearchEngine.open(reference, create=False) as y:
        for text in ["a cat", "a rocket", "coffee", "a person"]:
            hx, hy = x.search(text, k=10), y.search(text, k=10)
            assert np.allclose([h.score for h in hx], [h.score for h in hy], atol=1e-5), text
            # identical copies tie; their order (and who makes the cut at k) is arbitrary
            cut = hx[-1].score + 1e-5
            assert {h.path for h in hx if h.score > cut} == {h.path for h in hy if h.score > cut}, text


# A warm parent that forks one indexing child per round: each child is a full indexing run that
# the harness kills with SIGKILL, without paying seconds of torch/open_clip imports per round.
# A child may be told to crash (os._exit, as abrupt as kill -9) at a chosen point of the save path.
ZYGOTE = r"""
import json, os, sys
import open_clip, torch  # the slow imports, once
from searchlite import SearchEngine
from searchlite.config import IndexSettings

def crash_at(point):
    import searchlite.storage.store as store, searchlite.engine as engine
    def die(*_a, **_k):
        os._exit(137)
    if point == "before-faiss-replace":
        os.replace = die
    elif point == "after-faiss-replace":
        real = os.replace
        os.replace = lambda *a, **k: (real(*a, **k), die())
    elif point == "faiss-fsync":
        os.fsync = die
    elif point == "mid-transaction":
        calls = [0]
        real_put = store.Transaction.put
        def put(self, *a, **k):
            calls[0] += 1
            if calls[0] == 3:
                die()
            return real_put(self, *a, **k)
        store.Transaction.put = put
    elif point == "before-faiss-record":
        real_set = store.Store.set_info
        store.Store.set_info = lambda self, key, value: die() if key == "faiss" else real_set(self, key, value)
    elif point == "before-deletions":
        real_delete = store.Transaction.delete
        store.Transaction.delete = lambda self, ids: die()

for line in sys.stdin:
    corpus, index, model_args, point = json.loads(line)
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            if point:
                crash_at(point)
            # int8 pinned: the index starts small (fp32 under auto) and the reference is made in one
            # large run (int8 under auto), and the two must hold the same vectors
            with SearchEngine.open(index, model=model_args[1], pretrained=model_args[3],
                                   settings=IndexSettings(batch_size=2, precision="int8")) as engine:
                engine.index(corpus)
        except BaseException as e:
            print(repr(e), file=sys.stderr)
            code = 1
        os._exit(code)
    print(pid, flush=True)
    _, status = os.waitpid(pid, 0)
    print(status, flush=True)
"""

CRASH_POINTS = ["before-faiss-replace", "after-faiss-replace", "faiss-fsync", "mid-transaction",
                "before-faiss-record", "before-deletions"]


class Zygote:
    def __init__(self) -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", ZYGOTE], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True)

    def start(self, corpus: Path, index: Path, model_args: list[str], point: str | None = None) -> int:
        assert self.proc.stdin and self.proc.stdout
        self.proc.stdin.write(json.dumps([str(corpus), str(index), model_args, point]) + "\n")
        self.proc.stdin.flush()
        return int(self.proc.stdout.readline())

    def wait(self, timeout: float | None = None) -> int | None:
        """The wait status of the last child, or None if it is still running after timeout."""
        assert self.proc.stdout
        if timeout is not None and not select.select([self.proc.stdout], [], [], timeout)[0]:
            return None
        return int(self.proc.stdout.readline())

    def close(self) -> None:
        if self.proc.stdin:
            self.proc.stdin.close()
        self.proc.wait(30)


def kill_loop(workdir: Path, rounds: int, seed: int = 0, model_args: list[str] | None = None) -> dict:
    """rounds random SIGKILLs, then one crash at each targeted point of the save path."""
    rng = random.Random(seed)
    model_args = model_args or tiny_model(workdir)
    corpus = Corpus(workdir / "photos", rng)
    corpus.add(30)
    index = workdir / "index"
    zygote = Zygote()
    try:
        started = time.monotonic()
        zygote.start(corpus.folder, index, model_args)
        assert zygote.wait() == 0
        # how long a round takes, learnt from the rounds that finish: kills land inside the run
        window = time.monotonic() - started

        killed = finished = 0
        for _ in range(rounds):
            corpus.mutate()
            round_started = time.monotonic()
            pid = zygote.start(corpus.folder, index, model_args)
            status = zygote.wait(timeout=rng.uniform(0.0, window))
            if status is None:
                os.kill(pid, signal.SIGKILL)
                status = zygote.wait()
            else:
                window = (window + time.monotonic() - round_started) / 2
            killed += os.WIFSIGNALED(status)
            finished += os.WIFEXITED(status)
            check_searchable(index, corpus.folder)

        crashed = 0
        for point in CRASH_POINTS:
            corpus.mutate()
            zygote.start(corpus.folder, index, model_args, point)
            crashed += os.WIFEXITED(status := zygote.wait()) and os.WEXITSTATUS(status) == 137
            check_searchable(index, corpus.folder)

        zygote.start(corpus.folder, index, model_args)  # resume, uninterrupted
        assert zygote.wait() == 0
        reference = workdir / "reference"
        zygote.start(corpus.folder, reference, model_args)
        assert zygote.wait() == 0
    finally:
        zygote.close()
    assert_same_index(index, reference)
    return {"rounds": rounds, "killed_mid_run": killed, "finished_before_kill": finished,
            "save_path_crash_points": len(CRASH_POINTS), "crashed_at_point": crashed,
            "files": len(corpus.files()), "seconds": round(time.monotonic() - started, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--model")
    parser.add_argument("--pretrained")
    args = parser.parse_args()
    model_args = ["--model", args.model, "--pretrained", args.pretrained] if args.model else None
    with tempfile.TemporaryDirectory() as tmp:
        result = kill_loop(Path(tmp), args.rounds, args.seed, model_args)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
