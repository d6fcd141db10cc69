"""What an evaluation reads: a labelled folder (one subfolder of images per class, as `probe
train` takes) and a caption list (a CSV of image,caption rows; several captions per image)."""

from __future__ import annotations

import csv
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ..errors import InvalidInputError, PathNotFoundError, file_error
from ..ingest import scanner

log = logging.getLogger(__name__)

DEFAULT_SHOTS = (1, 2, 4, 8, 16)


@dataclass(frozen=True)
class LabelledImages:
    """Image paths and their class (a subfolder's name), classes sorted."""

    folder: str
    classes: tuple[str, ...]
    paths: tuple[str, ...]
    labels: tuple[str, ...]


@dataclass(frozen=True)
class CaptionPairs:
    """Images and their captions: caption i describes images[owner[i]]."""

    source: str
    images: tuple[str, ...]
    captions: tuple[str, ...]
    owner: tuple[int, ...]


def prompt_label(folder_name: str) -> str:
    """The text a class folder stands for in prompts: golden_retriever -> golden retriever."""
    return " ".join(folder_name.replace("_", " ").split())


def read_labelled_folder(folder: str | os.PathLike[str]) -> LabelledImages:
    """Every visible file in each visible subfolder of folder (searched recursively), labelled by
    the subfolder's name. Raises when there are fewer than two classes with files."""
    root = Path(folder)
    if not root.is_dir():
        raise PathNotFoundError(f"folder {folder} not found: give a folder with one subfolder of images per class")
    try:
        subfolders = sorted(p for p in root.iterdir() if p.is_dir() and not scanner.is_hidden(p.name))
    except OSError as e:
        raise file_error(root, e, writing=False, what="folder") from None
    paths: list[str] = []
    labels: list[str] = []
    classes = []
    for sub in subfolders:
        found = [f.path for f in scanner.scan(sub) if f.error is None and f.skip is None]
        if not found:
            log.warning("skipping %s: no files in it", sub)
            continue
        classes.append(sub.name)
        paths += found
        labels += [sub.name] * len(found)
    if not classes:
        raise InvalidInputError(f"no images in subfolders of {folder}: make one subfolder of images per class")
    if len(classes) < 2:
        raise InvalidInputError(
            f"{folder} has images of one class only ({classes[0]}): make two or more subfolders, one per class"
        )
    return LabelledImages(str(folder), tuple(classes), tuple(paths), tuple(labels))


def read_captions(path: str | os.PathLike[str]) -> CaptionPairs:
    """Caption pairs from a CSV whose header is image,caption; image paths relative to the CSV's
    folder. Every image must exist; an image may have several rows (several captions)."""
    source = Path(path)
    try:
        with open(source, newline="", encoding="utf-8") as f:
            reader = csv.reader(f)
            header = next(reader, None)
            rows = list(reader)
    except FileNotFoundError:
        raise PathNotFoundError(f"caption file {path} not found") from None
    except OSError as e:
        raise file_error(source, e, writing=False, what="caption file") from None
    except UnicodeDecodeError:
        raise InvalidInputError(f"caption file {path} is not UTF-8 text: save it as UTF-8 CSV") from None
    except csv.Error as e:
        raise InvalidInputError(f"caption file {path} is not a readable CSV ({e})") from None
    names = [h.strip().lower() for h in header or []]
    if "image" not in names or "caption" not in names:
        got = ",".join(header) if header else "an empty file"
        raise InvalidInputError(f"caption file {path}: the first line must be the header image,caption (got {got!r})")
    col_image, col_caption = names.index("image"), names.index("caption")
    images: dict[str, int] = {}
    captions, owner = [], []
    missing: list[tuple[int, str]] = []
    for line, row in enumerate(rows, start=2):
        if not any(cell.strip() for cell in row):
            continue
        if len(row) <= max(col_image, col_caption) or not row[col_image].strip() or not row[col_caption].strip():
            raise InvalidInputError(f"caption file {path} line {line}: every row needs an image and a caption")
        image = os.path.normpath(os.path.join(source.parent, row[col_image].strip()))
        if image not in images:
            if not os.path.isfile(image):
                missing.append((line, row[col_image].strip()))
                continue
            images[image] = len(images)
        captions.append(row[col_caption].strip())
        owner.append(images[image])
    if missing:
        line, name = missing[0]
        more = f" (and {len(missing) - 1} more rows)" if len(missing) > 1 else ""
        raise InvalidInputError(
            f"caption file {path} line {line}: image {name} not found{more}: paths are relative to the CSV's folder"
        )
    if len(images) < 2:
        raise InvalidInputError(f"caption file {path}: found {len(images)} images with captions, need at least 2")
    return CaptionPairs(str(path), tuple(images), tuple(captions), tuple(owner))


def parse_shots(raw: str | Sequence[int] | None) -> tuple[int, ...] | None:
    """'1,2,4' or [1, 2, 4] -> (1, 2, 4), sorted and distinct; None stays None (the defaults)."""
    if raw is None:
        return None
    items = raw.split(",") if isinstance(raw, str) else list(raw)
    try:
        shots = sorted({int(str(s).strip()) for s in items if str(s).strip()})
    except ValueError:
        shots = []
    if not shots or shots[0] < 1:
        raise InvalidInputError(f"shots: give whole numbers of 1 or more separated by commas, e.g. 1,2,4,8,16 (got {raw!r})", setting="shots")
    return tuple(shots)


def parse_template_sets(raw: str | Sequence[str]) -> tuple[str, ...]:
    """'single,imagenet,FILE' -> ('single', 'imagenet', 'FILE'), in order, without repeats."""
    items = raw.split(",") if isinstance(raw, str) else list(raw)
    names = list(dict.fromkeys(item.strip() for item in items if item.strip()))
    if not names:
        raise InvalidInputError(f"templates: give single, imagenet or template files separated by commas (got {raw!r})", setting="templates")
    return tuple(names)
