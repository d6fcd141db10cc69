"""Which images a query is relevant to, decided from the query's own scores (no fixed threshold).

The cosine scores of one query against every image searched form a mixture: a bulk of images the
query has nothing to do with, often a middle group that shares part of it (the right colour but the
wrong shape), and, when anything matches, a group that stands out above the rest. A constant
threshold fails because where these groups sit moves with the query and the model. So the scores
are modelled per query: one-dimensional Gaussian mixtures of 1 to MAX_COMPONENTS components are
fitted by EM (on a fine histogram of the scores, from several deterministic starts), the number of
components chosen by BIC. The images relevant to the query are those the highest component claims
(its posterior over one half), provided that component holds a minority of the images and stands
clear of the component below it. A single component (nothing stands out) means nothing is relevant.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

MAX_COMPONENTS = 5
MIN_SCORES = 8  # fewer cannot be modelled: then every image counts as relevant
MAX_SHARE = 0.5  # the relevant group is a minority of the images searched
MIN_SEPARATION = 2.0  # its mean is this many pooled standard deviations above the next group's
BINS = 512  # EM runs on a histogram of the scores: fast for any number of scores, fine enough for the cut
RANDOM_STARTS = 8  # per number of components, besides the quantile start
_EM_ITERATIONS = 200
_MIN_SD_BINS = 0.5  # a component is at least half a bin wide (identical scores stay modelled)


@dataclass(frozen=True)
class Cutoff:
    """The verdict on one query's scores: files scoring at least `threshold` are relevant.

    threshold is +inf when nothing stands out, -inf when there were too few scores to judge.
    judged: how many files' scores were judged; kept: how many pass; best: the highest score;
    bulk: (median, spread) of the scores judged irrelevant (the spread a robust standard
    deviation); method: "scores" (judged from the scores), "min-score" or "too few scores";
    reason: one line on how the threshold was chosen."""

    threshold: float
    method: str
    judged: int = 0
    kept: int = 0
    best: float = math.nan
    bulk: tuple[float, float] = (math.nan, math.nan)
    reason: str = ""

    def relevant(self, scores: np.ndarray) -> np.ndarray:
        return np.asarray(scores) >= self.threshold

    def summary(self) -> str:
        """What was kept, in words: "42 of 18,234 stand out (score >= 0.712)", or why nothing was,
        with the figures that decided it and what to try."""
        if self.method == "too few scores":
            return f"all {self.judged:,} kept: too few to judge which stand out"
        if self.method == "min-score":
            return f"{self.kept:,} of {self.judged:,} score >= {self.threshold:.3f} (--min-score)"
        if self.kept:
            return f"{self.kept:,} of {self.judged:,} stand out (score >= {self.threshold:.3f})"
        median, spread = self.bulk
        others = f"the other {self.judged - 1:,} around {median:.2f} ± {spread:.2f}" if self.judged > 1 else "no others"
        return f"nothing stands out: best {self.best:.2f}, {others}; use --min-score {math.floor(self.best * 100) / 100:.2f} or -k"

    def describe(self) -> str:
        """summary() and how the threshold was chosen (--explain-cutoff, the log)."""
        return f"{self.summary()}; {self.reason}" if self.reason else self.summary()

    def as_dict(self) -> dict[str, Any]:
        """The verdict for JSON (the HTTP API's "cutoff" object); an infinite threshold is null."""
        return {
            "method": self.method, "threshold": self.threshold if math.isfinite(self.threshold) else None,
            "judged": self.judged, "kept": self.kept, "best": None if math.isnan(self.best) else round(self.best, 4),
            "bulk_median": None if math.isnan(self.bulk[0]) else round(self.bulk[0], 4),
            "bulk_spread": None if math.isnan(self.bulk[1]) else round(self.bulk[1], 4),
            "summary": self.summary(), "reason": self.reason,
        }


def fixed_cutoff(min_score: float, scores: np.ndarray | None = None) -> Cutoff:
    """A user's own threshold (--min-score), with what it keeps of scores when given."""
    s = np.asarray([] if scores is None else scores, dtype=np.float64)
    return Cutoff(float(min_score), "min-score", len(s), int((s >= min_score).sum()), float(s.max()) if len(s) else math.nan, _bulk(s[s < min_score]))


def _bulk(s: np.ndarray) -> tuple[float, float]:
    """(median, robust standard deviation from the interquartile range) of s."""
    if not len(s):
        return (math.nan, math.nan)
    q1, median, q3 = np.quantile(s, (0.25, 0.5, 0.75))
    return (float(median), float(q3 - q1) / 1.349)


def cutoff(scores: np.ndarray, *, seed: int = 0) -> Cutoff:
    """The relevance threshold for one query's scores against all the images searched."""
    s = np.asarray(scores, dtype=np.float64).ravel()
    s = s[np.isfinite(s)]
    if len(s) < MIN_SCORES:
        return Cutoff(-math.inf, "too few scores", len(s), len(s), float(s.max()) if len(s) else math.nan)
    threshold = _mixture_threshold(s, seed)
    kept = s >= threshold
    return Cutoff(threshold, "scores", len(s), int(kept.sum()), float(s.max()), _bulk(s[~kept]), "")


def _mixture_threshold(s: np.ndarray, seed: int) -> float:
    lo, hi = float(s.min()), float(s.max())
    if hi - lo < 1e-9:
        return math.inf
    counts, edges = np.histogram(s, bins=BINS, range=(lo, hi))
    keep = counts > 0
    x, c = ((edges[:-1] + edges[1:]) / 2)[keep], counts[keep].astype(np.float64)
    floor = (_MIN_SD_BINS * (hi - lo) / BINS) ** 2
    rng = np.random.default_rng(seed)
    best = None
    for k in range(1, MAX_COMPONENTS + 1):
        if len(s) < 4 * k:
            break
        for start in _starts(x, c, k, floor, rng):
            fit = _fit(x, c, *start, floor)
            if fit is None:
                continue
            weights, means, variances, loglik = fit
            bic = -2 * loglik + (3 * k - 1) * math.log(len(s))
            if best is None or bic < best[0] - 1e-9:
                best = (bic, weights, means, variances)
    assert best is not None  # k=1 always fits
    _, weights, means, variances = best
    order = np.argsort(means)
    weights, means, variances = weights[order], means[order], variances[order]
    components = tuple((float(w), float(m), float(math.sqrt(v))) for w, m, v in zip(weights, means, variances))
    if len(means) == 1:
        return math.inf
    top = len(means) - 1
    separation = (means[top] - means[top - 1]) / math.sqrt(variances[top] + variances[top - 1])
    if weights[top] > MAX_SHARE or separation < MIN_SEPARATION:
        return math.inf
    return _crossing(weights, means, variances, top)


def _crossing(weights: np.ndarray, means: np.ndarray, variances: np.ndarray, top: int) -> float:
    """The lowest score between the next component's mean and the top's from which the top
    component claims a point (its posterior reaches one half)."""
    grid = np.linspace(means[top - 1], means[top], 4001)
    post = _posteriors(grid, weights, means, variances)[:, top]
    above = np.nonzero(post >= 0.5)[0]
    return float(grid[above[0]]) if len(above) else float(means[top])


def _log_densities(x: np.ndarray, weights: np.ndarray, means: np.ndarray, variances: np.ndarray) -> np.ndarray:
    """log(w_j N(x_i; m_j, v_j)), shape (n, k)."""
    d = x[:, None] - means[None, :]
    return np.log(weights)[None, :] - 0.5 * (np.log(2 * math.pi * variances)[None, :] + d * d / variances[None, :])


def _posteriors(x: np.ndarray, weights: np.ndarray, means: np.ndarray, variances: np.ndarray) -> np.ndarray:
    logp = _log_densities(x, weights, means, variances)
    p = np.exp(logp - logp.max(axis=1, keepdims=True))
    return p / p.sum(axis=1, keepdims=True)


def _starts(x: np.ndarray, c: np.ndarray, k: int, floor: float, rng: np.random.Generator) -> list[tuple[np.ndarray, ...]]:
    """Starting points for EM: equal-count groups, then means drawn from the scores."""
    total = c.sum()
    mean = float((c * x).sum() / total)
    var = max(float((c * (x - mean) ** 2).sum() / total) / (k * k), floor)
    cdf = np.cumsum(c) / total
    quantiles = x[np.minimum(np.searchsorted(cdf, (np.arange(k) + 0.5) / k), len(x) - 1)]
    starts = [(np.full(k, 1.0 / k), quantiles.astype(np.float64), np.full(k, var))]
    if k > 1:
        for _ in range(RANDOM_STARTS):
            means = np.sort(rng.choice(x, size=k, replace=len(x) < k))  # distinct scores, any density
            starts.append((np.full(k, 1.0 / k), means, np.full(k, var)))
    return starts


def _fit(
    x: np.ndarray, c: np.ndarray, weights: np.ndarray, means: np.ndarray, variances: np.ndarray, floor: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray, float] | None:
    """EM for a 1-D Gaussian mixture on histogram points x with counts c, from the given start.
    Returns (weights, means, variances, log-likelihood), or None when a component empties."""
    total = c.sum()
    previous = -math.inf
    loglik = previous
    for _ in range(_EM_ITERATIONS):
        logp = _log_densities(x, weights, means, variances)
        top = logp.max(axis=1, keepdims=True)
        p = np.exp(logp - top)
        norm = p.sum(axis=1, keepdims=True)
        loglik = float((c * (np.log(norm[:, 0]) + top[:, 0])).sum())
        r = c[:, None] * p / norm
        n_k = r.sum(axis=0)
        if len(n_k) > 1 and np.any(n_k < 2):  # a component with under two images models nothing
            return None
        weights = n_k / total
        means = (r * x[:, None]).sum(axis=0) / n_k
        variances = np.maximum((r * (x[:, None] - means[None, :]) ** 2).sum(axis=0) / n_k, floor)
        if loglik - previous < 1e-6 * total:
            break
        previous = loglik
    return weights, means, variances, loglik
