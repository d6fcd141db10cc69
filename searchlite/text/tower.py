"""CLIP's text tower without torch, so a text query needs no torch.

Importing torch and open_clip and building the model takes seconds, which a command-line user would
pay on every `searchlite query`. When an index is built, the model's text tower is exported to the
user's cache, once per model (text_tower.safetensors: its float32 weights; config.model_cache_dir) and checked against the torch tower; a query
then tokenizes (tokenizer.py) and runs the transformer: in numpy for an engine's first text query
(nothing to set up), in onnxruntime from the second on (onnx.py: about twice as fast, 0.3 s
to set up). Only the standard open_clip CLIP text transformer is supported (causal, pooled at
end-of-text); other models keep using torch.
"""

from __future__ import annotations

import json
import logging
import math
import threading
from collections.abc import Mapping
from functools import cached_property
from pathlib import Path

import numpy as np

from .onnx import LN_EPS, OnnxTransformer
from .tokenizer import ClipTokenizer

log = logging.getLogger(__name__)

FILENAME = "text_tower.safetensors"
FORMAT = "searchlite-text-tower-1"
MIN_COSINE = 0.9999  # against the torch tower, on CHECK_TEXTS, before an export is written
# short and long, non-ASCII, HTML entities, special-token look-alikes, and one cut at 77 tokens
CHECK_TEXTS = (
    "a dog on grass", "", "A Photo of the CN Tower at NIGHT!!", "café crème brûlée", "日本の猫と犬", "emoji 🐶🌳",
    "it's they'll &amp; &lt;b&gt;", "<start_of_text> <end_of_text>", "3.14159 x 42", "word " * 100,
)
_PER_BLOCK = (
    "ln_1.weight", "ln_1.bias", "attn.in_proj_weight", "attn.in_proj_bias", "attn.out_proj.weight",
    "attn.out_proj.bias", "ln_2.weight", "ln_2.bias", "mlp.c_fc.weight", "mlp.c_fc.bias",
    "mlp.c_proj.weight", "mlp.c_proj.bias",
)
_TOP = ("token_embedding.weight", "positional_embedding", "ln_final.weight", "ln_final.bias", "text_projection")


def expected_names(layers: int) -> set[str]:
    """Every tensor the tower uses; an export holding anything else is a model it cannot run."""
    return {*_TOP, *(f"transformer.resblocks.{i}.{n}" for i in range(layers) for n in _PER_BLOCK)}


def export_bytes(tensors: Mapping[str, np.ndarray], *, heads: int, quick_gelu: bool, model_key: str) -> bytes:
    """The export file's bytes: float32 tensors (memory-mapped as they are by load()) and what the
    tower needs to know in the metadata."""
    from safetensors.numpy import save

    stored = {name: np.ascontiguousarray(t, dtype=np.float32) for name, t in tensors.items()}
    metadata = {"format": FORMAT, "heads": str(heads), "quick_gelu": str(int(quick_gelu)), "model": model_key}
    return save(stored, metadata=metadata)


def _map(path: Path) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """(tensors, metadata) of a float32 safetensors file, memory-mapped: nothing is read until used,
    and a query touches only the token-embedding rows it needs."""
    with open(path, "rb") as f:
        header_len = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(header_len))
    metadata = header.pop("__metadata__", {})
    data = np.memmap(path, dtype=np.uint8, mode="r", offset=8 + header_len)
    tensors = {}
    for name, entry in header.items():
        start, end = entry["data_offsets"]
        if entry["dtype"] != "F32":
            raise ValueError(f"{name} is {entry['dtype']}, not F32")
        tensors[name] = data[start:end].view(np.float32).reshape(entry["shape"])
    return tensors, metadata


class TextTower:
    """Texts -> unit float32 embeddings (n, d), as CLIP.encode_text(normalize=True) computes them.
    Safe to call from many threads."""

    def __init__(self, tensors: Mapping[str, np.ndarray], heads: int, quick_gelu: bool) -> None:
        self._t = tensors
        self._layers = _count_layers(tensors)
        self._heads = heads
        self._quick_gelu = quick_gelu
        self._lock = threading.Lock()
        self._encodes = 0
        self._onnx: OnnxTransformer | None = None

    @cached_property
    def tokenizer(self) -> ClipTokenizer:
        """Built on first use, so that checking an export (load) does not read the vocabulary."""
        return ClipTokenizer(context_length=len(self._t["positional_embedding"]))

    @classmethod
    def load(cls, path: Path, model_key: str) -> TextTower | None:
        """The exported tower of the model `model_key`; None when there is none, it belongs to
        another model, or it cannot be read (the caller then uses torch)."""
        try:
            tensors, metadata = _map(path)
            if metadata.get("format") != FORMAT or metadata.get("model") != model_key:
                return None
            return cls.from_tensors(tensors, int(metadata["heads"]), metadata["quick_gelu"] == "1")
        except FileNotFoundError:
            return None
        except Exception as e:  # noqa: BLE001 - a damaged export only costs speed: torch answers instead
            log.debug("cannot use %s: %s", path, e)
            return None

    @classmethod
    def from_tensors(cls, tensors: Mapping[str, np.ndarray], heads: int, quick_gelu: bool) -> TextTower | None:
        """The tower over these weights; None when they hold more or less than it uses."""
        if set(tensors) != expected_names(_count_layers(tensors)):
            return None
        return cls(tensors, heads, quick_gelu)

    def encode_texts(self, texts: list[str]) -> np.ndarray:
        """(n, d) unit float32 embeddings."""
        return self._encode_tokens(self.tokenizer(texts))

    @property
    def uses_onnx(self) -> bool:
        """Whether the transformer now runs in onnxruntime (from the second encode on)."""
        return self._onnx is not None

    def _encode_tokens(self, tokens: np.ndarray) -> np.ndarray:
        """Token ids (n, context_length) -> (n, d) unit float32. Runs only up to the last end-of-text
        token: the attention is causal, so the padding after it changes nothing."""
        t = self._t
        eot = tokens.argmax(axis=1)  # the end-of-text token has the highest id
        length = int(eot.max()) + 1
        x = t["token_embedding.weight"][tokens[:, :length]] + t["positional_embedding"][:length]  # (n, L, w)
        mask = np.triu(np.full((length, length), -np.inf, dtype=np.float32), 1)  # (L, L) causal
        with self._lock:
            self._encodes += 1
            if self._encodes == 2:
                return self._pool(self._start_onnx(x, mask, eot), eot)
            onnx = self._onnx
        return self._pool(onnx(x, mask) if onnx else self._transformer(x, mask), eot)

    def _start_onnx(self, x: np.ndarray, mask: np.ndarray, eot: np.ndarray) -> np.ndarray:
        """Builds the onnxruntime transformer (at the second encode, so a one-off query, the CLI's,
        pays no setup) and keeps it only if it gives this encode's numpy answer (cosine >=
        MIN_COSINE); if onnxruntime cannot run it, numpy goes on. Returns numpy's hidden states."""
        hidden = self._transformer(x, mask)
        try:
            onnx = OnnxTransformer(self._t, self._layers, self._heads, self._quick_gelu)
            cosine = float((self._pool(onnx(x, mask), eot) * self._pool(hidden, eot)).sum(axis=1).min())
            if cosine >= MIN_COSINE:
                self._onnx = onnx
            else:
                log.info("text queries stay in numpy: onnxruntime drifts from it (cosine %.6f)", cosine)
        except Exception as e:  # noqa: BLE001 - onnxruntime only adds speed: numpy answers the same
            log.info("text queries stay in numpy: onnxruntime cannot run the text tower (%s)", e)
        return hidden

    def _transformer(self, x: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """(n, L, w) embedded tokens -> (n, L, w) hidden states after ln_final, in numpy."""
        t = self._t
        for i in range(self._layers):
            p = f"transformer.resblocks.{i}."
            x = x + self._attention(_layer_norm(x, t[p + "ln_1.weight"], t[p + "ln_1.bias"]), p, mask)
            h = _layer_norm(x, t[p + "ln_2.weight"], t[p + "ln_2.bias"])
            h = self._act(_linear(h, t[p + "mlp.c_fc.weight"], t[p + "mlp.c_fc.bias"]))  # (n, L, 4w)
            x = x + _linear(h, t[p + "mlp.c_proj.weight"], t[p + "mlp.c_proj.bias"])
        return _layer_norm(x, t["ln_final.weight"], t["ln_final.bias"])

    def _pool(self, hidden: np.ndarray, eot: np.ndarray) -> np.ndarray:
        """The end-of-text token's hidden state, projected: (n, d) unit float32."""
        pooled = hidden[np.arange(len(hidden)), eot] @ self._t["text_projection"]  # (n, d)
        return np.ascontiguousarray(pooled / np.linalg.norm(pooled, axis=1, keepdims=True), dtype=np.float32)

    def _attention(self, x: np.ndarray, prefix: str, mask: np.ndarray) -> np.ndarray:
        t = self._t
        n, length, width = x.shape
        head = width // self._heads
        qkv = _linear(x, t[prefix + "attn.in_proj_weight"], t[prefix + "attn.in_proj_bias"])  # (n, L, 3w)
        q, k, v = (part.reshape(n, length, self._heads, head).transpose(0, 2, 1, 3) for part in np.split(qkv, 3, axis=-1))
        scores = q @ k.transpose(0, 1, 3, 2) / math.sqrt(head) + mask  # (n, H, L, L)
        scores = np.exp(scores - scores.max(axis=-1, keepdims=True))
        out = (scores / scores.sum(axis=-1, keepdims=True)) @ v  # (n, H, L, head)
        out = out.transpose(0, 2, 1, 3).reshape(n, length, width)
        return _linear(out, t[prefix + "attn.out_proj.weight"], t[prefix + "attn.out_proj.bias"])

    def _act(self, x: np.ndarray) -> np.ndarray:
        if self._quick_gelu:
            return x / (1 + np.exp(-1.702 * x))
        return 0.5 * x * (1 + _erf(x / math.sqrt(2)))


def _count_layers(tensors: Mapping[str, np.ndarray]) -> int:
    return sum(1 for name in tensors if name.endswith(".attn.in_proj_weight"))


def _linear(x: np.ndarray, weight: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """torch's Linear: x (..., in) @ weight(out, in).T + bias. Computed as weight @ x.T, which
    OpenBLAS streams through the weights faster when x has few rows (a short query)."""
    rows = x.reshape(-1, x.shape[-1])  # (m, in)
    return (weight @ rows.T).T.reshape(*x.shape[:-1], -1) + bias


def _layer_norm(x: np.ndarray, weight: np.ndarray, bias: np.ndarray) -> np.ndarray:
    mean = x.mean(axis=-1, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=-1, keepdims=True)
    return (x - mean) / np.sqrt(var + LN_EPS) * weight + bias


def _erf(x: np.ndarray) -> np.ndarray:
    """erf to 1.5e-7 (Abramowitz & Stegun 7.1.26); numpy has none and scipy costs an import."""
    a = np.abs(x)
    t = 1 / (1 + 0.3275911 * a)
    poly = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429))))
    return np.sign(x) * (1 - poly * np.exp(-a * a))
