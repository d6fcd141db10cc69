"""Loading a CLIP model through open_clip's own factory, from a tag, an hf-hub id, a config or a
checkpoint, onto a device."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from ..errors import ModelLoadError, ModelMismatchError
from . import weights
from .encoder import ClipEncoder
from .spec import HF_HUB_PREFIX, ModelSpec, config_name, file_sha256

log = logging.getLogger(__name__)


def resolve_device(device: str | None) -> str:
    """The flag's device, else CUDA when available, else CPU."""
    import torch

    if device is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        torch.empty(0, device=device)
    except (RuntimeError, AssertionError) as e:
        raise ModelLoadError(f"device {device!r} is not usable here ({e}); use the cpu device", setting="device") from None
    return device


def surely_cpu(device: str | None) -> bool:
    """Whether a model will run on the CPU, known without importing torch: the cpu device, or no
    device given on a machine without an NVIDIA driver (where resolve_device picks the CPU)."""
    if device is not None:
        return device == "cpu"
    return not (os.path.exists("/proc/driver/nvidia/version") or shutil.which("nvidia-smi"))


def load_encoder(spec: ModelSpec, device: str | None = None, *, for_training: bool = False) -> ClipEncoder:
    """Create the model with its weights through open_clip's own factory. Unless for_training,
    reparameterize it for inference (MobileCLIP's FastViT fuses its training-time branches: the
    same outputs, faster; other models are unchanged)."""
    import open_clip
    from timm.models import reparameterize_model

    device = resolve_device(device)
    if spec.checkpoint is not None:
        _check_checkpoint(spec)

    kwargs: dict[str, Any] = {}
    if spec.hf_hub is not None:
        cached_dir = weights.hub_model_dir(spec.hf_hub, spec.describe())
        model_name = f"local-dir:{cached_dir}" if cached_dir else HF_HUB_PREFIX + spec.hf_hub
        pretrained = None
    elif spec.config is not None:
        model_name, pretrained = _register_config(spec.config), spec.checkpoint
    else:
        model_name = spec.name
        if model_name not in open_clip.list_models():
            raise ModelLoadError(
                f"unknown model {model_name!r}: pass an open_clip model name "
                "(python -c 'import open_clip; print(open_clip.list_models())') or a config JSON"
            )
        if spec.pretrained is not None:
            if spec.pretrained not in open_clip.list_pretrained_tags_by_model(model_name):
                tags = ", ".join(open_clip.list_pretrained_tags_by_model(model_name)) or "none"
                raise ModelLoadError(
                    f"unknown pretrained tag {spec.pretrained!r} for {model_name} (known: {tags}); "
                    "or pass a local checkpoint file"
                )
            pretrained, kwargs = weights.tag_weights(model_name, spec.pretrained, spec.describe())
        else:
            pretrained = spec.checkpoint

    try:
        # a checkpoint file is loaded strictly (a weight it lacks is an error), so every random
        # initial weight would be overwritten: skip drawing them
        with _no_random_init() if pretrained is not None else contextlib.nullcontext():
            model, _, preprocess = open_clip.create_model_and_transforms(
                model_name, pretrained=pretrained, device=device, weights_only=True, **kwargs
            )
    except AssertionError as e:  # open_clip asserts that a checkpoint's shapes fit the architecture
        raise ModelLoadError(
            f"cannot load {spec.describe()}: the weights do not fit this architecture ({_first_line(str(e))}); "
            "name the model they were trained as (an open_clip model name or config JSON) with them"
        ) from None
    except (RuntimeError, OSError, ValueError, KeyError) as e:
        raise ModelLoadError(f"cannot load {spec.describe()}: {_first_line(str(e))}") from None
    model.eval()
    if not for_training:
        reparameterize_model(model, inplace=True)
    tokenizer = open_clip.get_tokenizer(model_name)
    log.info("loaded %s on %s", spec.describe(), device)
    return ClipEncoder(model, preprocess, tokenizer, device, spec)


def _no_random_init() -> Any:
    """A context in which torch's random weight fills do nothing, for building a model whose every
    weight a checkpoint then overwrites: drawing ViT-B-32's random weights took 1.8 s of the 2.1 s
    its creation took. Other threads are not affected (torch function modes are per thread)."""
    import torch
    from torch.overrides import TorchFunctionMode

    init = torch.nn.init
    fills = {
        init.uniform_, init.normal_, init.trunc_normal_, init.kaiming_uniform_, init.kaiming_normal_,
        init.xavier_uniform_, init.xavier_normal_, init.orthogonal_, torch.Tensor.uniform_, torch.Tensor.normal_,
    }

    class NoRandomInit(TorchFunctionMode):
        def __torch_function__(self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None) -> Any:
            kwargs = kwargs or {}
            if func in fills:
                return args[0] if args else kwargs["tensor"]  # the tensor, left as it was
            return func(*args, **kwargs)

    return NoRandomInit()


def _check_checkpoint(spec: ModelSpec) -> None:
    path = spec.checkpoint
    assert path is not None
    if not os.path.isfile(path):
        raise ModelLoadError(
            f"checkpoint {path} not found; give its new location as the pretrained weights (the "
            "same file, checked by sha256)",
            setting="pretrained",
        )
    if spec.checkpoint_sha256 and file_sha256(path) != spec.checkpoint_sha256:
        raise ModelMismatchError(
            f"checkpoint {path} has changed since the index was built (sha256 differs); restore it, "
            "or build a new index with the new weights in a new folder",
            setting="model",
        )


def _register_config(config: dict[str, Any]) -> str:
    """Make a custom config known to open_clip under a stable name; returns that name."""
    import open_clip

    name = config_name(config)
    if name not in open_clip.list_models():
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / f"{name}.json"
            path.write_text(json.dumps(config))
            open_clip.add_model_config(path)
    return name


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0] if text.strip() else "unknown error"
