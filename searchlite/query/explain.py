"""Where a query matches in a picture: the cosine of the query with each cell of the picture's
dense features (models/dense.py), its peak, and the picture overlaid with the heat map."""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import file_error
from ..models.dense import Grid

if TYPE_CHECKING:
    from PIL import Image

    from ..media.named_files import NamedFiles
    from ..media.safe_read import ReadPolicy
    from ..models.hub import ModelHub


# the softmax temperature that turns cell scores into the peak's weights (chosen on scenes of the
# shapes model, seed 7 of scripts/eval_explain.py's renderer; the README's figure uses other scenes)
PEAK_TEMPERATURE = 10.0


@dataclass(frozen=True)
class Explanation:
    """scores (h, w): for each cell, the cosine with the query minus the cosine with the empty
    text (CLIP Surgery's removal of what every text shares, which otherwise lights up the same
    cells whatever the query); cell (i, j) covers the pixels [j * cell_w, (j + 1) * cell_w) x
    [i * cell_h, (i + 1) * cell_h) of the oriented picture (width x height). peak: (x, y) in
    pixels, where the query matches best: the centre of the cells weighted by
    softmax(PEAK_TEMPERATURE x score)."""

    width: int
    height: int
    scores: np.ndarray
    cell_w: float
    cell_h: float
    peak: tuple[float, float]

    def to_json(self) -> dict[str, Any]:
        return {
            "width": self.width,
            "height": self.height,
            "cell_width": round(self.cell_w, 3),
            "cell_height": round(self.cell_h, 3),
            "peak": [round(self.peak[0], 1), round(self.peak[1], 1)],
            "scores": np.round(self.scores, 5).tolist(),
        }


def explain_file(
    path: str, text: str, models: ModelHub, files: NamedFiles, *, output: str | os.PathLike[str] | None = None,
    scale: float | None = None, read: ReadPolicy | None = None,
) -> Explanation:
    """Where text matches in the picture of a file: the cosine of the text with each cell of the
    torch model's grid features (with the training-free correction of models/dense.py), less the
    empty text's, and its peak in pixels of the oriented picture. output: also write the picture
    overlaid with the heat map there (PNG). read: as NamedFiles.decode's. Raises
    InvalidInputError for a model without grid features."""
    from ..media.embed_files import check_named, decode_named
    from ..models import dense
    from ..storage.atomic_file import write_atomic

    read = read or files.read_policy
    check_named(path, read=read)  # a missing file is reported before any model loads
    empty, query = models.embed_text(["", text])
    encoder = models.load_model()
    scale = scale or dense.DEFAULT_SCALE
    decoded = decode_named(path, files.settings, files.decoders(), read=read, min_side=int(scale * encoder.image_size), max_pixels=files.settings.max_pixels)
    grid = dense.grid_features(encoder.model, decoded.image, scale=scale, device=encoder.device)
    rows, cols = grid.vectors.shape[:2]
    grid = Grid(grid.vectors, decoded.width / cols, decoded.height / rows)  # cells in the original's pixels
    result = explain(grid, query, empty, decoded.width, decoded.height)
    if output is not None:
        buf = io.BytesIO()
        overlay(decoded.image, result).save(buf, "PNG")
        try:
            write_atomic(Path(output), buf.getvalue())
        except OSError as e:
            raise file_error(Path(output), e, writing=True) from None
    return result


def explain(grid: Grid, query: np.ndarray, empty: np.ndarray, width: int, height: int) -> Explanation:
    """The explanation of unit query (d,) over a picture's grid; empty: the empty text's (d,)."""
    direction = np.asarray(query, np.float32).reshape(-1) - np.asarray(empty, np.float32).reshape(-1)
    scores = grid.vectors @ direction  # (h, w)
    weights = np.exp(PEAK_TEMPERATURE * (scores - scores.max()))
    weights /= weights.sum()
    rows, cols = np.mgrid[0 : scores.shape[0], 0 : scores.shape[1]]
    x = float(((cols + 0.5) * weights).sum() * grid.cell_w)
    y = float(((rows + 0.5) * weights).sum() * grid.cell_h)
    return Explanation(width, height, scores, grid.cell_w, grid.cell_h, (x, y))


def overlay(image: Image.Image, explanation: Explanation) -> Image.Image:
    """The picture (the explained one, possibly reduced) darkened where the query does not match
    and tinted warm where it does, with a ring at the peak."""
    from PIL import Image, ImageDraw

    scores = explanation.scores
    low, high = float(scores.min()), float(scores.max())
    level = (scores - low) / (high - low) if high > low else np.ones_like(scores)
    heat = Image.fromarray((level * 255).astype(np.uint8), mode="L").resize(image.size, Image.BICUBIC)
    h = np.asarray(heat, np.float32)[..., None] / 255  # (H, W, 1) in [0, 1]
    base = np.asarray(image.convert("RGB"), np.float32)
    warm = np.concatenate([np.full_like(h, 255), h * 220, np.zeros_like(h)], axis=2)  # red -> yellow
    mixed = base * (0.35 + 0.25 * h) + warm * (0.4 * h)
    out = Image.fromarray(np.clip(mixed, 0, 255).astype(np.uint8))
    x = explanation.peak[0] * image.size[0] / explanation.width
    y = explanation.peak[1] * image.size[1] / explanation.height
    r = max(4, min(image.size) // 40)
    ImageDraw.Draw(out).ellipse((x - r, y - r, x + r, y + r), outline=(255, 255, 255), width=max(1, r // 3))
    return out
