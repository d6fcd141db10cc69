"""Retrain the bundled toy model `searchlite-shapes` from scratch, on CPU, in one command:

    OMP_NUM_THREADS=1 python scripts/train_shapes_model.py   # ~32 min on 2 cores; writes the package's model
    python scripts/train_shapes_model.py --steps 300     # a quick, weaker one

It generates 30,000 captioned synthetic scenes (scripts/make_shapes.py: one to three shapes on
plain, textured, gradient or photographic backgrounds), trains the architecture in
searchlite/models/bundled/searchlite-shapes.json with `searchlite train`'s code (symmetric InfoNCE,
AdamW, warmup + cosine), writes searchlite/models/bundled/searchlite-shapes.safetensors (float16),
and evaluates it on fresh scenes from both renderers (scripts/eval_shapes.py). A toy that knows
four colours and three shapes; not a photo model.

--config/--output train another architecture elsewhere (to compare architectures); --data keeps the
rendered scenes in a folder and reuses them on the next run.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from eval_shapes import evaluate  # noqa: E402
from make_shapes import write  # noqa: E402

from searchlite.models.loading import load_encoder  # noqa: E402
from searchlite.models.spec import bundled_model, spec_from_flags  # noqa: E402
from searchlite.train.training import TrainSettings, read_pairs, train  # noqa: E402


def halve(checkpoint: Path) -> None:
    """Store the weights as float16 so the package stays small; they load into float32 models."""
    from safetensors.torch import load_file, save_file

    state = load_file(str(checkpoint))
    save_file({k: v.half() if v.is_floating_point() else v for k, v in state.items()}, str(checkpoint))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenes", type=int, default=30000)
    parser.add_argument("--steps", type=int, default=4000)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--config", type=Path, help="model config JSON (default: the bundled model's)")
    parser.add_argument("--output", type=Path, help="checkpoint to write (default: the bundled model's)")
    parser.add_argument("--data", type=Path, help="folder for the rendered scenes, reused when it holds them")
    parser.add_argument("--no-eval", action="store_true")
    args = parser.parse_args()
    config, checkpoint = bundled_model("searchlite-shapes")
    config, checkpoint = args.config or config, args.output or checkpoint
    with tempfile.TemporaryDirectory() as tmp:
        data = args.data or Path(tmp) / "scenes"
        started = time.monotonic()
        if not (data / f"{args.scenes - 1:05d}.txt").exists():
            write(data, args.scenes, seed=1)
        print(f"rendered {args.scenes} scenes in {time.monotonic() - started:.0f} s", flush=True)
        encoder = load_encoder(spec_from_flags(str(config), None, random_init=True), "cpu")
        settings = TrainSettings(steps=args.steps, batch_size=args.batch_size, lr=args.lr)

        def progress(step: int, total: int, loss: float) -> None:
            if step % 50 == 0 or step == total:
                print(f"step {step}/{total} loss {loss:.3f} {time.monotonic() - started:.0f} s", flush=True)

        report = train(encoder, read_pairs(data)[: args.scenes], checkpoint, settings, progress, overwrite=True)  # retrains the shipped weights
    halve(checkpoint)
    result = {"steps": report.steps, "train_seconds": round(report.seconds), "loss": [round(report.first_loss, 3), round(report.last_loss, 3)],
              "size_bytes": checkpoint.stat().st_size}
    print(json.dumps(result), flush=True)
    if not args.no_eval:
        for renderer in ("eval", "train"):
            print(json.dumps(evaluate(str(config), str(checkpoint), renderer=renderer)), flush=True)


if __name__ == "__main__":
    main()
