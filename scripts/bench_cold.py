"""What a command-line user waits for, side by side with rclip, the same work on both sides: a cold
index run of camera JPEGs into an empty index, adding one photo to an existing index, and a cold text
query on the indexed folder; wall time and peak resident memory of each whole process. Prints every
round, the medians and their ratios as JSON.

    python scripts/prefill_hf_cache.py /tmp/hf        # random ViT-B-32-256 weights where the default model's go
    HF_HOME=/tmp/hf HF_HUB_OFFLINE=1 python scripts/bench_cold.py --rclip-python /tmp/rclip-venv/bin/python

rclip (pip install rclip==4.0.8, in a Python 3.12 environment) reads ONNX towers from
$RCLIP_DATADIR/ViT-B-32-256-datacomp_s34b_b86k/; this script exports them from the same weights
searchlite loads, so both run the same model. rclip's command line always answers a query, after
indexing the current folder unless told `-n`, so each side does one job per process:
- index only: `searchlite index FOLDER` against rclip's own `init_rclip(folder)`, the function its
  main() calls to bring the index up to date, without the search main() runs after it;
- query only: `searchlite query TEXT` against `rclip -n TEXT` (no indexing), on the folder indexed.
Without --rclip-python only searchlite's figures are printed. Rounds alternate the two tools.
searchlite's first run (one photo) exports the model's towers; its first round into a new index of
enough photos also quantizes the image tower to int8 and judges it on 64 of the photos (models/int8.py),
later rounds read that verdict: each round's image tower is printed (--precision fp32 measures without int8).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

RCLIP_MODEL = "ViT-B-32-256-datacomp_s34b_b86k"
QUERY = "a photo of a cat"
# rclip's main() without its search: init_rclip indexes the working folder (batch size 8, its default)
RCLIP_INDEX_ONLY = (
    "import os\n"
    "from rclip.main import init_rclip\n"
    "rclip, model, db = init_rclip(os.getcwd(), 8)\n"
    "rclip.close(); model.close(); db.close()\n"
)


def timed(args: list[str], cwd: Path | None = None, env: dict[str, str] | None = None) -> tuple[float, float]:
    """(seconds, peak RSS in MB of the process and the children it waited for) of one command. A
    child starts with its parent's peak RSS on Linux, so this process stays small: it imports only
    the standard library, and runs the heavy preparations in child processes."""
    started = time.perf_counter()
    process = subprocess.Popen(args, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - started
    if status != 0:
        raise SystemExit(f"{' '.join(args)} failed: {process.stderr.read().decode()[-2000:]}")
    return seconds, usage.ru_maxrss / 1024


def export_for_rclip(datadir: Path) -> None:
    """visual.onnx and textual.onnx of the default model (whatever weights HF_HOME holds), the
    tokenizer's vocabulary and the notice files rclip checks for, laid out as rclip downloads them."""
    import open_clip
    import torch

    from searchlite import SearchEngine

    with SearchEngine.without_index() as engine:
        model = engine.load_model().model
    folder = datadir / RCLIP_MODEL
    folder.mkdir(parents=True, exist_ok=True)

    class Text(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, tokens: torch.Tensor) -> torch.Tensor:
            return self.model.encode_text(tokens)

    size = model.visual.image_size
    size = size[0] if isinstance(size, (tuple, list)) else size
    for module, example, name in (
        (model.visual, torch.zeros(2, 3, size, size), "visual.onnx"),
        (Text(), torch.zeros(2, 77, dtype=torch.int64), "textual.onnx"),
    ):
        buffer = io.BytesIO()
        torch.onnx.export(module.eval(), (example,), buffer, dynamo=False, opset_version=17, input_names=["input"],
                          output_names=["output"], dynamic_axes={"input": {0: "n"}, "output": {0: "n"}})
        (folder / name).write_bytes(buffer.getvalue())
    (datadir / "tokenizer").mkdir(exist_ok=True)
    vocab = Path(open_clip.__file__).parent / "bpe_simple_vocab_16e6.txt.gz"
    shutil.copy(vocab, datadir / "tokenizer" / vocab.name)
    for notice in ("LICENSE", "OPENAI-CLIP-MIT.txt", "README.md", "THIRD_PARTY_NOTICES.md"):
        (datadir / notice).write_text("benchmark copy\n")


def fresh_rclip_datadir(models: Path, target: Path) -> Path:
    """An rclip data folder with the exported models and no database."""
    target.mkdir(parents=True)
    for entry in models.iterdir():
        (target / entry.name).symlink_to(entry)
    return target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=160)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/searchlite-bench-cold"),
                        help="kept between runs: the photos take a minute to write")
    parser.add_argument("--rclip-python", help="the Python of the environment rclip 4.0.8 is installed in")
    parser.add_argument("--precision", help="searchlite index's --precision (default: its own, auto)")
    parser.add_argument("--prepare", choices=["photos", "rclip"], help=argparse.SUPPRESS)  # in a child process
    args = parser.parse_args()
    if args.prepare == "photos":
        from bench_index import make_photos

        make_photos(args.workdir, args.images, (4000, 3000))
        return
    if args.prepare == "rclip":
        export_for_rclip(args.workdir)
        return
    this = [sys.executable, __file__]

    work = args.workdir
    photos = work / f"photos-{args.images}"
    if not photos.is_dir():
        staging = work / "staging"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        subprocess.run([*this, "--prepare", "photos", "--workdir", str(staging), "--images", str(args.images + args.rounds)], check=True)
        extras = work / "extras"
        extras.mkdir(exist_ok=True)
        for i in range(args.rounds):  # the photos added to an existing index, one per round
            os.replace(staging / f"photo_{args.images + i:04d}.jpg", extras / f"extra_{i}.jpg")
        os.replace(staging, photos)
    extras = sorted((work / "extras").glob("*.jpg"))
    runs = work / "runs"
    shutil.rmtree(runs, ignore_errors=True)
    runs.mkdir()

    # as installed, both tools run from compiled bytecode (pip compiles rclip's at install; an
    # editable searchlite writes its own on the first run below): a machine that sets
    # PYTHONDONTWRITEBYTECODE would make searchlite compile its modules in every process
    base = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env = dict(base, SEARCHLITE_CACHE=str(work / "searchlite-cache"))
    cli = [sys.executable, "-m", "searchlite"]
    precision = ["--precision", args.precision] if args.precision else []
    # searchlite's one-time export of the model's towers, on the first index run of a model
    shutil.rmtree(work / "searchlite-cache", ignore_errors=True)
    first = runs / "first"
    first.mkdir()
    shutil.copy(extras[0], first)
    export_seconds, _ = timed([*cli, "index", str(first), "--index", str(runs / "first-index"), *precision], env=env)

    rclip_models = work / "rclip-models"
    if args.rclip_python and not (rclip_models / RCLIP_MODEL / "visual.onnx").exists():
        subprocess.run([*this, "--prepare", "rclip", "--workdir", str(rclip_models)], check=True)

    figures: dict[str, dict[str, list[float]]] = {"searchlite": {}, "rclip": {}}
    towers: list[str] = []  # searchlite's image tower in each round (info's description)

    def record(tool: str, what: str, seconds: float, rss: float) -> None:
        figures[tool].setdefault(what + "_s", []).append(seconds)
        figures[tool].setdefault(what + "_peak_rss_mb", []).append(rss)

    for r in range(args.rounds):
        for tool in (("searchlite", "rclip") if r % 2 == 0 else ("rclip", "searchlite")):
            if tool == "rclip" and not args.rclip_python:
                continue
            folder = runs / f"{tool}-{r}-photos"
            os.symlink(photos, folder)  # each tool indexes the same files under its own path
            extra = runs / f"{tool}-{r}-extra"
            extra.mkdir()
            shutil.copy(extras[r % len(extras)], extra)
            if tool == "searchlite":
                index = runs / f"{tool}-{r}-index"
                record(tool, "index", *timed([*cli, "index", str(folder), "--index", str(index), *precision], env=env))
                record(tool, "add_one", *timed([*cli, "index", str(extra), "--index", str(index), *precision], env=env))
                tower = json.loads(subprocess.run([*cli, "info", "--json", "--index", str(index)], env=env, capture_output=True,
                                                  text=True, check=True).stdout).get("image_tower") or {}
                towers.append(tower.get("description", "none recorded"))
                record(tool, "query", *timed([*cli, "query", QUERY, "--index", str(index), "-k", "10"], env=env))
            else:
                renv = dict(base, RCLIP_DATADIR=str(fresh_rclip_datadir(rclip_models, runs / f"{tool}-{r}-data")))
                index_only = [args.rclip_python, "-c", RCLIP_INDEX_ONLY]
                record(tool, "index", *timed(index_only, cwd=folder, env=renv))
                record(tool, "add_one", *timed(index_only, cwd=extra, env=renv))
                record(tool, "query", *timed([args.rclip_python, "-m", "rclip", "-n", "-t", "10", QUERY], cwd=folder, env=renv))
            for what in ("index", "add_one", "query"):
                print(f"round {r} {tool} {what}: {figures[tool][what + '_s'][-1]:.2f} s, "
                      f"{figures[tool][what + '_peak_rss_mb'][-1]:.0f} MB", file=sys.stderr, flush=True)

    def median(values: list[float]) -> float:
        return round(statistics.median(values), 3)

    result: dict[str, object] = {"images": args.images, "rounds": args.rounds, "searchlite_first_run_export_s": round(export_seconds, 2),
                                 "searchlite_image_tower_rounds": towers}
    for tool, measured in figures.items():
        for what, values in measured.items():
            result[f"{tool}_{what}"] = median(values)
            result[f"{tool}_{what}_rounds"] = [round(v, 3) for v in values]
        if "index_s" in measured:
            result[f"{tool}_index_img_per_s"] = round(args.images / statistics.median(measured["index_s"]), 2)
    if args.rclip_python:
        for what in ("index_s", "add_one_s", "query_s"):
            result[f"ratio_{what}"] = round(statistics.median(figures["searchlite"][what]) / statistics.median(figures["rclip"][what]), 3)
    json.dump(result, sys.stdout, indent=1)
    print()


if __name__ == "__main__":
    main()
