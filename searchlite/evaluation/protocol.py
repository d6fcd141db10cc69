"""Runs the protocol: reads the labelled folder and captions, gets every image's embedding once,
then scores zero-shot per template set, the few-shot probe curve and retrieval recall."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..classify import zeroshot
from ..classify.classifier import LinearClassifier
from ..classify.labeller import Labeller
from ..errors import InvalidInputError
from ..storage.store import Store
from . import datasets, metrics, plot
from .report import ClassificationReport, EvalReport
from .vectors import image_vectors

if TYPE_CHECKING:
    from ..media.named_files import NamedFiles
    from ..models.hub import ModelHub

log = logging.getLogger(__name__)

EvalProgress = Callable[[str, int, int], None]  # (stage, done, total)


@dataclass(frozen=True)
class EvalSettings:
    """What to evaluate and how. folder: one subfolder of images per class (its name is the
    label; _ reads as a space): zero-shot top-1/top-5, per-class accuracy and confusion for each
    template set ("single", "imagenet" or a file); a linear probe at each shot count (default
    1,2,4,8,16, those that fit) on `draws` random draws, tested on the images not drawn.
    captions: a CSV of image,caption rows for text<->image recall@1/5/10. plot: a PNG of the probe
    curve and the confusion matrix (needs matplotlib). Deterministic given seed."""

    folder: str | os.PathLike[str] | None = None
    captions: str | os.PathLike[str] | None = None
    templates: str | Sequence[str] = "single,imagenet"
    shots: str | Sequence[int] | None = None
    draws: int = 5
    seed: int = 0
    plot: str | os.PathLike[str] | None = None


def evaluate(
    store: Store, models: ModelHub, files: NamedFiles, labeller: Labeller, settings: EvalSettings, progress: EvalProgress | None = None,
) -> EvalReport:
    """The protocol of settings: images the store holds (same content) reuse their stored
    embeddings, others are read through files; zero-shot classifiers come from labeller, text
    embeddings from models. Every input is checked before any image is encoded."""
    folder, captions, draws, seed, plot_path = settings.folder, settings.captions, settings.draws, settings.seed, settings.plot
    if folder is None and captions is None:
        raise InvalidInputError("nothing to evaluate: give a labelled folder (one subfolder per class), a caption CSV, or both")
    if draws < 1:
        raise InvalidInputError(f"draws must be 1 or more, got {draws}", setting="draws")
    if plot_path is not None:
        if folder is None:
            raise InvalidInputError("the plot shows classification results: give a labelled folder to plot")
        plot.check_available()
        parent = Path(plot_path).parent
        if not parent.is_dir():
            raise InvalidInputError(f"plot {plot_path}: folder {parent} not found: create it first or write the plot elsewhere")
    labelled = template_sets = asked_shots = None
    if folder is not None:
        template_sets = [(name, tuple(zeroshot.resolve_templates(name))) for name in datasets.parse_template_sets(settings.templates)]
        asked_shots = datasets.parse_shots(settings.shots)
        labelled = datasets.read_labelled_folder(folder)
        _fit_shots(labelled, _counts(labelled.labels, labelled.classes), asked_shots)  # fail before encoding
        prompts = [datasets.prompt_label(c) for c in labelled.classes]
        if len(set(prompts)) != len(prompts):
            raise InvalidInputError(f"{folder}: two class folders name the same label once underscores are spaces: rename one")
    pairs = datasets.read_captions(captions) if captions is not None else None

    paths = list(dict.fromkeys((labelled.paths if labelled else ()) + (pairs.images if pairs else ())))
    stage = (lambda name: (lambda done, total: progress(name, done, total))) if progress else (lambda name: None)
    vectors, errors, reused = image_vectors(paths, store, files.embed, stage("encoding images"))
    for path, error in errors.items():
        log.warning("left out %s: %s", path, error)

    classification = None
    if labelled is not None:
        keep = [i for i, p in enumerate(labelled.paths) if p in vectors]
        present = [c for c in labelled.classes if any(labelled.labels[i] == c for i in keep)]
        if len(present) < 2:
            raise InvalidInputError(f"{folder}: fewer than two classes have readable images; every image of the others failed to decode")
        kept_paths = [labelled.paths[i] for i in keep]
        kept_labels = [labelled.labels[i] for i in keep]
        classes = tuple(present)
        counts = _counts(kept_labels, classes)
        shot_counts, left_out = _fit_shots(labelled, counts, asked_shots)
        x = np.stack([vectors[p] for p in kept_paths]).astype(np.float32)
        truth = np.array([classes.index(label) for label in kept_labels])
        label_texts = tuple(datasets.prompt_label(c) for c in classes)
        scores = []
        for name, texts in template_sets or ():
            classifier = labeller.zero_shot(zeroshot.LabelSet(label_texts, texts))
            named = LinearClassifier(classes, classifier.weights, classifier.bias)
            scores.append(metrics.zero_shot_scores(name, len(texts), named, x, truth))
        curve = metrics.probe_curve(x, truth, classes, shot_counts, draws, seed, stage("fitting probes"))
        classification = ClassificationReport(str(folder), classes, counts, tuple(scores), tuple(curve), draws, left_out)

    retrieval = None
    if pairs is not None:
        kept_images = [p for p in pairs.images if p in vectors]
        if len(kept_images) < 2:
            raise InvalidInputError(f"caption file {captions}: fewer than two of its images could be read")
        new_index = {p: i for i, p in enumerate(kept_images)}
        rows = [(caption, new_index[pairs.images[o]]) for caption, o in zip(pairs.captions, pairs.owner) if pairs.images[o] in new_index]
        # a caption repeated word for word is embedded once
        unique = {caption: i for i, caption in enumerate(dict.fromkeys(caption for caption, _ in rows))}
        text_vectors = models.embed_text(list(unique))[[unique[caption] for caption, _ in rows]]
        retrieval = metrics.retrieval_scores(
            np.stack([vectors[p] for p in kept_images]).astype(np.float32), text_vectors, np.array([o for _, o in rows])
        )

    report = EvalReport(
        models.spec.describe(),
        seed,
        classification,
        retrieval,
        from_index=reused,
        encoded=len(vectors) - reused,
        unreadable=tuple((p, str(e)) for p, e in errors.items()),
    )
    if plot_path is not None and classification is not None:
        plot.write_png(classification, models.spec.describe(), plot_path)
    return report


def _counts(labels: Sequence[str], classes: Sequence[str]) -> dict[str, int]:
    return {c: sum(label == c for label in labels) for c in classes}


def _fit_shots(
    labelled: datasets.LabelledImages, counts: dict[str, int], asked: tuple[int, ...] | None
) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The shot counts to run and the default ones left out. A draw keeps at least one image of
    every class for testing, so shots must stay below the smallest class; shots asked for
    explicitly that do not fit are an error, default ones are left out."""
    smallest = min(counts, key=lambda c: counts[c])
    fits = lambda k: k < counts[smallest]  # noqa: E731
    if asked is None:
        chosen = tuple(k for k in datasets.DEFAULT_SHOTS if fits(k))
        return chosen, tuple(k for k in datasets.DEFAULT_SHOTS if not fits(k))
    too_many = [k for k in asked if not fits(k)]
    if too_many:
        raise InvalidInputError(
            f"shots {too_many[0]}: class {smallest!r} of {labelled.folder} has {counts[smallest]} images, and each draw keeps "
            f"one per class to test on: use shots below {counts[smallest]}",
            setting="shots",
        )
    return asked, ()
