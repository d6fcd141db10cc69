"""Decoding time per file by format, through searchlite's isolated decoder processes (as indexing
decodes): a 24 MP camera RAW by its embedded preview and by demosaicing, against the same picture
as a JPEG and a HEIC. Prints JSON.

    python scripts/bench_formats.py [--megapixels 24] [--repeat 3]

The RAWs are DNGs written by scripts/make_dng.py from a real photo (scikit-image's astronaut,
enlarged, with sensor noise); LibRaw decodes them as it decodes a camera's.
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--megapixels", type=float, default=24.0)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--min-side", type=int, default=224, help="the model's input size (indexing asks for no less)")
    args = parser.parse_args()

    import numpy as np
    import pillow_heif
    import skimage.data
    from make_dng import write_dng
    from PIL import Image

    from searchlite import SearchEngine

    pillow_heif.register_heif_opener()
    width = int(round((args.megapixels * 1e6 * 1.5) ** 0.5 / 2)) * 2
    height = width * 2 // 3
    rng = np.random.default_rng(0)
    photo = Image.fromarray(skimage.data.astronaut()).resize((width, height), Image.BICUBIC)
    noisy = np.asarray(photo, np.int16) + rng.normal(0, 4, (height, width, 3)).astype(np.int16)
    photo = Image.fromarray(noisy.clip(0, 255).astype(np.uint8))
    preview = photo.resize((1620, 1080), Image.LANCZOS)

    with tempfile.TemporaryDirectory() as tmp:
        files = {
            "raw_preview": write_dng(photo, preview, orientation=6),
            "raw_demosaic_half": write_dng(photo, None, orientation=6),
            "jpeg": _encode(photo, "JPEG", quality=90),
            "heic": _encode(photo, "HEIF", quality=80),
        }
        paths = {}
        for name, data in files.items():
            paths[name] = Path(tmp) / f"{name}.{'dng' if name.startswith('raw') else name}"
            paths[name].write_bytes(data)
        cases = [(name, path, args.min_side) for name, path in paths.items()]
        cases.append(("raw_demosaic_full", paths["raw_demosaic_half"], None))  # no min_side: full quality
        results: dict[str, object] = {"megapixels": round(width * height / 1e6, 1), "size": [width, height],
                                      "min_side": args.min_side, "repeat": args.repeat}
        with SearchEngine.without_index() as engine:
            engine.decode_image(paths["jpeg"], min_side=args.min_side)  # start the decoder processes
            for name, path, min_side in cases:
                seconds, size = [], None
                for _ in range(args.repeat):
                    started = time.perf_counter()
                    size = engine.decode_image(path, min_side=min_side).size
                    seconds.append(time.perf_counter() - started)
                results[name] = {"median_s": round(statistics.median(seconds), 3), "decoded_size": list(size),
                                 "file_mb": round(path.stat().st_size / 1e6, 1)}
    print(json.dumps(results, indent=2))


def _encode(img: object, fmt: str, **kwargs: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kwargs)  # type: ignore[attr-defined]
    return buf.getvalue()


if __name__ == "__main__":
    main()
