"""Which images a query is relevant to, decided from the query's own scores (no fixed threshold).

The cosine scores of one query against every image searched are a bulk of images the query has
nothing to do with (often with a middle group sharing part of it: the right colour, the wrong shape,
and a thin upper tail of near misses) and, when anything matches, the matches above it. Where these
sit moves with the query and the model, so each query's scores are judged on their own, in two steps:

1. A group of matches (about 1% of the images and up): one-dimensional Gaussian mixtures of 1 to
   MAX_COMPONENTS components are fitted by EM on a fine histogram of the top half of the scores (the
   matches are there; the bulk's lower modes would use up components), the number chosen by BIC.
   A group is the top component and those just below it (a group of matches is skewed: two
   components model it); of the candidate groups holding at most MAX_SHARE of the images, the one
   whose cut (where it becomes likelier than the rest) falls where the mixture is thinnest. It is
   kept if it is a bump, not the bulk's decaying tail (the mixture is VALLEY_DEPTH times as dense at
   the top component as at the cut) and it holds the best score (else the top is a wider middle
   group's tail, and the "group" is a middle group: partial matches).
2. Else, a few images far beyond the bulk (peaks over threshold, extreme-value theory): for each
   candidate count k of matches the bulk is every score below the k-th; the top TAIL_ROOTS x
   sqrt(size) of that bulk are fitted with a generalized Pareto distribution (probability-weighted
   moments, Hosking and Wallis 1987: closed form), whose reach is the score the bulk exceeds with
   chance ALPHA among all the images. The k-th score stands out when it lies BEYOND times as far
   above the fit's start as that reach. Fitting below each candidate keeps the matches from pulling
   the fit of the bulk. The shape is bounded above by 0 (cosines are bounded: a bulk's tail is at
   most exponential) and taken at its upper 95% confidence bound. The near misses' own top is
   irregular (a few images of other kinds score as high as matches do), so this step is strict:
   on the bundled model's scenes it keeps nothing when nothing matches, and finds few needles
   (docs/search.md has the figures). It needs 500 images or more.

Nothing in either step: nothing stands out, and nothing is relevant. Measured per prevalence with
scripts/eval_cutoff.py (docs/search.md)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

MAX_COMPONENTS = 6
MIN_SCORES = 8  # fewer cannot be modelled: then every image counts as relevant
MAX_SHARE = 0.25  # a group of matches holds at most this share of the images searched (a larger clump is the bulk's structure: a query the model cannot place puts a third of a library there)
FITTED_SHARE = 0.5  # the mixture models the top half of the scores
VALLEY_DEPTH = 2.0  # the mixture density at the top component is this many times that at the cut, or more
BINS = 512  # EM runs on a histogram of the scores: fast for any number of scores, fine enough for the cut
RANDOM_STARTS = 8  # per number of components, besides the quantile start
ALPHA = 0.05  # the chance that the bulk alone reaches the threshold somewhere among the images
TAIL_ROOTS, MIN_TAIL, MAX_TAIL = 2.0, 50, 2000  # the Pareto fit sees the bulk's top TAIL_ROOTS x sqrt(its size)
MAX_TAIL_SHARE = 0.1  # and at most: below 500 images, step 2 does not run
SHAPE_RANGE = (-0.5, 0.0)  # the Pareto shape, clamped: cosines are bounded, so a bulk tail is at most exponential
SHAPE_MARGIN = 1.645  # standard errors added to the shape estimate: a one-sided 95% upper bound
CANDIDATES = 60  # candidate counts of matches for step 2, spaced geometrically
BEYOND = 1.5  # step 2 keeps scores this many times as far above the fit's start as the bulk reaches
_EM_ITERATIONS = 200
_EM_TOLERANCE = 1e-6  # per score: EM stops when the log-likelihood gains less
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
    """The relevance threshold for one query's scores against all the files searched."""
    s = np.asarray(scores, dtype=np.float64).ravel()
    s = s[np.isfinite(s)]
    if len(s) < MIN_SCORES:
        return Cutoff(-math.inf, "too few scores", len(s), len(s), float(s.max()) if len(s) else math.nan)
    if s.max() - s.min() <= 1e-9:
        threshold, reason = math.inf, "every score is the same"
    else:
        found = _group(s, seed) or _beyond_bulk(-np.sort(-s))
        threshold, reason = found or (math.inf, "no group stands clear of the rest, and no score lies beyond the bulk's tail")
    kept = s >= threshold
    return Cutoff(threshold, "scores", len(s), int(kept.sum()), float(s.max()), _bulk(s[~kept]), reason)


def _group(s: np.ndarray, seed: int) -> tuple[float, str] | None:
    """Step 1: (threshold, reason) for a group of matches standing clear of the rest, or None."""
    upper = s[s >= np.quantile(s, 1 - FITTED_SHARE)]  # the matches are up here; the bulk's lower modes would take components
    weights, means, variances = _mixture(upper, seed)
    weights = weights * (len(upper) / len(s))  # as shares of all the scores (the lowest component stands for the rest)

    def density(x: float) -> float:
        return float(np.exp(_log_densities(np.array([x]), weights, means, variances)).sum())

    best = None  # (the density at the cut, the group's lowest component, the cut)
    for low in range(len(means) - 1, 0, -1):  # the group: components low .. top
        if weights[low:].sum() > MAX_SHARE:
            break
        grid = np.linspace(means[low - 1], means[low], 2001)
        claimed = np.nonzero(_posteriors(grid, weights, means, variances)[:, low:].sum(axis=1) >= 0.5)[0]
        cut = float(grid[claimed[0]]) if len(claimed) else float(means[low])
        if best is None or density(cut) < best[0]:
            best = (density(cut), low, cut)
    peak = density(means[-1])
    if best is None or best[0] * VALLEY_DEPTH >= peak:  # no bump of matches: the bulk's tail decaying
        return None
    valley, low, cut = best
    if _posteriors(np.array([s.max()]), weights, means, variances)[0, low:].sum() < 0.5:
        return None  # the best scores belong to a wider component below: this is a middle group, not the top
    return cut, (f"a group of {weights[low:].sum():.1%} of the scores, the top around {means[-1]:.3f}, whose density there is "
                 f"{peak / valley:.1f} times that at the cut, where it becomes likelier than the rest (around {means[low - 1]:.3f})")


def _mixture(s: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The BIC-chosen Gaussian mixture of s: (weights, means, variances), lowest mean first."""
    lo, hi = float(s.min()), float(s.max())
    counts, edges = np.histogram(s, bins=BINS, range=(lo, hi))
    keep = counts > 0
    x, c = ((edges[:-1] + edges[1:]) / 2)[keep], counts[keep].astype(np.float64)
    floor = (_MIN_SD_BINS * (hi - lo) / BINS) ** 2
    rng = np.random.default_rng(seed)
    best = None
    for k in range(1, MAX_COMPONENTS + 1):
        if len(s) < 4 * k:
            break
        weights, means, variances, loglik = _fit(x, c, *_starts(x, c, k, floor, rng), floor)  # every start at once
        bic = -2 * loglik + (3 * k - 1) * math.log(len(s))
        i = int(np.argmin(bic))  # a start whose component emptied has bic +inf
        if np.isfinite(bic[i]) and (best is None or bic[i] < best[0] - 1e-9):
            best = (bic[i], weights[i], means[i], variances[i])
    assert best is not None  # k=1 always fits
    _, weights, means, variances = best
    order = np.argsort(means)
    return weights[order], means[order], variances[order]


def _beyond_bulk(desc: np.ndarray) -> tuple[float, str] | None:
    """Step 2: (threshold, reason) for the scores far beyond the bulk's tail, desc sorted best first; or None."""
    n = len(desc)
    found = None
    for k in np.unique(np.geomspace(1, max(1, int(MAX_SHARE * n)), CANDIDATES).round().astype(int)):
        if MAX_TAIL_SHARE * (n - k) < MIN_TAIL:  # a small collection: its top is no tail to fit
            break
        tail = _pareto_tail(desc, int(k))
        reach = tail.level(ALPHA / n)  # where the bulk's own top would be
        threshold = tail.start + BEYOND * (reach - tail.start)
        if desc[k - 1] > threshold:
            found = (int(k), tail, threshold)
    if found is None:
        return None
    k, tail, threshold = found
    return threshold, (f"the top {k} lie far beyond the tail of the other {n - k:,} (a Pareto fit above {tail.start:.3f}, shape {tail.shape:.2f}): "
                       f"the cut is {BEYOND:g} times as far above its start as the rest reach with chance {ALPHA:g}")


@dataclass(frozen=True)
class _Tail:
    """A generalized Pareto upper tail: P(S > x) = share (1 + shape (x - start) / scale)^(-1/shape) above start."""

    shape: float
    scale: float
    start: float
    share: float

    def exceeds(self, x: float) -> float:
        z = max(x - self.start, 0.0) / self.scale
        if abs(self.shape) < 1e-6:
            return self.share * math.exp(-z)
        base = 1 + self.shape * z
        return self.share * base ** (-1 / self.shape) if base > 0 else 0.0

    def level(self, p: float) -> float:
        """The score exceeded with chance p."""
        r = p / self.share
        if abs(self.shape) < 1e-6:
            return self.start - self.scale * math.log(r)
        return self.start + self.scale / self.shape * (r ** -self.shape - 1)


def _pareto_tail(desc: np.ndarray, k: int) -> _Tail:
    """The Pareto tail of the bulk desc[k:] (best first), fitted by probability-weighted moments."""
    bulk = len(desc) - k
    m = int(min(max(TAIL_ROOTS * math.sqrt(bulk), MIN_TAIL), MAX_TAIL, bulk - 1))
    start = float(desc[k + m])
    y = desc[k : k + m][::-1] - start  # exceedances, ascending
    a0 = float(y.mean())
    a1 = float((y * (1 - (np.arange(1, m + 1) - 0.35) / m)).mean())
    d = a0 - 2 * a1
    shape = 2 - a0 / d if a0 > 0 and d > 0 else 0.0
    # the estimate is noisy (a few hundred exceedances at most), and a bounded tail estimated too short
    # would put the bulk's own top scores beyond it: judge with its upper confidence bound
    shape = min(max(shape + SHAPE_MARGIN * _shape_error(shape, m), SHAPE_RANGE[0]), SHAPE_RANGE[1])
    return _Tail(shape, max(a0 * (1 - shape), 1e-12), start, m / bulk)


def _shape_error(shape: float, m: int) -> float:
    """The standard error of the PWM shape estimate from m exceedances (Hosking and Wallis 1987)."""
    k = min(max(-shape, -0.45), 0.45)  # their k is minus our shape; the formula holds for k > -1/2
    return math.sqrt((1 + k) * (2 + k) ** 2 * (1 + k + 2 * k * k) / ((1 + 2 * k) * (3 + 2 * k) * m))


def _log_densities(x: np.ndarray, weights: np.ndarray, means: np.ndarray, variances: np.ndarray) -> np.ndarray:
    """log(w_j N(x_i; m_j, v_j)), shape (n, k)."""
    d = x[:, None] - means[None, :]
    return np.log(weights)[None, :] - 0.5 * (np.log(2 * math.pi * variances)[None, :] + d * d / variances[None, :])


def _posteriors(x: np.ndarray, weights: np.ndarray, means: np.ndarray, variances: np.ndarray) -> np.ndarray:
    logp = _log_densities(x, weights, means, variances)
    p = np.exp(logp - logp.max(axis=1, keepdims=True))
    return p / p.sum(axis=1, keepdims=True)


def _starts(x: np.ndarray, c: np.ndarray, k: int, floor: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Starting points for EM, (starts, k) weights, means and variances: equal-count groups, the
    same with a small group at the top, then means drawn from the scores."""
    total = c.sum()
    mean = float((c * x).sum() / total)
    var = max(float((c * (x - mean) ** 2).sum() / total) / (k * k), floor)
    cdf = np.cumsum(c) / total
    quantiles = x[np.minimum(np.searchsorted(cdf, (np.arange(k) + 0.5) / k), len(x) - 1)]
    weights, means, variances = [np.full(k, 1.0 / k)], [quantiles], [np.full(k, var)]
    if k > 1:  # a small tight group at the very top, which equal-count starts miss
        weights.append(np.append(np.full(k - 1, 0.99 / (k - 1)), 0.01))
        means.append(np.append(quantiles[:-1], x[min(int(np.searchsorted(cdf, 0.995)), len(x) - 1)]))
        variances.append(np.append(np.full(k - 1, var), floor * 16))
        for _ in range(RANDOM_STARTS):
            weights.append(np.full(k, 1.0 / k))
            means.append(np.sort(rng.choice(x, size=k, replace=len(x) < k)))  # distinct scores, any density
            variances.append(np.full(k, var))
    return np.array(weights), np.array(means, dtype=np.float64), np.array(variances)


def _fit(
    x: np.ndarray, c: np.ndarray, weights: np.ndarray, means: np.ndarray, variances: np.ndarray, floor: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """EM for 1-D Gaussian mixtures on histogram points x with counts c, from several starts at once
    ((starts, k) weights, means, variances). Returns the fitted (weights, means, variances) and each
    start's log-likelihood, -inf for a start in which a component emptied."""
    total = c.sum()
    k = weights.shape[1]
    weights, means, variances = weights.copy(), means.copy(), variances.copy()
    loglik = np.full(len(weights), -np.inf)
    running = np.arange(len(weights))  # the starts still improving
    for _ in range(_EM_ITERATIONS):
        w, m, v = weights[running], means[running], variances[running]
        d = x[None, :, None] - m[:, None, :]  # (starts, points, k)
        logp = np.log(w)[:, None, :] - 0.5 * (np.log(2 * math.pi * v)[:, None, :] + d * d / v[:, None, :])
        top = logp.max(axis=2, keepdims=True)
        p = np.exp(logp - top)
        norm = p.sum(axis=2, keepdims=True)
        now = (c * (np.log(norm[..., 0]) + top[..., 0])).sum(axis=1)
        r = (c[None, :, None] / norm) * p
        n_k = r.sum(axis=1)
        emptied = (n_k < 2).any(axis=1) if k > 1 else np.zeros(len(n_k), bool)  # a component under two images models nothing
        n_k = np.maximum(n_k, 1e-12)
        m = (r * x[None, :, None]).sum(axis=1) / n_k
        v = np.maximum((r * (x[None, :, None] - m[:, None, :]) ** 2).sum(axis=1) / n_k, floor)
        weights[running], means[running], variances[running] = n_k / total, m, v
        converged = now - loglik[running] < _EM_TOLERANCE * total
        loglik[running] = np.where(emptied, -np.inf, now)
        running = running[~(converged | emptied)]
        if not len(running):
            break
    return weights, means, variances, loglik
