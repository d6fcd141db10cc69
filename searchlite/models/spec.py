"""Which model an index is built with: its identity as the user named it, with no torch import.

`searchlite info`, a cold text query and the model-mismatch check all need the identity and none of
the model, so this module stays cheap to import.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path
from typing import Any

from ..config import DEFAULT_MODEL, DEFAULT_PRETRAINED
from ..errors import ModelLoadError, ModelMismatchError

HF_HUB_PREFIX = "hf-hub:"


@dataclass(frozen=True)
class ModelSpec:
    """Which model an index is built with.

    Exactly one architecture source: `name` (an open_clip model name), `config` (a custom open_clip
    model config, kept whole so later commands need no flags) or `hf_hub` (config and weights from a
    Hugging Face hub repo). Weights: `pretrained` (an open_clip tag) or `checkpoint` (a local file,
    identified by its sha256 so it may move).
    """

    name: str | None = None
    config: dict[str, Any] | None = None
    hf_hub: str | None = None
    pretrained: str | None = None
    checkpoint: str | None = None
    checkpoint_sha256: str | None = None

    def describe(self) -> str:
        """Short human-readable form, as the user would type it."""
        arch = self.name or self.hf_hub and f"{HF_HUB_PREFIX}{self.hf_hub}" or (
            f"custom config {config_name(self.config or {})}"
        )
        weights = self.pretrained or (
            self.checkpoint and f"checkpoint {self.checkpoint} (sha256 {self.checkpoint_sha256[:12]})"
        )
        return f"{arch} / {weights}" if weights else arch

    def same_model(self, other: ModelSpec) -> bool:
        """True when both specs give the same weights (a checkpoint is compared by content)."""
        return (
            self.name == other.name
            and self.config == other.config
            and self.hf_hub == other.hf_hub
            and self.pretrained == other.pretrained
            and self.checkpoint_sha256 == other.checkpoint_sha256
        )

    def to_record(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v is not None}

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> ModelSpec:
        return cls(**record)


def config_name(config: dict[str, Any]) -> str:
    """A stable open_clip registry name for a custom config."""
    digest = hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()
    return f"searchlite-custom-{digest[:12]}"


def file_sha256(path: str) -> str:
    """sha256 of a checkpoint, computed once per version of the file in this process (opening an
    index with --pretrained checks it, and loading the model checks it again)."""
    st = os.stat(path)
    return _sha256(os.path.abspath(path), st.st_size, st.st_mtime_ns)


@lru_cache(maxsize=16)
def _sha256(path: str, _size: int, _mtime_ns: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def spec_from_flags(model: str | None, pretrained: str | None, *, random_init: bool = False) -> ModelSpec:
    """Build a spec from --model / --pretrained as a user typed them (no weights are loaded).
    random_init: a model without --pretrained starts from random weights (for training), except a
    bundled model, which always has weights: it starts from its shipped checkpoint. A checkpoint
    that `searchlite train` wrote names its own architecture, used when model is not given."""
    model_given = model is not None
    if pretrained and pretrained.startswith(HF_HUB_PREFIX):
        return ModelSpec(hf_hub=pretrained[len(HF_HUB_PREFIX) :])
    if model and model.startswith(HF_HUB_PREFIX):
        return ModelSpec(hf_hub=model[len(HF_HUB_PREFIX) :])
    model = model or DEFAULT_MODEL
    if pretrained and _looks_like_path(pretrained) and not os.path.isfile(pretrained):
        raise ModelLoadError(f"checkpoint file {pretrained} not found: give the path of an existing open_clip checkpoint", setting="pretrained")
    if model in BUNDLED_MODELS:
        config_path, checkpoint = bundled_model(model)
        return replace(spec_from_flags(str(config_path), pretrained or str(checkpoint)), name=model)
    is_config = model.endswith(".json") or os.path.isfile(model)
    if not is_config and model != DEFAULT_MODEL:
        _check_known_name(model)
    if pretrained is None and random_init:
        if is_config:
            return ModelSpec(config=_read_config(model))
        return ModelSpec(name=model)
    if pretrained is None:
        if model != DEFAULT_MODEL:
            raise ModelLoadError(
                f"model {model} needs pretrained weights: an open_clip pretrained tag, an hf-hub: id "
                "or a local checkpoint file",
                setting="pretrained",
            )
        pretrained = DEFAULT_PRETRAINED

    name: str | None = model
    config: dict[str, Any] | None = None
    if is_config:
        config = _read_config(model)
        name = None

    if os.path.isfile(pretrained):
        path = os.path.abspath(pretrained)
        if not model_given and (architecture := checkpoint_architecture(path)) is not None:
            name, config = architecture.get("name"), architecture.get("config")  # searchlite train wrote it
        return ModelSpec(name=name, config=config, checkpoint=path, checkpoint_sha256=file_sha256(path))
    if config is not None:
        raise ModelLoadError(
            f"checkpoint file {pretrained} not found: a model config JSON needs a local checkpoint "
            "file as its pretrained weights",
            setting="pretrained",
        )
    return ModelSpec(name=name, pretrained=pretrained)


# where a checkpoint that searchlite trained records its architecture: safetensors metadata, or a
# key beside "state_dict" in a .pt (open_clip loads both as it loads any checkpoint)
ARCHITECTURE_KEY = "searchlite_architecture"


def architecture_record(spec: ModelSpec) -> str | None:
    """What a trained checkpoint records of its model: the open_clip name and/or config (JSON);
    None for a hub model, whose architecture is its hub repo's."""
    record = {k: v for k, v in (("name", spec.name), ("config", spec.config)) if v is not None}
    return json.dumps(record) if record else None


def checkpoint_architecture(path: str) -> dict[str, Any] | None:
    """The architecture recorded in a checkpoint written by `searchlite train` ({"name": ...}
    and/or {"config": ...}); None for any other checkpoint."""
    try:
        if path.endswith(".safetensors"):
            with open(path, "rb") as f:  # 8 bytes of header length, then the JSON header
                header = json.loads(f.read(int.from_bytes(f.read(8), "little")))
            text = (header.get("__metadata__") or {}).get(ARCHITECTURE_KEY)
        else:
            import torch  # only for a .pt given without a model: loading it needs torch anyway

            # mmap: the tensors are not read, whatever the checkpoint's size
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            text = state.get(ARCHITECTURE_KEY) if isinstance(state, dict) else None
        record = json.loads(text) if isinstance(text, str) else None
    except (OSError, ValueError, RuntimeError, AttributeError, pickle.UnpicklingError):  # not ours, or not a checkpoint: loading says so
        return None
    if not isinstance(record, dict) or not record or set(record) - {"name", "config"}:
        return None
    return record


def _looks_like_path(pretrained: str) -> bool:
    """A --pretrained value meant as a file rather than an open_clip tag."""
    return "/" in pretrained or os.sep in pretrained or pretrained.endswith((".pt", ".pth", ".bin", ".safetensors"))


def _check_known_name(name: str) -> None:
    """Refuse a model name open_clip does not know. Imports open_clip (seconds), so only called
    for names other than the default and the bundled ones: flags a user typed to build an index."""
    import open_clip

    if name not in open_clip.list_models():
        raise ModelLoadError(
            f"unknown model {name!r}: pass an open_clip model name (list them with "
            "python -c \"import open_clip; print(open_clip.list_models())\") or a model config JSON"
        )


# Models that ship inside the package: name -> file stem under searchlite/models/bundled/
BUNDLED_MODELS = {"searchlite-shapes": "searchlite-shapes"}


def bundled_model(name: str) -> tuple[Path, Path]:
    """(config JSON, checkpoint) of a model shipped with searchlite."""
    folder = Path(__file__).parent / "bundled"
    stem = BUNDLED_MODELS[name]
    return folder / f"{stem}.json", folder / f"{stem}.safetensors"


def _read_config(path: str) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as f:
            config = json.load(f)
    except FileNotFoundError:
        raise ModelLoadError(f"model config {path} not found: pass an open_clip model name or a config JSON file") from None
    except (OSError, ValueError) as e:
        raise ModelLoadError(f"cannot read model config {path}: {e}") from None
    if not isinstance(config, dict) or not all(k in config for k in ("embed_dim", "vision_cfg", "text_cfg")):
        raise ModelLoadError(
            f"model config {path} is not an open_clip config: it needs embed_dim, vision_cfg and text_cfg"
        )
    return config


def reconcile(recorded: ModelSpec, requested: ModelSpec | None, index_dir: Path, *, model_given: bool = True) -> ModelSpec:
    """The spec to use on an existing index: the recorded one, unless the user asked for another.
    Without model_given (--pretrained alone), the weights are for the index's own architecture:
    that is how a checkpoint that moved is found again."""
    if requested is None:
        return recorded
    if not model_given and requested.hf_hub is None:
        requested = replace(
            recorded,
            pretrained=requested.pretrained,
            checkpoint=requested.checkpoint,
            checkpoint_sha256=requested.checkpoint_sha256,
        )
    if not requested.same_model(recorded):
        problem = f"the index in {index_dir} was built with {recorded.describe()}, not {requested.describe()}"
        raise ModelMismatchError(
            f"{problem}; open it without naming a model to use the index's model, or build a separate "
            "index with the new model in a new folder",
            setting="model",
            problem=problem,
        )
    return requested  # same weights; a checkpoint may have moved to the requested path
