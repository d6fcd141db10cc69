"""What the int8 check costs a whole index run: cold `searchlite index` runs of the first N photos of
bench_cold's folder into a new index, the model's float32 export already in the cache, three ways in
a row for each N: fp32 forced, judged (no int8 tower in the cache yet, so it is quantized and judged
on the run's first 64 photos) and with the verdict read (int8). Prints one line per run.

    HF_HOME=/tmp/hf-bench HF_HUB_OFFLINE=1 python scripts/bench_int8_check.py 64 128 160

The runs judge int8 below its threshold too (int8.MIN_IMAGES is set to 0 in their process), to
measure where a judged run breaks even with fp32. Uses bench_cold's photos and cache (run it first).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

# the CLI with the threshold lifted, so that runs smaller than it judge int8
CLI = "import sys\nfrom searchlite.models import int8\nint8.MIN_IMAGES = 0\nfrom searchlite.cli import app\nsys.argv[0] = 'searchlite'\napp()\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sizes", type=int, nargs="+")
    parser.add_argument("--bench-cold", type=Path, default=Path("/tmp/searchlite-bench-cold"), help="bench_cold.py's --workdir")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/searchlite-bench-int8"))
    args = parser.parse_args()
    exported = next((args.bench_cold / "searchlite-cache" / "models").iterdir())
    cache = args.workdir / "cache"
    model = cache / "models" / exported.name
    model.mkdir(parents=True, exist_ok=True)
    for name in ("image_tower.onnx", "image_tower.weights", "text_tower.safetensors"):
        if not (model / name).exists():
            shutil.copy(exported / name, model / name)
    photos = sorted((args.bench_cold / f"photos-{max(160, *args.sizes)}").glob("*.jpg"))
    env = dict(os.environ, SEARCHLITE_CACHE=str(cache))
    for n in args.sizes:
        folder = args.workdir / f"photos-{n}"
        if not folder.is_dir():
            folder.mkdir()
            for p in photos[:n]:
                os.link(p, folder / p.name)  # the same files (a symbolic link would be left out of the collection)
        for kind in ("fp32", "judged", "int8"):
            index = args.workdir / "index"
            shutil.rmtree(index, ignore_errors=True)
            if kind == "judged":
                for p in model.glob("image_tower.int8.*"):
                    p.unlink()
            precision = ["--precision", "fp32"] if kind == "fp32" else []
            started = time.perf_counter()
            run = subprocess.run([sys.executable, "-c", CLI, "index", str(folder), "--index", str(index), *precision], env=env,
                                 capture_output=True, text=True, check=True)
            seconds = time.perf_counter() - started
            said = next((line for line in run.stderr.splitlines() if "image tower:" in line), "")
            print(f"{n} photos, {kind}: {seconds:.2f} s {said}", flush=True)


if __name__ == "__main__":
    main()
