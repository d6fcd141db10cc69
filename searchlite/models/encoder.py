"""One loaded CLIP model: images and texts in, unit-length float32 embeddings out.

torch and open_clip are imported inside functions: importing them costs seconds, and `--help` or
`info` must not pay for that.
"""

from __future__ import annotations

import logging
from functools import cached_property
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from ..errors import InvalidInputError
from .spec import ModelSpec

if TYPE_CHECKING:
    import torch
    from PIL import Image

log = logging.getLogger(__name__)

PRECISIONS = ("auto", "fp32", "int8", "bf16", "fp16")  # int8: the exported tower on a CPU (int8.py)


class ImageEncoder(Protocol):
    """What indexing and query images need of a model: a ClipEncoder (torch), or the torch-free
    ImageTower exported from one (image_tower.py)."""

    device: str
    image_size: int
    embed_dim: int
    crops_center: bool
    resizes_shortest_bicubic: bool
    logit_scale: float

    def preprocess(self, image: Image.Image) -> Any: ...

    def encode_images(self, batch: list[Any]) -> np.ndarray: ...


class ClipEncoder:
    """One loaded CLIP model: images and texts in, unit-length float32 embeddings out."""

    def __init__(self, model: Any, preprocess: Any, tokenizer: Any, device: str, spec: ModelSpec) -> None:
        self.model = model
        self.open_clip_transform = preprocess  # open_clip's own preprocessing for this model
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

    @property
    def deferred_preprocessing(self) -> tuple[list[Any], torch.Tensor, torch.Tensor] | None:
        """(the PIL steps, mean (3, 1, 1), std (3, 1, 1)) of open_clip's preprocessing when it is PIL
        steps followed by ToTensor and Normalize; None for anything else."""
        return self._deferred

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
            return self.open_clip_transform(image)
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
        on CPUs with native bf16 (AMX, AVX512-BF16), else fp32 ("int8" is the exported tower's,
        models/int8.py: this model stays fp32). A lower precision is kept only if
        its embeddings stay at cosine >= 0.999 with fp32 on a test batch. Returns the choice."""
        import torch

        if requested not in PRECISIONS:
            raise InvalidInputError(f"precision {requested}: use one of {', '.join(PRECISIONS)}", setting="precision")
        candidate = "fp32" if requested == "int8" else requested  # int8 is the exported tower's; torch stays the fp32 reference
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
