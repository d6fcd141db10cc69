"""`searchlite serve` under load with a hostile collection (issue 26): a FIFO, a file swapped for a
link to /etc/passwd and a very large file at indexed paths, while N clients search and ask for those
files' thumbnails, originals, views and explains. Prints the p50/p95 latency of the searches and the
server process's peak memory (VmHWM; its decoder processes apart). Talks to 127.0.0.1 only.

    python scripts/bench_serve_hostile.py --images 200 --big-mb 800 --clients 8 --duration 30
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
from PIL import Image, ImageDraw

from searchlite import SearchEngine

COLOURS = {"red": (220, 30, 30), "green": (30, 180, 30), "blue": (30, 30, 220), "yellow": (230, 220, 30)}
QUERIES = [f"a {c} {s}" for c in COLOURS for s in ("circle", "square", "triangle")]


def make_collection(folder: Path, images: int, big_mb: int, seed: int = 26) -> None:
    rng = random.Random(seed)
    folder.mkdir(parents=True)
    for i in range(images):
        img = Image.new("RGB", (96, 96), (205, 205, 200))
        draw = ImageDraw.Draw(img)
        x, y, r = rng.randint(30, 66), rng.randint(30, 66), rng.randint(14, 28)
        draw.ellipse((x - r, y - r, x + r, y + r), fill=rng.choice(list(COLOURS.values())))
        img.save(folder / f"{i:05d}.png")
    # a valid PNG followed by big_mb of zeros (decoders stop at its end): sparse on disk
    big = folder / "big.png"
    Image.new("RGB", (64, 64), (30, 30, 220)).save(big)
    with open(big, "r+b") as f:
        f.truncate(big_mb << 20)


def vm(pid: int, field: str) -> int:
    """A /proc/PID/status field in bytes (VmRSS, VmHWM)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    return 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--big-mb", type=int, default=800)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--duration", type=float, default=30.0)
    parser.add_argument("--warmup", type=float, default=15.0, help="seconds to let the server load its image model in the background first")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="searchlite-hostile-serve-") as tmp:
        photos, index = Path(tmp) / "photos", Path(tmp) / "index"
        make_collection(photos, args.images, args.big_mb)
        started = time.monotonic()
        with SearchEngine.open(index, model="searchlite-shapes") as engine:
            engine.index(photos)
            ids = {Path(r.path).name: r.id for r in engine.files(range(1, args.images + 10)).values()}
        print(f"indexed {len(ids)} files in {time.monotonic() - started:.1f}s", file=sys.stderr)
        # after indexing: a FIFO and a link to /etc/passwd at indexed paths
        os.unlink(photos / "00000.png")
        os.mkfifo(photos / "00000.png")
        os.unlink(photos / "00001.png")
        os.symlink("/etc/passwd", photos / "00001.png")
        fifo, link, big = ids["00000.png"], ids["00001.png"], ids["big.png"]

        server = subprocess.Popen(
            [sys.executable, "-m", "searchlite", "serve", "--index", str(index), "--port", "0"], stdout=subprocess.PIPE, text=True
        )
        try:
            url = server.stdout.readline().strip()
            assert url.startswith("http://127.0.0.1:"), url
            time.sleep(args.warmup)
            rss_before = vm(server.pid, "VmRSS")
            hostile = [
                f"api/thumbs/{fifo}", f"api/images/{fifo}", f"api/view/{fifo}", f"api/explain/{fifo}?q=red",
                f"api/thumbs/{link}", f"api/images/{link}", f"api/view/{link}",
                f"api/thumbs/{big}", f"api/explain/{big}?q=blue", f"api/view/{big}",
            ]
            latencies: list[float] = []
            statuses: dict[str, dict[int, int]] = {}
            errors: list[str] = []
            lock = threading.Lock()
            deadline = time.monotonic() + args.duration

            def client(n: int) -> None:
                rng = random.Random(n)
                with httpx.Client(base_url=url, timeout=60) as http:
                    while time.monotonic() < deadline:
                        try:
                            t = time.perf_counter()
                            r = http.get("api/search", params={"q": rng.choice(QUERIES), "k": 60})
                            took = time.perf_counter() - t
                            start = rng.randrange((args.big_mb - 1) << 20)  # a browser seeking: 1 MB at a time
                            ranged = http.get(f"api/images/{big}", headers={"Range": f"bytes={start}-{start + (1 << 20) - 1}"})
                            bad = [(p, http.get(p).status_code) for p in rng.sample(hostile, 2)]
                            whole = http.get(f"api/images/{big}") if rng.random() < 0.02 else None  # now and then the whole 800 MB
                        except httpx.HTTPError as e:
                            with lock:
                                errors.append(f"{type(e).__name__}: {e}")
                            continue
                        with lock:
                            latencies.append(took)
                            statuses.setdefault("search", {}).setdefault(r.status_code, 0)
                            statuses["search"][r.status_code] += 1
                            statuses.setdefault("big original, 1 MB ranges", {}).setdefault(ranged.status_code, 0)
                            statuses["big original, 1 MB ranges"][ranged.status_code] += 1
                            if whole is not None:
                                statuses.setdefault("big original, whole", {}).setdefault(whole.status_code, 0)
                                statuses["big original, whole"][whole.status_code] += 1
                            for path, code in bad:
                                key = path.split("?")[0].rsplit("/", 1)[0] + " " + {fifo: "fifo", link: "link", big: "big"}[int(path.split("?")[0].rsplit("/", 1)[1])]
                                statuses.setdefault(key, {}).setdefault(code, 0)
                                statuses[key][code] += 1

            peak = [rss_before]

            def watch() -> None:
                while time.monotonic() < deadline + 1:
                    peak[0] = max(peak[0], vm(server.pid, "VmRSS"))
                    time.sleep(0.1)

            threads = [threading.Thread(target=client, args=(n,)) for n in range(args.clients)] + [threading.Thread(target=watch)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            hwm = vm(server.pid, "VmHWM")
        finally:
            server.terminate()
            server.wait(30)

    latencies.sort()
    p95 = latencies[int(0.95 * (len(latencies) - 1))] if latencies else float("nan")
    print(f"{args.clients} clients for {args.duration:g}s; {args.images} images, a FIFO, a link to /etc/passwd, a {args.big_mb} MB file")
    print(f"searches: {len(latencies)}, p50 {statistics.median(latencies) * 1000:.0f} ms, p95 {p95 * 1000:.0f} ms")
    for what, codes in sorted(statuses.items()):
        print(f"  {what}: " + ", ".join(f"{code} x{n}" for code, n in sorted(codes.items())))
    print(f"client errors: {len(errors)}" + (f" (first: {errors[0]})" if errors else ""))
    print(f"server memory: {rss_before / 2**20:.0f} MB after warm-up (image model loaded), peak RSS {max(peak[0], hwm) / 2**20:.0f} MB (VmHWM)")


if __name__ == "__main__":
    main()
