"""Contrastive training and fine-tuning (CLIP paper, section 2.3) on image-caption pairs.

Symmetric InfoNCE with a learned temperature (open_clip's ClipLoss), AdamW with linear warmup and
cosine decay, gradient accumulation, resumable checkpoints. The output is a state dict that loads
anywhere an open_clip checkpoint does; it also records its architecture (the open_clip name or
config: safetensors metadata, or a key beside "state_dict" in a .pt), so `--pretrained CKPT` alone
names the whole model.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import random
import stat
import time
from collections.abc import Callable, Generator, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from ..media import images
from ..storage.atomic_file import write_atomic
from ..models.encoder import ClipEncoder
from ..models.spec import ARCHITECTURE_KEY, architecture_record
from ..errors import InvalidInputError, OutputExistsError, OutputPathError, PathNotFoundError, file_error, os_reason

log = logging.getLogger(__name__)

TrainProgress = Callable[[int, int, float], None]  # (step, total steps, loss)


@dataclass(frozen=True)
class TrainSettings:
    """Tunables of a training run. Give epochs or steps (optimizer steps)."""

    epochs: int | None = None
    steps: int | None = None
    batch_size: int = 64  # pairs per micro-batch (the contrastive loss sees this many at once)
    accumulate: int = 1  # micro-batches per optimizer step
    lr: float = 5e-4
    weight_decay: float = 0.1
    warmup: float = 0.05  # fraction of the steps spent warming the learning rate up
    seed: int = 0
    checkpoint_every: int = 500  # optimizer steps between resumable checkpoints


@dataclass(frozen=True)
class TrainReport:
    """What a run did. seconds is the training itself (batches, steps, checkpoints, the final
    save); load_seconds is reading the pairs and loading the model before it (train_from_flags)."""

    steps: int
    pairs: int
    first_loss: float
    last_loss: float
    seconds: float
    resumed_from: int
    batch_size: int = 0  # the micro-batch really used (settings.batch_size, or fewer with less data)
    load_seconds: float = 0.0


class TrainInterrupted(KeyboardInterrupt):
    """Ctrl-C (or another KeyboardInterrupt) during training; its message says what was saved.

    A KeyboardInterrupt, not a SearchliteError, so that code catching Exception still stops."""

    def __init__(self, message: str, checkpoint: Path | None, saved_step: int | None) -> None:
        super().__init__(message)
        self.checkpoint = checkpoint  # the resumable .train-state file, or None when nothing was saved
        self.saved_step = saved_step


def read_pairs(data: str | os.PathLike[str]) -> list[tuple[str, str]]:
    """(image path, caption) pairs: a folder of images with same-name .txt captions, or a
    .csv (columns image,caption) or .jsonl ({"image": ..., "caption": ...}) file; relative image
    paths are taken relative to the file."""
    try:
        return _read_pairs(Path(data))
    except OSError as e:
        raise file_error(e.filename or data, e, writing=False, what="training data") from None
    except UnicodeDecodeError:
        raise InvalidInputError(f"training data {data}: captions and lists must be UTF-8 text") from None


def _read_pairs(path: Path) -> list[tuple[str, str]]:
    data = path
    if not path.exists():
        raise PathNotFoundError(f"training data {data} not found")
    if path.is_dir():
        pairs = []
        by_stem: dict[tuple[Path, str], list[Path]] = {}
        for f in sorted(path.rglob("*")):
            if f.is_file() and not f.name.startswith("."):
                by_stem.setdefault((f.parent, f.stem), []).append(f)
        for files in by_stem.values():
            captions = [f for f in files if f.suffix == ".txt"]
            pictures = [f for f in files if f.suffix != ".txt"]
            if captions and pictures:
                pairs.append((str(pictures[0]), captions[0].read_text(encoding="utf-8").strip()))
    elif path.suffix.lower() == ".csv":
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
        if rows and not {"image", "caption"} <= set(rows[0]):
            raise InvalidInputError(f"{data}: a CSV needs the columns image and caption")
        pairs = [(str(path.parent / r["image"]), r["caption"].strip()) for r in rows]
    elif path.suffix.lower() == ".jsonl":
        pairs = []
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if line.strip():
                try:
                    row = json.loads(line)
                    pairs.append((str(path.parent / row["image"]), str(row["caption"]).strip()))
                except (ValueError, KeyError, TypeError):
                    raise InvalidInputError(f"{data} line {n}: expected {{\"image\": ..., \"caption\": ...}}") from None
    else:
        raise InvalidInputError(f"training data {data}: give a folder of images with .txt captions, a .csv or a .jsonl")
    pairs = [(image, caption) for image, caption in pairs if caption]
    if len(pairs) < 2:
        raise InvalidInputError(f"training data {data}: found {len(pairs)} image-caption pairs, need at least 2")
    return pairs


def check_output(output: str | os.PathLike[str], *, overwrite: bool = False) -> Path:
    """Refuse an output path that training could not write or would silently replace, before any
    work is done. An unfinished run's output does not exist yet, so resuming passes."""
    path = Path(output)
    try:
        st = path.stat()
    except FileNotFoundError:
        st = None
    except OSError as e:
        raise OutputPathError(f"cannot use output {path}: {os_reason(e)}; give another output path") from None
    if st is not None:
        if stat.S_ISDIR(st.st_mode):
            raise OutputPathError(f"output {path} is a folder: give a file path inside it, e.g. {path / 'model.safetensors'}")
        if not stat.S_ISREG(st.st_mode):
            raise OutputPathError(f"output {path} is not a regular file: give the path of a new .pt or .safetensors file")
        if not overwrite:
            raise OutputExistsError(path)
    folder = path.parent
    if not folder.exists():
        raise OutputPathError(f"folder {folder} of output {path} does not exist: create it or give another output path")
    if not folder.is_dir():
        raise OutputPathError(f"{folder} in output {path} is not a folder: give another output path")
    # the weights and checkpoints are written as temp files in this folder, then renamed
    if not os.access(folder, os.W_OK | os.X_OK):
        raise OutputPathError(f"cannot write to folder {folder} of output {path}: give an output path in a writable folder")
    return path


def train_from_flags(
    data: str | os.PathLike[str],
    output: str | os.PathLike[str],
    *,
    model: str | None,
    pretrained: str | None,
    device: str | None,
    settings: TrainSettings,
    progress: TrainProgress | None = None,
    overwrite: bool = False,
) -> TrainReport:
    """`searchlite train`: check the output, read the pairs, load the model, train.

    Without pretrained the model starts from random weights, except a bundled model
    (searchlite-shapes), which starts from its shipped weights (spec_from_flags)."""
    from ..models.loading import load_encoder
    from ..models.spec import spec_from_flags

    output = check_output(output, overwrite=overwrite)
    started = time.monotonic()
    try:
        pairs = read_pairs(data)
        encoder = load_encoder(spec_from_flags(model, pretrained, random_init=True), device, for_training=True)
    except KeyboardInterrupt:
        raise _interrupted(_state_path(output), None, settings) from None
    load_seconds = time.monotonic() - started
    report = train(encoder, pairs, output, settings, progress, overwrite=overwrite)
    return replace(report, load_seconds=load_seconds)


def train(
    encoder: ClipEncoder,
    pairs: list[tuple[str, str]],
    output: str | os.PathLike[str],
    settings: TrainSettings,
    progress: TrainProgress | None = None,
    *,
    overwrite: bool = False,
) -> TrainReport:
    """Train encoder.model on pairs; write its weights to output (resuming output's unfinished run).

    An existing output is refused unless overwrite. Fewer pairs than settings.batch_size shrink the
    batch to all the pairs (with a warning). A KeyboardInterrupt leaves as TrainInterrupted, which
    says which checkpoint (if any) the same call resumes from."""
    import open_clip
    import torch
    from open_clip.loss import ClipLoss

    output = check_output(output, overwrite=overwrite)
    if len(pairs) < 2 or settings.batch_size < 2:
        # each pair's caption is contrasted with the other pairs' in its batch: one alone learns nothing
        raise InvalidInputError(
            f"training needs at least 2 image-caption pairs and a batch size of at least 2 (got {len(pairs)} pairs, batch size {settings.batch_size})"
        )
    batch_size = min(settings.batch_size, len(pairs))
    if batch_size < settings.batch_size:
        # without this no full batch ever forms and training waits forever for its first one
        log.warning("only %d image-caption pairs: training on batches of %d instead of %d", len(pairs), batch_size, settings.batch_size)
    started = time.monotonic()
    model, device = encoder.model, encoder.device
    # an epoch is every full micro-batch once (the remainder is dropped, reshuffled next epoch);
    # with more micro-batches per step than that, a step sees the data more than once
    batches_per_epoch = len(pairs) // batch_size
    steps_per_epoch = max(1, batches_per_epoch // settings.accumulate)
    total = settings.steps or (settings.epochs or 1) * steps_per_epoch

    torch.manual_seed(settings.seed)
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "logit_scale" not in n]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2 or "logit_scale" in n]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": settings.weight_decay}, {"params": no_decay, "weight_decay": 0.0}], lr=settings.lr
    )
    warmup = max(1, int(settings.warmup * total))

    def lr_factor(step: int) -> float:  # linear warmup, then cosine decay to zero
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor)
    state_path = _state_path(output)
    try:
        step = _resume(state_path, model, optimizer, scheduler, settings, len(pairs))
    except KeyboardInterrupt:
        raise _interrupted(state_path, None, settings) from None
    resumed_from = step
    saved_step = step or None  # the step a rerun would resume from

    cfg = open_clip.get_model_preprocess_cfg(model)
    transform = open_clip.image_transform(
        cfg["size"], is_train=True, mean=cfg["mean"], std=cfg["std"], interpolation=cfg["interpolation"], resize_mode=cfg["resize_mode"]
    )
    loss_fn = ClipLoss()
    model.train()
    first_loss = last_loss = float("nan")
    batches = _batches(pairs, settings, batch_size, transform, encoder, start_step=step)
    try:
        while step < total:
            optimizer.zero_grad(set_to_none=True)
            step_loss = 0.0
            for _ in range(settings.accumulate):
                pixels, tokens = next(batches)
                image_features = model.encode_image(pixels.to(device), normalize=True)  # (b, d)
                text_features = model.encode_text(tokens.to(device), normalize=True)  # (b, d)
                loss = loss_fn(image_features, text_features, model.logit_scale.exp()) / settings.accumulate
                loss.backward()
                step_loss += loss.item()
            optimizer.step()
            scheduler.step()
            with torch.no_grad():  # as in CLIP: the temperature may not go below 1/100
                model.logit_scale.clamp_(0, math.log(100))
            step += 1
            first_loss = step_loss if math.isnan(first_loss) else first_loss
            last_loss = step_loss
            if progress:
                progress(step, total, step_loss)
            if step % settings.checkpoint_every == 0 and step < total:
                try:
                    _save_state(state_path, model, optimizer, scheduler, step, settings, len(pairs))
                except OSError as e:
                    raise file_error(state_path, e, writing=True, what="training checkpoint") from None
                saved_step = step  # only once written: an interrupted write keeps the previous one
        model.eval()
        try:
            _save_weights(output, model, architecture_record(encoder.spec))
        except OSError as e:
            raise file_error(output, e, writing=True) from None
    except KeyboardInterrupt:
        raise _interrupted(state_path, saved_step, settings) from None
    finally:
        batches.close()  # stop decoding ahead
    state_path.unlink(missing_ok=True)
    return TrainReport(total, len(pairs), first_loss, last_loss, time.monotonic() - started, resumed_from, batch_size)


def _state_path(output: Path) -> Path:
    """The resumable checkpoint of an unfinished run, beside its output."""
    return output.with_name(output.name + ".train-state")


def _interrupted(state_path: Path, saved_step: int | None, settings: TrainSettings) -> TrainInterrupted:
    """The interruption, saying what a rerun of the same training starts from."""
    if saved_step is None and state_path.exists():
        # interrupted before this run got to read or replace an earlier run's checkpoint
        return TrainInterrupted(
            f"interrupted; the checkpoint of an earlier run in {state_path} is kept: run the same training again (same data, settings and output) to resume from it",
            state_path, None,
        )
    if saved_step is None:
        return TrainInterrupted(
            f"interrupted before the first checkpoint (every {settings.checkpoint_every} steps): nothing was saved", None, None
        )
    return TrainInterrupted(
        f"interrupted; the checkpoint of step {saved_step} is saved in {state_path}: run the same training again (same data, settings and output) to resume from it",
        state_path, saved_step,
    )


def _batches(
    pairs: list[tuple[str, str]], settings: TrainSettings, batch_size: int, transform: Any, encoder: ClipEncoder, start_step: int
) -> Generator[Any, None, None]:
    """Shuffled micro-batches (pixels (b, 3, H, W), tokens (b, L)), decoded ahead in threads."""
    import torch

    rng = random.Random(settings.seed)
    order: list[int] = []
    skip = start_step * settings.accumulate  # micro-batches already seen by a resumed run

    def load(i: int) -> Any:
        with open(pairs[i][0], "rb") as f:
            return transform(images.decode_rgb(f.read()).image)

    def micro_batches() -> Iterator[list[int]]:
        while True:
            order[:] = list(range(len(pairs)))
            rng.shuffle(order)
            for start in range(0, len(order) - batch_size + 1, batch_size):
                yield order[start : start + batch_size]

    with ThreadPoolExecutor(max(1, min(4, os.cpu_count() or 1))) as pool:
        upcoming = None
        for n, indices in enumerate(micro_batches()):
            if n < skip:
                continue
            current = upcoming
            upcoming = (pool.map(load, indices), [pairs[i][1] for i in indices])
            if current is not None:
                pixels, captions = current
                yield torch.stack(list(pixels)), encoder.tokenize(captions)


def _save_weights(output: Path, model: Any, architecture: str | None) -> None:
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    extra = {ARCHITECTURE_KEY: architecture} if architecture else {}
    if output.suffix == ".safetensors":
        from safetensors.torch import save

        write_atomic(output, save(state, metadata=extra or None))
    else:
        write_atomic(output, _torch_bytes({"state_dict": state, **extra}))


def _save_state(path: Path, model: Any, optimizer: Any, scheduler: Any, step: int, settings: TrainSettings, n_pairs: int) -> None:
    state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
             "step": step, "settings": json.dumps(asdict(settings)), "pairs": n_pairs}
    write_atomic(path, _torch_bytes(state))
    log.info("checkpoint at step %d: %s", step, path)


def _torch_bytes(obj: Any) -> bytes:
    """torch.save into memory (tensors, numbers and strings only: it loads with weights_only=True)."""
    import io

    import torch

    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def _resume(path: Path, model: Any, optimizer: Any, scheduler: Any, settings: TrainSettings, n_pairs: int) -> int:
    """Continue an unfinished run of the same settings on the same data; returns its step."""
    import torch

    if not path.exists():
        return 0
    state = torch.load(path, map_location="cpu", weights_only=True)
    if state.get("settings") != json.dumps(asdict(settings)) or state.get("pairs") != n_pairs:
        log.warning("ignoring %s: it is from a run with other settings or data", path)
        return 0
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    log.warning("resuming training at step %d from %s", state["step"], path)
    return int(state["step"])

