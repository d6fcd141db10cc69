"""Write a small folder of real sample photos (the ones scikit-image ships) in nested folders with
awkward names, for trying searchlite out:

    python scripts/make_sample_photos.py samples
"""

from __future__ import annotations

import argparse
from pathlib import Path

# (scikit-image photo, where it goes): several formats, spaces, unicode and upper-case extensions
LAYOUT = [
    ("astronaut", "astronaut.jpg"),
    ("chelsea", "cats/chelsea the cat.JPG"),
    ("coffee", "cats/über café/coffee.png"),
    ("rocket", "space/rocket.jpeg"),
    ("hubble_deep_field", "space/hubble deep field.jpg"),
    ("logo", "logos/skimage logo.webp"),
    ("horse", "nature/horse.png"),
    ("grass", "nature/grass.bmp"),
    ("retina", "misc/retina.tiff"),
    ("camera", "misc/camera.gif"),
]


def write_samples(root: Path) -> list[Path]:
    """Write the sample photos under root; returns their paths."""
    import numpy as np
    import skimage.data
    from PIL import Image

    paths = []
    for name, rel in LAYOUT:
        pixels = getattr(skimage.data, name)()
        if pixels.dtype != np.uint8:  # horse is a boolean mask
            pixels = pixels.astype(np.uint8) * 255
        img = Image.fromarray(pixels)
        if img.mode not in ("RGB", "L"):
            img = img.convert("RGB")
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        img.save(path)
        paths.append(path)
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", type=Path)
    folder = parser.parse_args().folder
    paths = write_samples(folder)
    print(f"wrote {len(paths)} sample photos to {folder}")


if __name__ == "__main__":
    main()
