"""How a command gets its engine: the index it names, or, for the commands that can run on a
model of their own, an engine without an index."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..engine import SearchEngine


def open_index(index: Path | None, **kwargs: Any) -> SearchEngine:
    """SearchEngine.open, imported when a command runs (not for --help)."""
    from ..engine import SearchEngine

    return SearchEngine.open(index, **kwargs)


def open_for_model(index: Path | None, model: str | None, pretrained: str | None, device: str | None) -> SearchEngine:
    """The index, for its model and cached class weights, when one is named (--index or
    SEARCHLITE_INDEX: it must exist) or ./index exists and no model is named; otherwise an engine
    without an index (nothing written to disk) for the model named, or the default one."""
    from ..engine import SearchEngine
    from ..errors import IndexNotFoundError

    if not (model or pretrained):
        try:
            return SearchEngine.open(index, device=device, create=False)
        except IndexNotFoundError:
            if index is not None:  # the user named that index
                raise
    return SearchEngine.without_index(model=model, pretrained=pretrained, device=device)
