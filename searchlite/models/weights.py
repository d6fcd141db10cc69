"""Where pretrained weights come from: the standard Hugging Face cache (HF_HOME) that open_clip uses.

Cached weights are used without touching the network (no per-run hub round trip, and an offline
laptop does not sit through retries). Missing weights are downloaded once; when the hub cannot be
reached the caller gets one clear error at once.
"""

from __future__ import annotations

import logging
import os
import socket
from typing import Any
from urllib.parse import urlparse

from ..errors import WeightsUnavailableError

log = logging.getLogger(__name__)

# open_clip's own file names on the hub, preferred first (it tries safetensors before pickles)
HUB_WEIGHT_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
HUB_CONFIG_FILE = "open_clip_config.json"
OFFLINE_MODEL = "searchlite-shapes"  # bundled with the package: what a first run without network can use

# keys of an open_clip pretrained-tag config that shape preprocessing -> create_model_and_transforms kwargs
_PREPROCESS_KEYS = {"mean": "image_mean", "std": "image_std", "interpolation": "image_interpolation", "resize_mode": "image_resize_mode"}


def tag_weights(model_name: str, tag: str, describe: str) -> tuple[str, dict[str, Any]]:
    """(local checkpoint path, preprocessing kwargs) for an open_clip pretrained tag."""
    from open_clip.pretrained import download_pretrained, get_pretrained_cfg

    cfg = get_pretrained_cfg(model_name, tag)
    preprocess = {kw: cfg[key] for key, kw in _PREPROCESS_KEYS.items() if key in cfg}
    if cfg.get("hf_hub"):
        # "org/repo/file" names one file; "org/repo/" means open_clip's default names
        repo_id, filename = cfg["hf_hub"].rsplit("/", 1)
        return hub_file(repo_id, (filename,) if filename else HUB_WEIGHT_FILES, describe), preprocess
    _require_network(cfg.get("url", ""), describe)
    return download_pretrained(cfg), preprocess


def hub_model_dir(repo_id: str, describe: str) -> str | None:
    """The cached snapshot folder of an open_clip hf-hub repo (config and weights), or None when it
    is not cached and the hub is reachable (open_clip then downloads it)."""
    from huggingface_hub import try_to_load_from_cache

    config = try_to_load_from_cache(repo_id, HUB_CONFIG_FILE)
    if isinstance(config, str) and any(
        isinstance(try_to_load_from_cache(repo_id, f), str) for f in HUB_WEIGHT_FILES
    ):
        return os.path.dirname(config)
    _require_network(_hub_endpoint(), describe)
    return None


def hub_file(repo_id: str, filenames: tuple[str, ...], describe: str) -> str:
    """Local path of the first of filenames in repo_id: from the cache, else downloaded."""
    from huggingface_hub import hf_hub_download, try_to_load_from_cache
    from huggingface_hub.errors import EntryNotFoundError

    for filename in filenames:
        cached = try_to_load_from_cache(repo_id, filename)
        if isinstance(cached, str):
            return cached
    _require_network(_hub_endpoint(), describe)
    for filename in filenames:
        try:
            log.warning("downloading %s/%s (once; cached in the Hugging Face cache)", repo_id, filename)
            return hf_hub_download(repo_id, filename)
        except EntryNotFoundError:
            continue
        except Exception as e:  # noqa: BLE001 - any download failure means the same to the user
            raise _unavailable(describe, f"download failed: {e}") from None
    raise _unavailable(describe, f"{repo_id} has none of {', '.join(filenames)}")


def _hub_endpoint() -> str:
    from huggingface_hub import constants

    return constants.ENDPOINT


def _require_network(url: str, describe: str) -> None:
    """Fail at once, with what to do, when downloads are off or the host cannot be reached."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        raise _unavailable(describe, "HF_HUB_OFFLINE is set")
    host = urlparse(url).hostname
    if not host:
        return
    try:
        socket.create_connection((host, urlparse(url).port or 443), timeout=5).close()
    except OSError as e:
        raise _unavailable(describe, f"cannot reach {host}: {e.strerror or e}") from None


def _unavailable(describe: str, why: str) -> WeightsUnavailableError:
    problem = f"the weights of {describe} are not in the Hugging Face cache (HF_HOME) and cannot be downloaded ({why})"
    return WeightsUnavailableError(
        f"{problem}; run once with network to cache them, use a local checkpoint file (an open_clip "
        ".pt/.bin/.safetensors state dict) as the pretrained weights, or try the bundled model "
        f"{OFFLINE_MODEL}, which works offline (a demo that knows four colours and three shapes)",
        setting="weights",
        problem=problem,
    )
