"""Few-shot linear probes (CLIP paper, section 3.2): logistic regression on frozen, L2-normalised
image embeddings, fitted with scikit-learn and saved as a plain .npz file (no pickles)."""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .classifier import LinearClassifier
from ..errors import InvalidInputError, file_error
from ..storage.atomic_file import write_atomic


@dataclass(frozen=True)
class ProbeFit:
    """A fitted probe and how well it generalises."""

    classifier: LinearClassifier
    cv_accuracy: float | None  # mean accuracy over the folds; None when there are too few examples
    folds: int
    counts: dict[str, int]  # training images per label


def fit(vectors: np.ndarray, labels: list[str], *, estimate_accuracy: bool = True) -> ProbeFit:
    """Fit a multinomial logistic regression; its regularisation strength is chosen by
    cross-validation, and the reported accuracy is itself cross-validated (unless
    estimate_accuracy is False, for callers that measure it on images of their own)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GridSearchCV, StratifiedKFold, cross_val_score

    names = sorted(set(labels))
    counts = {name: labels.count(name) for name in names}
    if len(names) < 2:
        raise InvalidInputError("a probe needs at least two labels: one subfolder of images per label")
    y = np.array([names.index(label) for label in labels])
    fewest = min(counts.values())
    folds = min(5, fewest)
    # inside each outer training split, the regularisation strength is chosen by its own CV
    inner = min(5, fewest * (folds - 1) // max(folds, 1))
    model: Any = LogisticRegression(C=10.0, max_iter=2000)
    if inner >= 2:
        model = GridSearchCV(model, {"C": [0.1, 1.0, 10.0, 100.0]}, cv=inner)
    accuracy: float | None = None  # one example of some label: no honest accuracy to report
    if folds >= 2 and estimate_accuracy:
        cv = StratifiedKFold(folds, shuffle=True, random_state=0)
        accuracy = float(cross_val_score(model, vectors, y, cv=cv).mean())
    model.fit(vectors, y)
    fitted = model.best_estimator_ if inner >= 2 else model
    coef, intercept = fitted.coef_, fitted.intercept_
    if len(names) == 2:  # scikit-learn stores one row for two classes: logit(1) - logit(0)
        coef = np.vstack([-coef / 2, coef / 2])
        intercept = np.array([-intercept[0] / 2, intercept[0] / 2])
    classifier = LinearClassifier(tuple(names), coef.astype(np.float32), intercept.astype(np.float32))
    return ProbeFit(classifier, accuracy, folds, counts)


def save(path: str | os.PathLike[str], fitted: ProbeFit, model_key: str) -> None:
    """Write the probe as .npz: labels, weights, bias, the model it belongs to, its accuracy."""
    buf = io.BytesIO()
    np.savez(
        buf,
        labels=np.array(fitted.classifier.labels, dtype=str),
        weights=fitted.classifier.weights,
        bias=fitted.classifier.bias,
        model_key=np.array(model_key),
        cv_accuracy=np.array(np.nan if fitted.cv_accuracy is None else fitted.cv_accuracy),
    )
    try:
        write_atomic(Path(path), buf.getvalue())
    except OSError as e:
        raise file_error(path, e, writing=True, what="probe file") from None


def load(path: str | os.PathLike[str]) -> tuple[LinearClassifier, str]:
    """(classifier, model key) from a probe file."""
    try:
        with np.load(path, allow_pickle=False) as data:
            labels = tuple(str(label) for label in data["labels"])
            return LinearClassifier(labels, data["weights"].astype(np.float32), data["bias"].astype(np.float32)), str(data["model_key"])
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError) as e:
        raise file_error(path, e, writing=False, what="probe file") from None
    except (OSError, ValueError, KeyError) as e:
        raise InvalidInputError(f"{path} is not a searchlite probe file ({e}); train a probe to make one", setting="probe") from None
