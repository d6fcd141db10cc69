"""Which images a query is relevant to, decided from the query's own scores (no fixed threshold).

The cosine scores of one query against every image searched are a bulk of images the query has
nothing to do with (often with a middle group sharing part of it: the right colour, the wrong shape,
and a thin upper tail of near misses) and, when anything matches, the matches above it. Where these
sit moves with the query and the model, so each query's scores are judged on their own, in two steps:

1. A group of matches (about 1% of the images and up): one-dimensional Gaussian mixtures of 1 to
   MAX_COMPONENTS components are fitted by EM to the top half of the scores (the matches are there;
   the bulk's lower modes would use up components), the number chosen by BIC. A group is the top
   component and those just below it (a group of matches is skewed: two components model it); of the
   candidate groups holding at most MAX_SHARE of the images, the one whose cut (where it becomes
   likelier than the rest) falls where the mixture is thinnest. It is kept if it is a bump, not the
   bulk's decaying tail (the mixture is VALLEY_DEPTH times as dense at the group's densest component
   as at the cut; SMALL_GROUP_DEPTH times for a group of under SMALL_GROUP of the images, as the
   near misses' tail has small bumps of its own), and if the mixture expects most of what lies above
   the cut to be the group's (MIN_PRECISION; else the top is a wider middle group's tail, and the
   "group" is a middle group: partial matches).
2. Else, a few images far beyond the bulk (peaks over threshold, extreme-value theory): for each
   candidate count k of matches (up to FEW_SHARE of the images) the bulk is every score below the
   k-th; the top TAIL_ROOTS x sqrt(size) of that bulk are fitted with a generalized Pareto
   distribution (probability-weighted moments, Hosking and Wallis 1987: closed form), whose reach is
   the score the bulk exceeds with chance ALPHA among all the images. The k-th score stands out when
   it lies BEYOND times as far above the fit's start as that reach. Fitting below each candidate
   keeps the matches from pulling the fit of the bulk. The shape is bounded above by 0 (cosines are
   bounded: a bulk's tail is at most exponential) and taken at its upper 95% confidence bound. The
   near misses' own top is irregular (a few images of other kinds score as high as matches do), so
   this step is strict: on the bundled model's scenes it keeps nothing when nothing matches, and
   finds few needles (docs/search.md has the figures). It needs more than 500 images.

Nothing in either step: nothing stands out, and nothing is relevant. Measured per prevalence with
scripts/eval_cutoff.py (docs/search.md).

Cost: one pass over the scores (a fine histogram: the quantiles, and the mixture's data binned), EM
on at most BINS bins whatever the number of images, and a partial sort of the top 1% for step 2:
about 50 ms on a million scores (scripts/eval_cutoff.py prints it)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

MAX_COMPONENTS = 7
MIN_SCORES = 8  # fewer cannot be modelled: then every image counts as relevant
# step 1: a group of matches
MAX_SHARE = 0.25  # a group of matches holds at most this share of the images searched (a larger clump is the bulk's structure: a query the model cannot place puts a third of a library there)
FITTED_SHARE = 0.5  # the mixture models the top half of the scores
VALLEY_DEPTH = 1.7  # the mixture is this many times as dense at the group's densest component as at the cut, or more
SMALL_GROUP, SMALL_GROUP_DEPTH = 0.005, 10.0  # a group of under 0.5% of the images must be 10 times as dense: the near misses' tail has small bumps of its own
MIN_PRECISION = 0.5  # the mixture expects at least this share of the scores above the cut to be the group's
# step 2: a few images far beyond the bulk
ALPHA = 0.05  # the chance that the bulk alone reaches the threshold somewhere among the images
TAIL_ROOTS, MIN_TAIL, MAX_TAIL = 2.0, 50, 2000  # the Pareto fit sees the bulk's top TAIL_ROOTS x sqrt(its size)
MAX_TAIL_SHARE = 0.1  # and at most: up to 500 images, step 2 does not run
SHAPE_RANGE = (-0.5, 0.0)  # the Pareto shape, clamped: cosines are bounded, so a bulk tail is at most exponential
SHAPE_MARGIN = 1.645  # standard errors added to the shape estimate: a one-sided 95% upper bound
CANDIDATES = 60  # candidate counts of matches for step 2, spaced geometrically
FEW_SHARE = 0.01  # step 2 looks for at most this share of the images (larger groups are step 1's)
BEYOND = 1.5  # step 2 keeps scores this many times as far above the fit's start as the bulk reaches
# the fit
FINE_BINS = 4096  # one histogram of all the scores gives the quantiles and the mixture's data
BINS = 128  # EM runs on at most this many bins of the top half: fast for any number of scores, fine enough for the cut
RANDOM_STARTS = 4  # per number of components, besides the quantile start
MIN_COMPONENT = 5  # scores: a component of fewer is a spike on a few of them (step 2 judges a few images); 2 when fewer than 200 are fitted
_SHORT_RUN = 20  # EM iterations from every start before the best start of each size is run on
_EM_ITERATIONS = 100
_EM_TOLERANCE = 1e-5  # per score: EM stops when the log-likelihood gains less
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
    s = np.asarray(scores).ravel()
    if s.dtype not in (np.float32, np.float64):
        s = s.astype(np.float64)
    if not np.isfinite(s).all():
        s = s[np.isfinite(s)]
    if len(s) < MIN_SCORES:
        return Cutoff(-math.inf, "too few scores", len(s), len(s), float(s.max()) if len(s) else math.nan)
    lo, hi = float(s.min()), float(s.max())
    if hi - lo <= 1e-9:
        return Cutoff(math.inf, "scores", len(s), 0, hi, _bulk(s), "every score is the same")
    histogram = _Histogram(s, lo, hi)  # the one pass over all the scores; the rest works on it and on the top ones
    found = _group(histogram, seed) or _beyond_bulk(s)
    threshold, reason = found or (math.inf, "no group stands clear of the rest, and no score lies beyond the bulk's tail")
    kept = int((s >= threshold).sum())
    return Cutoff(threshold, "scores", len(s), kept, hi, histogram.bulk(len(s) - kept), reason)


class _Histogram:
    """FINE_BINS equal bins over [lo, hi] of every score: the quantiles and the mixture's data,
    to a fine bin (1/FINE_BINS of the range), from one pass."""

    def __init__(self, s: np.ndarray, lo: float, hi: float) -> None:
        # float64 bounds: float32 ones would make float32 edges, too coarse for scores a few 1e-5 apart
        self.counts, self.edges = np.histogram(s, bins=FINE_BINS, range=(np.float64(lo), np.float64(hi)))
        self.cumulative = np.cumsum(self.counts)
        self.n = len(s)

    def at_rank(self, rank: float) -> float:
        """The score at rank (0 = the lowest, fractional between two), interpolated in its bin."""
        b = int(np.searchsorted(self.cumulative, rank, side="right"))
        b = min(b, FINE_BINS - 1)
        before = self.cumulative[b - 1] if b else 0
        within = (rank - before + 0.5) / max(int(self.counts[b]), 1)
        return float(self.edges[b] + min(max(within, 0.0), 1.0) * (self.edges[b + 1] - self.edges[b]))

    def bulk(self, m: int) -> tuple[float, float]:
        """(median, robust standard deviation) of the m lowest scores (the bulk below a cut)."""
        if m <= 0:
            return (math.nan, math.nan)
        q1, median, q3 = (self.at_rank(q * (m - 1)) for q in (0.25, 0.5, 0.75))
        return (median, (q3 - q1) / 1.349)

    def top(self, share: float) -> tuple[np.ndarray, np.ndarray, float, int]:
        """The top share of the scores (from the bin holding its lowest) in at most BINS bins:
        (centres, counts) of the non-empty ones, the bin width, and how many scores they hold."""
        first = int(np.searchsorted(self.cumulative, (1 - share) * self.n, side="left"))
        counts = self.counts[first:]
        merge = -(-len(counts) // BINS)
        counts = np.pad(counts, (0, -len(counts) % merge)).reshape(-1, merge).sum(axis=1)
        width = float(self.edges[1] - self.edges[0]) * merge
        centres = float(self.edges[first]) + width * (np.arange(len(counts)) + 0.5)
        keep = counts > 0
        return centres[keep], counts[keep].astype(np.float64), width, int(counts.sum())


def _group(histogram: _Histogram, seed: int) -> tuple[float, str] | None:
    """Step 1: (threshold, reason) for a group of matches standing clear of the rest, or None."""
    x, c, width, fitted = histogram.top(FITTED_SHARE)  # the matches are up here; the bulk's lower modes would take components
    weights, means, variances = _mixture(x, c, width, seed)
    weights = weights * (fitted / histogram.n)  # as shares of all the scores (the lowest component stands for the rest)

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
    if best is None:
        return None
    valley, low, cut = best
    peak = max(density(m) for m in means[low:])  # the group's densest point
    depth = peak / valley if valley > 0 else math.inf  # a gap of some 40 standard deviations leaves no density at the cut
    if depth <= (SMALL_GROUP_DEPTH if weights[low:].sum() < SMALL_GROUP else VALLEY_DEPTH):  # no bump of matches: the bulk's tail decaying
        return None
    above = weights * 0.5 * np.array([math.erfc((cut - m) / math.sqrt(2 * v)) for m, v in zip(means, variances)])  # each component's share above the cut
    precision = above[low:].sum() / above.sum()
    if precision < MIN_PRECISION:
        return None  # most of what lies above the cut is a wider component's tail: a middle group, not the top
    return cut, (f"a group of {100 * weights[low:].sum():.2g}% of the scores, up to around {means[-1]:.3f}, whose density at its densest is "
                 f"{depth:.1f} times that at the cut, where it becomes likelier than the rest (around {means[low - 1]:.3f}); "
                 f"the mixture expects {precision:.0%} of the scores above the cut to be the group's")


def _mixture(x: np.ndarray, c: np.ndarray, width: float, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The BIC-chosen Gaussian mixture of the scores binned at x with counts c, bins width wide:
    (weights, means, variances), lowest mean first.

    Short runs of EM from every start of every size at once (a k-component start fills the first k
    of MAX_COMPONENTS slots) pick each size's best start (Biernacki, Celeux and Govaert 2003), run
    to convergence, every size at once again. Then each size's fit with a small tight component
    added at the top is run to convergence too (as greedy EM does, Verbeek, Vlassis and Krose 2003):
    a group of a few best scores is found this way, where a start from scratch spends its
    components on a large bulk's shape."""
    floor = (_MIN_SD_BINS * width) ** 2
    rng = np.random.default_rng(seed)
    n = int(c.sum())
    least = max(2.0, min(MIN_COMPONENT, 0.01 * n))  # a component holds this many scores or more
    sizes = [k for k in range(1, MAX_COMPONENTS + 1) if n >= 4 * k]
    starts = [_starts(x, c, k, floor, rng) for k in sizes]
    ks = np.concatenate([np.full(len(w), k) for k, (w, _, _) in zip(sizes, starts)])
    weights, means, variances, loglik = _fit(
        x, c, _slots([w for w, _, _ in starts], 0.0), _slots([m for _, m, _ in starts], 0.0), _slots([v for _, _, v in starts], 1.0), floor, _SHORT_RUN, least)
    best_run = [int(np.flatnonzero(ks == k)[np.argmax(loglik[ks == k])]) for k in sizes]
    weights, means, variances, loglik = _fit(x, c, weights[best_run], means[best_run], variances[best_run], floor, _EM_ITERATIONS, least)
    cdf = np.cumsum(c) / n
    tops = (x[min(int(np.searchsorted(cdf, 0.995)), len(x) - 1)], x[-1])  # the top 0.5%, and the best scores
    w, m, v, of = [], [], [], []
    for k in sizes[1:]:  # each size's fit, with a small tight group added at the top
        for top in tops:
            w.append(np.append(weights[k - 2, : k - 1] * 0.99, 0.01)), m.append(np.append(means[k - 2, : k - 1], top))
            v.append(np.append(variances[k - 2, : k - 1], floor * 16)), of.append(k)
    greedy = _fit(x, c, _slots(w, 0.0), _slots(m, 0.0), _slots(v, 1.0), floor, _EM_ITERATIONS, least) if w else None
    of = sizes + of
    if greedy is not None:
        weights, means, variances, loglik = (np.concatenate([a, b]) for a, b in zip((weights, means, variances, loglik), greedy))
    bic = -2 * loglik + (3 * np.array(of) - 1) * math.log(n)  # a fit whose component emptied has bic +inf
    best = None
    for i in np.argsort(np.array(of), kind="stable"):  # the fewest components within rounding of the lowest BIC
        if np.isfinite(bic[i]) and (best is None or bic[i] < bic[best] - 1e-9):
            best = int(i)
    assert best is not None  # k=1 always fits
    k = of[best]
    order = np.argsort(means[best, :k])
    return weights[best, :k][order], means[best, :k][order], variances[best, :k][order]


def _slots(starts: list[np.ndarray], fill: float) -> np.ndarray:
    """(starts, MAX_COMPONENTS) from rows (or blocks of rows) of k <= MAX_COMPONENTS components, the rest filled."""
    return np.concatenate([np.pad(np.atleast_2d(s), ((0, 0), (0, MAX_COMPONENTS - np.shape(s)[-1])), constant_values=fill) for s in starts])


def _beyond_bulk(s: np.ndarray) -> tuple[float, str] | None:
    """Step 2: (threshold, reason) for the scores far beyond the bulk's tail; or None."""
    n = len(s)
    ks = np.unique(np.geomspace(1, max(1, int(FEW_SHARE * n)), CANDIDATES).round().astype(int))
    ks = ks[MAX_TAIL_SHARE * (n - ks) >= MIN_TAIL]  # a small collection: its top is no tail to fit
    if not len(ks):
        return None
    top = min(n, int(ks[-1]) + MAX_TAIL + 1)  # every score a fit below a candidate can see
    desc = -np.sort(-np.partition(s, n - top)[n - top :].astype(np.float64))
    found = None
    for k in ks:
        tail = _pareto_tail(desc, int(k), n - int(k))
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


def _pareto_tail(desc: np.ndarray, k: int, bulk: int) -> _Tail:
    """The Pareto tail of the bulk below the k best (desc: the top scores, best first; bulk: how
    many scores are below them), fitted by probability-weighted moments."""
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
    """Starting points for EM, (starts, k) weights, means and variances: equal-count groups, then
    means drawn from the scores."""
    total = c.sum()
    mean = float((c * x).sum() / total)
    var = max(float((c * (x - mean) ** 2).sum() / total) / (k * k), floor)
    cdf = np.cumsum(c) / total
    quantiles = x[np.minimum(np.searchsorted(cdf, (np.arange(k) + 0.5) / k), len(x) - 1)]
    weights, means, variances = [np.full(k, 1.0 / k)], [quantiles], [np.full(k, var)]
    for _ in range(RANDOM_STARTS if k > 1 else 0):
        weights.append(np.full(k, 1.0 / k))
        means.append(np.sort(rng.choice(x, size=k, replace=len(x) < k)))  # distinct scores, any density
        variances.append(np.full(k, var))
    return np.array(weights), np.array(means, dtype=np.float64), np.array(variances)


def _fit(
    x: np.ndarray, c: np.ndarray, weights: np.ndarray, means: np.ndarray, variances: np.ndarray, floor: float, iterations: int, least: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """EM for 1-D Gaussian mixtures on histogram points x with counts c, from several starts at once
    ((starts, slots) weights, means, variances; a slot of weight 0 is no component and stays none).
    Returns the fitted (weights, means, variances) and each start's log-likelihood, -inf for a start
    in which a component emptied (held fewer than least scores)."""
    total = c.sum()
    weights, means, variances = weights.copy(), means.copy(), variances.copy()
    active = weights > 0
    loglik = np.full(len(weights), -np.inf)
    running = np.arange(len(weights))  # the starts still improving
    x2 = x * x
    for _ in range(iterations):
        w, m, v, on = weights[running], means[running], variances[running], active[running]
        with np.errstate(divide="ignore"):
            const = np.log(w) - 0.5 * np.log(2 * math.pi * v)  # (starts, slots)
        d = x[None, :, None] - m[:, None, :]  # (starts, points, slots)
        logp = const[:, None, :] - (0.5 / v)[:, None, :] * (d * d)
        top = logp.max(axis=2, keepdims=True)
        p = np.exp(logp - top)
        norm = p.sum(axis=2)
        now = (np.log(norm) + top[..., 0]) @ c
        r = p * (c / norm)[..., None]  # responsibilities times counts
        n_k = r.sum(axis=1)
        emptied = ((n_k < least) & on).any(axis=1) & (on.sum(axis=1) > 1)  # a component of a few images is a spike, not a group
        n_k = np.maximum(n_k, 1e-12)
        m = np.einsum("spk,p->sk", r, x) / n_k
        v = np.maximum(np.einsum("spk,p->sk", r, x2) / n_k - m * m, floor)
        weights[running], means[running], variances[running] = np.where(on, n_k / total, 0.0), m, v
        converged = now - loglik[running] < _EM_TOLERANCE * total
        loglik[running] = np.where(emptied, -np.inf, now)
        running = running[~(converged | emptied)]
        if not len(running):
            break
    return weights, means, variances, loglik
