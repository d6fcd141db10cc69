"""Zero-shot classification (CLIP, Radford et al. 2021, section 3.1): label names become a classifier.

Each label is embedded through prompt templates ("a photo of a {}."); with several templates the
unit text embeddings are averaged and re-normalised ("prompt ensembling"). Class probabilities
are the softmax of the model's learned logit scale times the cosine similarities.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .classifier import LinearClassifier
from ..errors import InvalidInputError, file_error

SINGLE_TEMPLATE = "a photo of a {}."


def imagenet_templates() -> list[str]:
    """The CLIP paper's 80 ImageNet prompt templates, as open_clip ships them."""
    from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES

    return [template("{}") for template in OPENAI_IMAGENET_TEMPLATES]


def resolve_templates(spec: str | None) -> list[str]:
    """--templates: none (the single template), "imagenet" (the 80-template ensemble), or a file
    with one template per line, each holding "{}" where the label goes."""
    if spec is None or spec == "single":
        return [SINGLE_TEMPLATE]
    if spec == "imagenet":
        return imagenet_templates()
    path = Path(spec)
    if not path.is_file():
        raise InvalidInputError(f"templates {spec!r}: use 'single', 'imagenet' or a file with one template per line")
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise file_error(path, e, writing=False, what="template file") from None
    except UnicodeDecodeError:
        raise InvalidInputError(f"template file {spec} is not UTF-8 text: write one template per line") from None
    templates = [line.strip() for line in text.splitlines() if line.strip()]
    bad = [t for t in templates if t.count("{}") != 1]
    if not templates or bad:
        raise InvalidInputError(
            f"template file {spec}: every line needs exactly one {{}} where the label goes"
            + (f" (not: {bad[0]!r})" if bad else " (the file is empty)")
        )
    return templates


def parse_labels(raw: str | Sequence[str]) -> list[str]:
    """'dog, cat,car' or a list -> ['dog', 'cat', 'car']; at least two distinct labels."""
    items = raw.split(",") if isinstance(raw, str) else list(raw)
    labels = [label.strip() for label in items if label.strip()]
    if len(labels) < 2 or len(set(labels)) != len(labels):
        raise InvalidInputError(f"labels: give two or more distinct labels separated by commas, got {raw!r}", setting="labels")
    return labels


@dataclass(frozen=True)
class LabelSet:
    """Labels and the templates that turn them into text."""

    labels: tuple[str, ...]
    templates: tuple[str, ...]

    @classmethod
    def parse(cls, labels: str | Sequence[str], templates: str | None) -> LabelSet:
        """From labels as given ("a,b,c" or a list) and a templates choice (see resolve_templates)."""
        return cls(tuple(parse_labels(labels)), tuple(resolve_templates(templates)))

    def key(self, model_key: str) -> str:
        """Identifies the class-weight matrix of these labels under one model."""
        blob = json.dumps([model_key, self.labels, self.templates])
        return hashlib.sha256(blob.encode()).hexdigest()


def build(label_set: LabelSet, embed_text: Callable[[list[str]], np.ndarray], logit_scale: float) -> LinearClassifier:
    """The zero-shot classifier: per label, the re-normalised mean of its template embeddings."""
    weights = []
    for label in label_set.labels:
        texts = [template.format(label) for template in label_set.templates]
        mean = embed_text(texts).mean(axis=0)  # (d,)
        weights.append(mean / np.linalg.norm(mean))
    matrix = logit_scale * np.stack(weights).astype(np.float32)  # (n_labels, d)
    return LinearClassifier(label_set.labels, matrix, np.zeros(len(label_set.labels), np.float32))
