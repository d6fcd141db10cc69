"""A linear classifier over unit image embeddings: softmax(X W^T + b).

Both kinds of classifier searchlite builds are this: zero-shot (W = logit scale x class text
embeddings, b = 0) and the few-shot linear probe (W, b fitted by logistic regression). Tags are
what such a classifier says about each image.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# An image carries a label as a tag when it is the image's best label, or when its probability
# reaches this threshold (so an image can carry a few tags when it shows a few things).
DEFAULT_TAG_THRESHOLD = 0.3


@dataclass(frozen=True)
class LinearClassifier:
    """labels (n,), weights (n, d) float32, bias (n,) float32."""

    labels: tuple[str, ...]
    weights: np.ndarray
    bias: np.ndarray

    def probabilities(self, vectors: np.ndarray) -> np.ndarray:
        """(m, d) unit vectors -> (m, n) probabilities over labels."""
        logits = vectors @ self.weights.T + self.bias  # (m, n)
        logits -= logits.max(axis=1, keepdims=True)
        e = np.exp(logits)
        return e / e.sum(axis=1, keepdims=True)

    def tags(self, ids: np.ndarray, vectors: np.ndarray, threshold: float) -> list[tuple[int, str, float, bool]]:
        """(image id, label, probability, is best label) for every tag the images carry."""
        probs = self.probabilities(vectors)
        best = probs.argmax(axis=1)
        out = []
        for row, image_id in enumerate(ids.tolist()):
            for j in np.flatnonzero((probs[row] >= threshold) | (np.arange(len(self.labels)) == best[row])):
                out.append((image_id, self.labels[j], float(probs[row, j]), bool(j == best[row])))
        return out
