"""What an index's approximate search is tuned on: the index's own text embeddings of generic
photo-search phrases (phrases.py), and the recent real queries. A writer embeds the phrases once and
keeps them beside the index, so that a reader rebuilding the FAISS file loads no model."""

from __future__ import annotations

import io
import logging
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..errors import SearchliteError
from ..storage.atomic_file import write_atomic
from .phrases import tuning_phrases

if TYPE_CHECKING:
    from ..models.hub import ModelHub
    from ..storage.recent_queries import RecentQueries

log = logging.getLogger(__name__)

FILENAME = "tuning_queries.npz"


class TuningQueries:
    """The tuning queries of the index whose phrase embeddings live at path (.npz, with the key of
    the model that embedded them)."""

    def __init__(self, path: Path, models: ModelHub, recent: RecentQueries | None) -> None:
        self.path = path
        self.models = models
        self.recent = recent

    def stored(self) -> np.ndarray | None:
        """The kept phrase embeddings and the recent queries, loading no model; None when there
        are neither (then the indexed vectors stand in)."""
        return self._with_recent(self._read())

    def embedded(self) -> np.ndarray | None:
        """A writer's: stored(), the phrases embedded and kept first when they are not yet."""
        return self._with_recent(self.keep())

    def keep(self) -> np.ndarray | None:
        """The phrase embeddings, embedded with the index's text tower and written beside the index
        when missing or another model's; None when no text model can load."""
        kept = self._read()
        if kept is not None:
            return kept
        try:
            vectors = self.models.embed_text(tuning_phrases())
        except SearchliteError as e:
            log.warning("tuning approximate search on the indexed vectors: no text model (%s)", e)
            return None
        buffer = io.BytesIO()
        np.savez(buffer, vectors=vectors.astype(np.float32), model=np.array(self.models.key()))
        try:
            write_atomic(self.path, buffer.getvalue())
        except (OSError, SearchliteError) as e:  # the next writer embeds them again
            log.info("cannot keep %s: %s", self.path, e)
        return vectors

    def _read(self) -> np.ndarray | None:
        try:
            with np.load(self.path, allow_pickle=False) as kept:
                vectors, model = kept["vectors"], str(kept["model"])
        except (OSError, ValueError, KeyError) as e:  # missing or damaged: a writer embeds them again
            log.debug("no tuning queries in %s: %s", self.path, e)
            return None
        if model != self.models.key() or vectors.ndim != 2 or len(vectors) != len(tuning_phrases()) or not np.all(np.isfinite(vectors)):
            return None
        return vectors.astype(np.float32)

    def _with_recent(self, phrases: np.ndarray | None) -> np.ndarray | None:
        parts = [] if phrases is None else [phrases]
        if self.recent is not None:
            recent = self.recent.vectors()
            if len(recent) and (not parts or recent.shape[1] == parts[0].shape[1]):
                parts.append(recent)
        return np.concatenate(parts).astype(np.float32) if parts else None
