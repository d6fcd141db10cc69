"""Writing a model's text tower to the user's cache (text_tower.safetensors), so that text queries
run without torch. It is written only after the torch-free tokenizer and tower give the torch
model's tokens and embeddings on test texts."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..errors import InvalidInputError
from ..storage.atomic_file import write_atomic
from . import tower
from .tower import TextTower

if TYPE_CHECKING:
    from ..models.encoder import ClipEncoder

log = logging.getLogger(__name__)


def export_text_tower(encoder: ClipEncoder, path: Path, model_key: str) -> TextTower | None:
    """The usable tower at path, else the encoder's text tower written there after checking it;
    None when the model's text side is not one tower.py runs (or the folder cannot be written:
    text queries then use torch)."""
    if (existing := TextTower.load(path, model_key)) is not None:
        return existing
    exported = encoder.text_tower_weights()
    if exported is None:
        return None
    tensors, heads, quick_gelu = exported
    candidate = TextTower.from_tensors(tensors, heads, quick_gelu)
    texts = list(tower.CHECK_TEXTS)
    if candidate is None or not np.array_equal(candidate.tokenizer(texts), encoder.tokenize(texts).numpy()):
        log.info("not exporting the text tower: this model's text side differs from the torch-free tower's")
        return None
    cosine = float((candidate.encode_texts(texts) * encoder.encode_texts(texts)).sum(axis=1).min())
    if cosine < tower.MIN_COSINE:
        log.info("not exporting the text tower: it drifts from the torch model (cosine %.6f)", cosine)
        return None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, tower.export_bytes(tensors, heads=heads, quick_gelu=quick_gelu, model_key=model_key))
    except (OSError, InvalidInputError) as e:  # a read-only index (or a link there) still answers, through torch
        log.info("cannot write %s (%s); text queries will use torch", path, getattr(e, "strerror", None) or e)
        return None
    return TextTower.load(path, model_key)
