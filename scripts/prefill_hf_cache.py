"""Fill a Hugging Face cache (HF_HOME) with RANDOM weights for the default model, laid out exactly where
open_clip's download (hf_hub_download) looks, so the download path can be exercised offline:

    python scripts/prefill_hf_cache.py /tmp/hf_home
    HF_HOME=/tmp/hf_home HF_HUB_OFFLINE=1 searchlite index ./samples

Random weights prove the plumbing only; the results mean nothing semantically.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def prefill(hf_home: Path, model: str = "ViT-B-32-256", tag: str = "datacomp_s34b_b86k") -> Path:
    """Write random weights for model/tag into hf_home; returns the checkpoint's path."""
    import open_clip
    from open_clip.pretrained import get_pretrained_cfg
    from safetensors.torch import save_file

    # "org/repo/" means the default file name; open_clip looks for the safetensors one first
    repo_id, filename = get_pretrained_cfg(model, tag)["hf_hub"].rsplit("/", 1)
    filename = filename or "open_clip_model.safetensors"
    revision = "0" * 40
    repo_dir = hf_home / "hub" / f"models--{repo_id.replace('/', '--')}"
    (repo_dir / "refs").mkdir(parents=True, exist_ok=True)
    (repo_dir / "refs" / "main").write_text(revision)
    target = repo_dir / "snapshots" / revision / filename
    target.parent.mkdir(parents=True, exist_ok=True)
    state = open_clip.create_model(model).state_dict()
    save_file({k: v.contiguous() for k, v in state.items()}, str(target))
    return target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("hf_home", type=Path)
    parser.add_argument("--model", default="ViT-B-32-256")
    parser.add_argument("--pretrained", default="datacomp_s34b_b86k")
    args = parser.parse_args()
    path = prefill(args.hf_home, args.model, args.pretrained)
    print(path)


if __name__ == "__main__":
    main()
