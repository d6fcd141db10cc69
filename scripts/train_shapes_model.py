"""Retrain the bundled toy model `searchlite-shapes` from scratch, on CPU, in one command:

    python scripts/train_shapes_model.py                 # ~20 min on 2 cores; writes the package's model
    python scripts/train_shapes_model.py --steps 300     # a quick, weaker one

It generates 20,000 captioned synthetic scenes (scripts/make_shapes.py), trains the architecture in
searchlite/models/bundled/searchlite-shapes.json with `searchlite train`'s code (symmetric InfoNCE, AdamW,
warmup + cosine), writes searchlite/models/bundled/searchlite-shapes.safetensors, and evaluates it on
held-out scenes (scripts/eval_shapes.py). A toy that knows four colours and three shapes; not a
photo model.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
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
    parser.add_argument("--scenes", type=int, default=20000)
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=1e-3)
    args = parser.parse_args()
    config, checkpoint = bundled_model("searchlite-shapes")
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "scenes"
        write(data, args.scenes, seed=1)
        encoder = load_encoder(spec_from_flags(str(config), None, random_init=True), "cpu")
        settings = TrainSettings(steps=args.steps, batch_size=args.batch_size, lr=args.lr)
        report = train(encoder, read_pairs(data), checkpoint, settings, overwrite=True)  # retrains the shipped weights
    halve(checkpoint)
    result = {"steps": report.steps, "train_seconds": round(report.seconds), "loss": [round(report.first_loss, 3), round(report.last_loss, 3)]}
    result |= evaluate(str(config), str(checkpoint))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
