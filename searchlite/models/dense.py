"""Dense features: a CLIP image tower's grid (or patch) features projected into the joint space,
one unit vector per cell, from one forward pass over the whole picture.

CLIP's own patch similarities are noisy, because its last layer mixes every position into the
pooled token; the training-free correction used here keeps each cell's own value path:
- ModifiedResNet (the bundled searchlite-shapes model, RN50...): the attention pool's value and
  output projections applied at every grid cell (as MaskCLIP does), with no query/key mixing;
- VisionTransformer: MaskCLIP's value path in the last block (its attention replaced by each
  token's own value and output projection), then the block's MLP, ln_post and proj.

The picture is not centre-cropped: it is resized (keeping its aspect) to a side a few times the
model's input, so the grid has several cells across (a ResNet is convolutional; a ViT's position
embeddings are interpolated).

torch is imported inside the functions: importing it costs seconds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import InvalidInputError

if TYPE_CHECKING:
    from PIL import Image

# the shorter side the picture is resized to, in multiples of the model's input size
DEFAULT_SCALE = 2.0  # measured by scripts/eval_explain.py: 2 and 3 did best, 4 worse (cells see too little)


@dataclass(frozen=True)
class Grid:
    """Unit embeddings of the cells of a picture: vectors (h, w, d); cell (i, j) covers the pixels
    [j * cell_w, (j + 1) * cell_w) x [i * cell_h, (i + 1) * cell_h) of the picture as given."""

    vectors: np.ndarray
    cell_w: float
    cell_h: float


def supports(model: Any) -> bool:
    """Whether dense features can be computed for this model's image tower."""
    import open_clip
    import torch
    from open_clip.modified_resnet import ModifiedResNet

    visual = getattr(model, "visual", None)
    if isinstance(visual, ModifiedResNet):
        return True
    return (
        isinstance(visual, open_clip.transformer.VisionTransformer)
        and getattr(visual, "attn_pool", None) is None
        and visual.pool_type == "tok"
        and visual.transformer.batch_first
        and isinstance(visual.transformer.resblocks[-1].attn, torch.nn.MultiheadAttention)
    )


def grid_features(model: Any, image: Image.Image, *, scale: float = DEFAULT_SCALE, device: str = "cpu") -> Grid:
    """The dense features of an RGB picture (see the module's docstring)."""
    import torch

    if not supports(model):
        raise InvalidInputError(
            "this model's image tower gives no grid features (explain and regions need a ModifiedResNet "
            "or a plain ViT, as in OpenAI's CLIP models): use such a model"
        )
    visual = model.visual
    x, width, height = _input(model, image, scale, _stride(visual), device)
    with torch.inference_mode():
        cells = _resnet_cells(visual, x) if _is_resnet(visual) else _vit_cells(visual, x)  # (1, h, w, d)
        cells = torch.nn.functional.normalize(cells.float(), dim=-1)
    vectors = np.ascontiguousarray(cells[0].cpu().numpy(), dtype=np.float32)
    gh, gw = vectors.shape[:2]
    return Grid(vectors, width / gw, height / gh)


def _is_resnet(visual: Any) -> bool:
    from open_clip.modified_resnet import ModifiedResNet

    return isinstance(visual, ModifiedResNet)


def _stride(visual: Any) -> int:
    if _is_resnet(visual):
        return 32
    patch = visual.patch_size
    return int(patch[0] if isinstance(patch, (tuple, list)) else patch)


def _resnet_cells(visual: Any, x: Any) -> Any:
    """(1, h, w, d): the attention pool's value and output projections at every cell."""
    f = visual.stem(x)
    f = visual.layer4(visual.layer3(visual.layer2(visual.layer1(f))))  # (1, C, h, w)
    pool = visual.attnpool
    cells = f.permute(0, 2, 3, 1)  # (1, h, w, C)
    return pool.c_proj(pool.v_proj(cells))  # (1, h, w, d)


def _vit_cells(visual: Any, x: Any) -> Any:
    """(1, h, w, d): MaskCLIP's value path through the last block, for every patch token."""
    import torch
    import torch.nn.functional as F

    f = visual.conv1(x)  # (1, width, h, w)
    _, c, gh, gw = f.shape
    tokens = f.reshape(1, c, -1).permute(0, 2, 1)  # (1, hw, width)
    cls = visual.class_embedding.to(tokens.dtype).view(1, 1, -1)
    pos = visual.positional_embedding.to(tokens.dtype)  # (1 + g*g, width)
    g0 = int(math.isqrt(pos.shape[0] - 1))
    grid_pos = F.interpolate(pos[1:].reshape(1, g0, g0, c).permute(0, 3, 1, 2), size=(gh, gw), mode="bicubic", align_corners=False)
    pos = torch.cat([pos[:1], grid_pos.permute(0, 2, 3, 1).reshape(-1, c)])
    t = torch.cat([cls, tokens], dim=1) + pos  # (1, 1 + hw, width)
    t = visual.ln_pre(t)
    blocks = visual.transformer.resblocks
    for block in blocks[:-1]:
        t = block(t)
    last = blocks[-1]
    attn = last.attn
    value = F.linear(last.ln_1(t), attn.in_proj_weight[2 * c :], attn.in_proj_bias[2 * c :])  # each token's own value
    t = t + last.ls_1(attn.out_proj(value))
    t = t + last.ls_2(last.mlp(last.ln_2(t)))
    t = visual.ln_post(t[:, 1:])  # (1, hw, width)
    if visual.proj is not None:
        t = t @ visual.proj
    return t.reshape(1, gh, gw, -1)


@dataclass(frozen=True)
class Regions:
    """Region embeddings of a picture: boxes (n, 4) as x0, y0, x1, y1 in pixels of the picture as
    given, and unit vectors (n, d)."""

    boxes: np.ndarray
    vectors: np.ndarray


def region_features(
    model: Any, image: Image.Image, *, scale: float = 4.0, stride: int = 1, device: str = "cpu"
) -> Regions:
    """Windows of the model's own input size slid over the picture resized to scale x that size,
    each embedded from one forward pass: a ResNet's grid features pooled by its own attention pool
    over each window (the model's head on that window); a ViT's value-path cells averaged."""
    import torch

    if not supports(model):
        raise InvalidInputError(
            "this model's image tower gives no grid features (regions need a ModifiedResNet or a plain ViT, "
            "as in OpenAI's CLIP models): index without --regions"
        )
    visual = model.visual
    size = visual.image_size
    base = max(size) if isinstance(size, (tuple, list)) else int(size)
    cell = _stride(visual)
    k = max(1, base // cell)  # cells across one window: the model's own grid
    x, width, height = _input(model, image, scale, cell, device)
    with torch.inference_mode():
        if _is_resnet(visual):
            f = visual.layer4(visual.layer3(visual.layer2(visual.layer1(visual.stem(x)))))  # (1, C, h, w)
            _, c, gh, gw = f.shape
            kh, kw = min(k, gh), min(k, gw)
            windows = f.unfold(2, kh, stride).unfold(3, kw, stride)  # (1, C, nh, nw, kh, kw)
            nh, nw = windows.shape[2], windows.shape[3]
            windows = windows.permute(0, 2, 3, 1, 4, 5).reshape(nh * nw, c, kh, kw)
            out = _attnpool(visual.attnpool, windows)  # (nh * nw, d)
        else:
            cells = _vit_cells(visual, x)  # (1, h, w, d)
            _, gh, gw, d = cells.shape
            kh, kw = min(k, gh), min(k, gw)
            pooled = torch.nn.functional.avg_pool2d(cells.permute(0, 3, 1, 2), (kh, kw), stride=stride)  # (1, d, nh, nw)
            nh, nw = pooled.shape[2], pooled.shape[3]
            out = pooled[0].permute(1, 2, 0).reshape(nh * nw, d)
        out = torch.nn.functional.normalize(out.float(), dim=-1)
    cw, ch = width / gw, height / gh
    rows, cols = np.mgrid[0:nh, 0:nw]
    x0, y0 = cols.ravel() * stride * cw, rows.ravel() * stride * ch
    boxes = np.stack([x0, y0, x0 + kw * cw, y0 + kh * ch], axis=1).round().astype(np.int64)
    return Regions(boxes, np.ascontiguousarray(out.cpu().numpy(), dtype=np.float32))


def _input(model: Any, image: Image.Image, scale: float, cell: int, device: str) -> tuple[Any, int, int]:
    """(the normalised input (1, 3, H, W), the picture's width and height): the picture resized,
    aspect kept, to scale x the model's input on its shorter side, in whole cells."""
    import open_clip
    import torch
    from PIL import Image as PILImage

    size = model.visual.image_size
    base = max(size) if isinstance(size, (tuple, list)) else int(size)
    width, height = image.size
    factor = scale * base / min(width, height)
    w_in = max(cell, round(width * factor / cell) * cell)
    h_in = max(cell, round(height * factor / cell) * cell)
    cfg = open_clip.get_model_preprocess_cfg(model)
    mean = torch.tensor(cfg.get("mean", (0.48145466, 0.4578275, 0.40821073))).view(3, 1, 1)
    std = torch.tensor(cfg.get("std", (0.26862954, 0.26130258, 0.27577711))).view(3, 1, 1)
    pixels = np.asarray(image.convert("RGB").resize((w_in, h_in), PILImage.BICUBIC), dtype=np.float32) / 255
    return ((torch.from_numpy(pixels).permute(2, 0, 1) - mean) / std)[None].to(device), width, height


def _attnpool(pool: Any, windows: Any) -> Any:
    """The attention pool on windows (n, C, k, k), its position embedding resized to k x k."""
    import torch
    import torch.nn.functional as F

    n, c, kh, kw = windows.shape
    pos = pool.positional_embedding
    g0 = int(math.isqrt(pos.shape[0] - 1))
    if (kh, kw) != (g0, g0):
        grid = F.interpolate(pos[1:].reshape(1, g0, g0, -1).permute(0, 3, 1, 2), size=(kh, kw), mode="bilinear", align_corners=False)
        pos = torch.cat([pos[:1], grid.permute(0, 2, 3, 1).reshape(kh * kw, -1)])
    x = windows.reshape(n, c, kh * kw).permute(2, 0, 1)  # (kk, n, C)
    x = torch.cat([x.mean(dim=0, keepdim=True), x], dim=0) + pos[:, None, :].to(x.dtype)  # (kk + 1, n, C)
    x, _ = F.multi_head_attention_forward(
        query=x[:1], key=x, value=x, embed_dim_to_check=c, num_heads=pool.num_heads,
        q_proj_weight=pool.q_proj.weight, k_proj_weight=pool.k_proj.weight, v_proj_weight=pool.v_proj.weight,
        in_proj_weight=None, in_proj_bias=torch.cat([pool.q_proj.bias, pool.k_proj.bias, pool.v_proj.bias]),
        bias_k=None, bias_v=None, add_zero_attn=False, dropout_p=0.0, out_proj_weight=pool.c_proj.weight,
        out_proj_bias=pool.c_proj.bias, use_separate_proj_weight=True, training=False, need_weights=False,
    )
    return x[0]  # (n, d)
