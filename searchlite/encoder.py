"""CLIP towers: which model (its identity), loading it, and encoding image batches and texts.

torch and open_clip are imported inside functions: importing them costs seconds, and `--help` or
`info` must not pay for that.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import tempfile
from dataclasses import dataclass, replace
from functools import cached_property, lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .config import DEFAULT_MODEL, DEFAULT_PRETRAINED
from . import weights
from .errors import ModelLoadError, ModelMismatchError

if TYPE_CHECKING:
    import torch
    from PIL import Image

log = logging.getLogger(__name__)

HF_HUB_PREFIX = "hf-hub:"
PRECISIONS = ("auto", "fp32", "bf16", "fp16")


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
    random_init: a model without --pretrained starts from random weights (for training)."""
    if pretrained and pretrained.startswith(HF_HUB_PREFIX):
        return ModelSpec(hf_hub=pretrained[len(HF_HUB_PREFIX) :])
    if model and model.startswith(HF_HUB_PREFIX):
        return ModelSpec(hf_hub=model[len(HF_HUB_PREFIX) :])
    model = model or DEFAULT_MODEL
    if model in BUNDLED_MODELS:
        config_path, checkpoint = bundled_model(model)
        return replace(spec_from_flags(str(config_path), pretrained or str(checkpoint)), name=model)
    if pretrained is None and random_init:
        if model.endswith(".json") or os.path.isfile(model):
            return ModelSpec(config=_read_config(model))
        return ModelSpec(name=model)
    if pretrained is None:
        if model != DEFAULT_MODEL:
            raise ModelLoadError(
                f"--model {model} needs --pretrained: an open_clip pretrained tag, an hf-hub: id "
                "or a local checkpoint file"
            )
        pretrained = DEFAULT_PRETRAINED

    name: str | None = model
    config: dict[str, Any] | None = None
    if model.endswith(".json") or os.path.isfile(model):
        config = _read_config(model)
        name = None

    if os.path.isfile(pretrained):
        path = os.path.abspath(pretrained)
        return ModelSpec(name=name, config=config, checkpoint=path, checkpoint_sha256=file_sha256(path))
    if config is not None:
        raise ModelLoadError(
            f"checkpoint file {pretrained} not found: a model config JSON needs a local checkpoint "
            "as --pretrained"
        )
    return ModelSpec(name=name, pretrained=pretrained)


# Models that ship inside the package: name -> file stem under searchlite/models/
BUNDLED_MODELS = {"searchlite-shapes": "searchlite-shapes"}


def bundled_model(name: str) -> tuple[Path, Path]:
    """(config JSON, checkpoint) of a model shipped with searchlite."""
    folder = Path(__file__).parent / "models"
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


def reconcile(recorded: ModelSpec, requested: ModelSpec | None, index_dir: Path) -> ModelSpec:
    """The spec to use on an existing index: the recorded one, unless the user asked for another."""
    if requested is None:
        return recorded
    if not requested.same_model(recorded):
        raise ModelMismatchError(
            f"the index in {index_dir} was built with {recorded.describe()}, not "
            f"{requested.describe()}; drop --model/--pretrained to use the index's model, or pass "
            "--index with a new folder to build a separate index with the new model"
        )
    return requested  # same weights; a checkpoint may have moved to the requested path


class ClipEncoder:
    """One loaded CLIP model: images and texts in, unit-length float32 embeddings out."""

    def __init__(self, model: Any, preprocess: Any, tokenizer: Any, device: str, spec: ModelSpec) -> None:
        self.model = model
        self._preprocess = preprocess
        self._deferred = _deferred_scaling(preprocess)
        self._tokenizer = tokenizer
        self.device = device
        self.spec = spec
        size = model.visual.image_size
        self.image_size: int = max(size) if isinstance(size, (tuple, list)) else int(size)
        # the model resizes the shorter side and crops the centre: decoding may crop long strips
        cfg = _preprocess_cfg(model)
        self.crops_center = cfg.get("resize_mode", "shortest") == "shortest"
        # the preprocessing starts with a bicubic resize of the shorter side to image_size, which
        # decoding can do itself (images.resize_shortest_side) where it is cheaper to ship the result
        self.resizes_shortest_bicubic = self.crops_center and cfg.get("interpolation", "bicubic") == "bicubic"
        # the learned temperature of the contrastive loss: logits = scale x cosine
        self.precision = "fp32"  # of the image tower; see choose_precision
        scale = getattr(model, "logit_scale", None)
        self.logit_scale = float(scale.detach().exp()) if scale is not None else 100.0

    @cached_property
    def embed_dim(self) -> int:
        """Width of the shared embedding space."""
        return int(self.encode_texts(["a"]).shape[1])

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        """RGB PIL image -> model input tensor (3, H, W) for encode_images. Thread-safe.

        With open_clip's usual preprocessing (PIL steps, then ToTensor and Normalize), the result
        is uint8 and encode_images scales and normalizes a whole batch at once, pixel for pixel as
        those two would: done here, in a decoding thread, waking torch's threads for one small
        image cost 3-5 ms, more than the rest of the preprocessing."""
        import torch

        if self._deferred is None or image.mode != "RGB":
            return self._preprocess(image)
        for step in self._deferred[0]:
            image = step(image)
        return torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1)  # (3, H, W)

    def encode_images(self, batch: list[torch.Tensor]) -> np.ndarray:
        """Tensors from preprocess() -> (n, d) unit float32 (computed in self.precision)."""
        import torch

        with torch.inference_mode(), self._autocast(self.precision):
            x = torch.stack(batch)  # (n, 3, H, W)
            if x.dtype == torch.uint8:  # ToTensor's scaling, then Normalize (see preprocess)
                _, mean, std = self._deferred
                x = x.to(torch.float32).div(255).sub_(mean).div_(std)
            if self.device.startswith("cuda"):
                x = x.pin_memory()  # page-locked, so the copy to the GPU runs asynchronously
            x = x.to(self.device, non_blocking=True)
            return _to_numpy(self.model.encode_image(x, normalize=True))

    def choose_precision(self, requested: str = "auto") -> str:
        """Set the image tower's precision: "fp32", "bf16", "fp16", or "auto" — fp16 on CUDA, bf16
        on CPUs with native bf16 (AMX, AVX512-BF16), else fp32. A lower precision is kept only if
        its embeddings stay at cosine >= 0.999 with fp32 on a test batch. Returns the choice."""
        import torch

        if requested not in PRECISIONS:
            raise ModelLoadError(f"precision {requested!r}: use one of {', '.join(PRECISIONS)}")
        candidate = requested
        if requested == "auto":
            capability = torch.backends.cpu.get_cpu_capability()
            native_bf16 = "AMX" in capability or "BF16" in capability
            candidate = "fp16" if self.device.startswith("cuda") else "bf16" if native_bf16 else "fp32"
        self.precision = "fp32"
        if candidate != "fp32":
            size = self.image_size
            batch = list(torch.rand(4, 3, size, size, generator=torch.Generator().manual_seed(0)))  # 4 x (3, S, S)
            reference = self.encode_images(batch)
            self.precision = candidate
            cosine = float((reference * self.encode_images(batch)).sum(axis=1).min())
            if cosine < 0.999 and requested == "auto":
                log.warning("%s embeddings drift from fp32 (cosine %.4f); using fp32", candidate, cosine)
                self.precision = "fp32"
        return self.precision

    def _autocast(self, precision: str) -> Any:
        import torch

        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
        device_type = "cuda" if self.device.startswith("cuda") else "cpu"
        return torch.autocast(device_type, dtype=dtype, enabled=dtype is not None)

    def tokenize(self, texts: list[str]) -> torch.Tensor:
        """Texts -> token ids (n, context_length)."""
        return self._tokenizer(texts)

    def text_tower_weights(self) -> tuple[dict[str, np.ndarray], int, bool] | None:
        """(tensors, heads, quick_gelu) of the text tower for text_tower.TextTower, or None
        when this model's text side is not the standard CLIP one that it runs."""
        import open_clip
        import torch
        from open_clip.tokenizer import SimpleTokenizer, _clean_lower

        tok = self._tokenizer
        plain_tokenizer = (
            isinstance(tok, SimpleTokenizer) and tok.clean_fn is _clean_lower and tok.reduction_fn is None
            and tok.encoder.get("<end_of_text>") == len(tok.encoder) - 1
        )
        if not (plain_tokenizer and _truncatable(self.model)):
            return None
        model = self.model
        blocks = model.transformer.resblocks
        act = blocks[0].mlp.gelu
        quick_gelu = isinstance(act, open_clip.transformer.QuickGELU)
        exact_gelu = isinstance(act, torch.nn.GELU) and act.approximate == "none"
        if not (quick_gelu or exact_gelu) or not all(isinstance(b.attn, torch.nn.MultiheadAttention) for b in blocks):
            return None
        tensors = {
            name: _to_numpy(value)
            for name, value in model.state_dict().items()
            if not name.startswith("visual.") and name not in ("logit_scale", "logit_bias", "attn_mask")
        }
        if "text_projection.weight" in tensors:  # a Linear (d, w) without bias -> the (w, d) matrix
            tensors["text_projection"] = np.ascontiguousarray(tensors.pop("text_projection.weight").T)
        return tensors, blocks[0].attn.num_heads, quick_gelu

    def encode_texts(self, texts: list[str]) -> np.ndarray:
        """Texts -> (n, d) unit float32."""
        import torch

        with torch.inference_mode():
            tokens = self.tokenize(texts).to(self.device)  # (n, context_length)
            if _truncatable(self.model):
                return _to_numpy(_encode_text_to_eot(self.model, tokens))
            return _to_numpy(self.model.encode_text(tokens, normalize=True))


def _truncatable(model: Any) -> bool:
    """A standard CLIP text tower: causal attention, pooled at the end-of-text token."""
    import open_clip

    return isinstance(model, open_clip.CLIP) and model.text_pool_type == "argmax" and model.attn_mask is not None


def _encode_text_to_eot(model: Any, tokens: torch.Tensor) -> torch.Tensor:
    """open_clip's CLIP.encode_text(normalize=True) run on the first L tokens only, L = the last
    end-of-text position + 1. The causal mask means no position sees the padding after it, so the
    pooled features are the same (to ~1e-7), at a fraction of the cost of all 77 positions."""
    import torch
    import torch.nn.functional as F
    from open_clip.transformer import text_global_pool

    length = int(tokens.argmax(dim=-1).max()) + 1  # the EOT token has the highest id
    text = tokens[:, :length]  # (n, L)
    cast_dtype = model.transformer.get_cast_dtype()
    x = model.token_embedding(text).to(cast_dtype) + model.positional_embedding[:length].to(cast_dtype)  # (n, L, w)
    x = model.transformer(x, attn_mask=model.attn_mask[:length, :length])
    x = text_global_pool(model.ln_final(x), text, "argmax")  # (n, w)
    x = model.text_projection(x) if isinstance(model.text_projection, torch.nn.Linear) else x @ model.text_projection
    return F.normalize(x, dim=-1)  # (n, d)


def _deferred_scaling(preprocess: Any) -> tuple[list[Any], torch.Tensor, torch.Tensor] | None:
    """(the PIL steps, mean (3, 1, 1), std (3, 1, 1)) when preprocess is PIL steps followed by
    ToTensor and Normalize, as open_clip builds it; None for anything else."""
    import torch
    from torchvision.transforms import Normalize, ToTensor

    *steps, to_tensor, normalize = getattr(preprocess, "transforms", [None, None])
    if not (isinstance(to_tensor, ToTensor) and type(normalize) is Normalize):
        return None
    if any(isinstance(step, (ToTensor, Normalize)) for step in steps):
        return None

    def channels(values: Any) -> torch.Tensor:
        return torch.as_tensor(values, dtype=torch.float32).view(-1, 1, 1)

    return steps, channels(normalize.mean), channels(normalize.std)


def _preprocess_cfg(model: Any) -> dict[str, Any]:
    import open_clip

    return open_clip.get_model_preprocess_cfg(model)


def _to_numpy(t: torch.Tensor) -> np.ndarray:
    return np.ascontiguousarray(t.float().cpu().numpy(), dtype=np.float32)


def resolve_device(device: str | None) -> str:
    """The flag's device, else CUDA when available, else CPU."""
    import torch

    if device is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        torch.empty(0, device=device)
    except (RuntimeError, AssertionError) as e:
        raise ModelLoadError(f"device {device!r} is not usable here ({e}); use --device cpu") from None
    return device


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
            f"checkpoint {path} not found; pass --pretrained with its new location (the same file, "
            "checked by sha256)"
        )
    if spec.checkpoint_sha256 and file_sha256(path) != spec.checkpoint_sha256:
        raise ModelMismatchError(
            f"checkpoint {path} has changed since the index was built (sha256 differs); restore it, "
            "or pass --index with a new folder to index with the new weights"
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
