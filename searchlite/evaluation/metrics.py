"""The numbers of the protocol, from embeddings: zero-shot accuracy and confusion, few-shot probe
accuracy over random draws, and retrieval recall@K. Pure numpy (and scikit-learn for the probe)."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from ..classify import probe
from ..classify.classifier import LinearClassifier


@dataclass(frozen=True)
class ZeroShotScores:
    """Zero-shot results of one template set. confusion[i][j]: images of class i predicted as j."""

    templates: str
    template_count: int
    top1: float
    top5: float | None  # only with more than 5 classes
    per_class: dict[str, float]
    confusion: tuple[tuple[int, ...], ...]

    def most_confused(self, classes: Sequence[str], n: int = 5) -> list[tuple[str, str, int]]:
        """(true class, predicted class, images) for the largest off-diagonal cells, largest first."""
        cells = [
            (count, i, j)
            for i, row in enumerate(self.confusion)
            for j, count in enumerate(row)
            if i != j and count
        ]
        cells.sort(key=lambda c: (-c[0], c[1], c[2]))
        return [(classes[i], classes[j], count) for count, i, j in cells[:n]]


def zero_shot_scores(
    name: str, template_count: int, classifier: LinearClassifier, vectors: np.ndarray, truth: np.ndarray
) -> ZeroShotScores:
    """vectors (n, d) unit image embeddings, truth (n,) class indices into classifier.labels."""
    logits = vectors @ classifier.weights.T + classifier.bias  # (n, classes)
    predicted = logits.argmax(axis=1)
    classes = classifier.labels
    k = len(classes)
    confusion = np.zeros((k, k), dtype=np.int64)
    np.add.at(confusion, (truth, predicted), 1)
    top5 = None
    if k > 5:
        # the true class is in the top 5 when fewer than 5 classes score higher than it
        higher = (logits > logits[np.arange(len(truth)), truth][:, None]).sum(axis=1)
        top5 = float((higher < 5).mean())
    per_class = {c: float(confusion[i, i] / confusion[i].sum()) for i, c in enumerate(classes) if confusion[i].sum()}
    return ZeroShotScores(
        name,
        template_count,
        float((predicted == truth).mean()),
        top5,
        per_class,
        tuple(tuple(int(x) for x in row) for row in confusion),
    )


@dataclass(frozen=True)
class ProbePoint:
    """Probe accuracy at one shot count: one value per random draw of training images."""

    shots: int
    accuracies: tuple[float, ...]

    @property
    def mean(self) -> float:
        return float(np.mean(self.accuracies))

    @property
    def std(self) -> float:  # population standard deviation over the draws
        return float(np.std(self.accuracies))


def draw(truth: np.ndarray, shots: int, seed: int, draw_index: int) -> np.ndarray:
    """Indices of `shots` images per class, chosen at random; the draw depends only on (seed,
    shots, draw_index), so asking for other shot counts does not change this one."""
    rng = np.random.default_rng([seed, shots, draw_index])
    chosen = [rng.choice(np.flatnonzero(truth == c), shots, replace=False) for c in np.unique(truth)]
    return np.sort(np.concatenate(chosen))


def probe_curve(
    vectors: np.ndarray,
    truth: np.ndarray,
    classes: Sequence[str],
    shots: Sequence[int],
    draws: int,
    seed: int,
    progress: Callable[[int, int], None] | None = None,
) -> list[ProbePoint]:
    """For each shot count: fit the linear probe `probe train` fits on `shots` random images per
    class, `draws` times, and measure top-1 accuracy on the images not drawn."""
    points = []
    total, done = len(shots) * draws, 0
    for k in shots:
        accuracies = []
        for d in range(draws):
            train = draw(truth, k, seed, d)
            test = np.setdiff1d(np.arange(len(truth)), train)
            with warnings.catch_warnings():
                # a few shots rarely converge to the last digit; the accuracy is what counts here
                warnings.simplefilter("ignore", category=UserWarning)
                warnings.simplefilter("ignore", category=FutureWarning)
                from sklearn.exceptions import ConvergenceWarning

                warnings.simplefilter("ignore", category=ConvergenceWarning)
                fitted = probe.fit(vectors[train], [classes[t] for t in truth[train]], estimate_accuracy=False)
            # the probe knows the classes present in training: all of them, as every class is drawn
            order = np.array([fitted.classifier.labels.index(c) for c in classes])
            predicted = fitted.classifier.probabilities(vectors[test])[:, order].argmax(axis=1)
            accuracies.append(float((predicted == truth[test]).mean()))
            done += 1
            if progress is not None:
                progress(done, total)
        points.append(ProbePoint(k, tuple(accuracies)))
    return points


RECALL_AT = (1, 5, 10)
# Cosines this close count as a tie: the same text or image scores a few float32 ulps apart
# depending on where it sits in a matrix product, and must not outrank itself.
TIE = 1e-6


@dataclass(frozen=True)
class RetrievalScores:
    """Recall@K both ways over caption pairs (the paper's Flickr30k/MSCOCO protocol)."""

    images: int
    captions: int
    text_to_image: dict[int, float]
    image_to_text: dict[int, float]


def retrieval_scores(image_vectors: np.ndarray, text_vectors: np.ndarray, owner: np.ndarray) -> RetrievalScores:
    """image_vectors (m, d), text_vectors (n, d) unit embeddings; owner (n,): caption i's image.

    text->image: a caption is recalled at K when its image ranks among the first K images;
    image->text: an image is recalled at K when any of its captions ranks among the first K
    captions. Rank = how many candidates score higher by more than TIE (ties count in the query's
    favour)."""
    sims = text_vectors @ image_vectors.T  # (n captions, m images)
    true_score = sims[np.arange(len(owner)), owner]
    t2i_rank = (sims > true_score[:, None] + TIE).sum(axis=1)  # (n,)
    # per image: the score of its best caption, and how many captions beat it
    best = np.full(len(image_vectors), -np.inf, dtype=sims.dtype)
    np.maximum.at(best, owner, true_score)
    i2t_rank = (sims > best[None, :] + TIE).sum(axis=0)  # (m,)
    return RetrievalScores(
        len(image_vectors),
        len(owner),
        {k: float((t2i_rank < k).mean()) for k in RECALL_AT},
        {k: float((i2t_rank < k).mean()) for k in RECALL_AT},
    )
