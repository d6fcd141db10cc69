"""Synthetic videos for measuring video moments: each holds a few shots, each shot one scene of
the evaluation renderer (scripts/render_eval_shapes.py, one shape) held for a few seconds, encoded
with PyAV. Returns (and with --truth prints as JSON) when each shot starts and what it shows.

    python scripts/make_shape_videos.py videos --count 20 --seed 5
"""

from __future__ import annotations

import argparse
import io
import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
import render_eval_shapes  # noqa: E402

SIDE = 160


@dataclass(frozen=True)
class ShotTruth:
    start: float
    end: float
    color: str
    shape: str


def write_video(path: Path, shots: list[tuple[Image.Image, float]], fps: int = 10, codec: str = "mpeg4") -> None:
    """Encode (image, seconds) shots into one video file (the container from path's suffix)."""
    import av

    with av.open(str(path), mode="w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width = stream.height = SIDE
        stream.pix_fmt = "yuv420p"
        for image, seconds in shots:
            frame = av.VideoFrame.from_image(image.convert("RGB").resize((SIDE, SIDE)))
            for _ in range(max(1, round(seconds * fps))):
                for packet in stream.encode(frame):
                    container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def write(folder: Path, count: int, seed: int, shots: tuple[int, int] = (3, 5), seconds: tuple[float, float] = (2.0, 8.0),
          suffix: str = ".mp4") -> dict[str, list[ShotTruth]]:
    """count videos under folder; returns each file's shots (no video shows one (colour, shape)
    twice)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng([seed, 0x71DE0])
    truth: dict[str, list[ShotTruth]] = {}
    for i in range(count):
        n = int(rng.integers(shots[0], shots[1] + 1))
        made: list[tuple[Image.Image, float]] = []
        seen: set[tuple[str, str]] = set()
        t = 0.0
        entries = []
        while len(made) < n:
            data, scene = render_eval_shapes.render(rng, 1)
            if scene.objects[0] in seen:
                continue
            seen.add(scene.objects[0])
            length = float(np.round(rng.uniform(*seconds), 1))
            made.append((Image.open(io.BytesIO(data)), length))
            entries.append(ShotTruth(t, t + length, *scene.objects[0]))
            t += length
        path = folder / f"{i:04d}{suffix}"
        write_video(path, made)
        truth[str(path)] = entries
    return truth


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", type=Path)
    parser.add_argument("--count", type=int, default=20)
    parser.add_argument("--seed", type=int, default=5)
    args = parser.parse_args()
    truth = write(args.folder, args.count, args.seed)
    print(json.dumps({path: [asdict(s) for s in shots] for path, shots in truth.items()}))


if __name__ == "__main__":
    main()
