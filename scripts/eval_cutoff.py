"""Measure the relevance cut-off (searchlite.query.relevance.cutoff, what `query --sort date` and
`--all` keep) with the bundled shapes model on freshly rendered scenes, per prevalence.

A pool of one-shape scenes of each of the 12 kinds "a <colour> <shape>" is rendered from a seed
used nowhere else, by the renderer the model was trained on (--renderer training:
scripts/make_shapes.py, so held-out scenes of the kind the model reads) or by an independent one
(--renderer independent: scripts/render_eval_shapes.py, other drawing, sizes and backgrounds, so
the model's generalisation is tested too), and embedded with the searchlite-shapes image tower; the
12 query texts with its text tower. For each collection size and prevalence, and for each query, a
collection is drawn from the pool: round(prevalence x size) scenes of the queried kind (at least
one) and the rest from the other 11 kinds. The cut-off sees the query's cosine scores against that
collection, as `query --sort date` does, and its kept set is compared with the truth. Also
measured: "absent" (no scene of the kind: the cut-off must keep nothing), "one" (a single scene of
the kind), "two groups" (the query "a red circle" + "a blue square", the sum of two text vectors as
`query "a red circle" "a blue square"` makes it, each kind 1% of the collection) and "either kind"
(the same scenes scored by the better of the two queries: two groups of matches at their own
levels), and the time of one cut-off on 1,000,000 scores. "best F1" is the F1 of the best single
threshold for that query (the ceiling any cut-off has).

    python scripts/eval_cutoff.py --renderer training --seed 27103 --sizes 5000 50000 --per-kind 10000
"""

from __future__ import annotations

import argparse
import io
import json
import multiprocessing
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
import make_shapes  # noqa: E402
import render_eval_shapes  # noqa: E402

KINDS = [(c, s) for c in render_eval_shapes.COLORS for s in render_eval_shapes.SHAPES]
PREVALENCES = (0.0005, 0.002, 0.01, 0.05, 0.2)
CHUNK = 500


def _encoder():
    from searchlite.models.loading import load_encoder
    from searchlite.models.spec import spec_from_flags

    return load_encoder(spec_from_flags("searchlite-shapes", None), "cpu")


def _embed_chunk(job: tuple[str, int, int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Render and embed count one-shape scenes from chunk's own seed: (vectors, kind of each).
    "independent": all of kind (its index), drawn by render_eval_shapes; "training": of any kind,
    drawn by make_shapes (the renderer the model was trained on, so held-out scenes of its own kind)."""
    from PIL import Image

    renderer, seed, kind, chunk, count = job
    import torch

    torch.set_num_threads(1)
    encoder = _embed_chunk.encoder = getattr(_embed_chunk, "encoder", None) or _encoder()
    rng = np.random.default_rng([seed, kind, chunk])
    batch, kinds = [], []
    for _ in range(count):
        if renderer == "independent":
            data, _scene = render_eval_shapes.render(rng, 1, first=KINDS[kind])
            image = Image.open(io.BytesIO(data)).convert("RGB")
        else:
            scene = make_shapes.render(rng, shapes=1)
            image, kind = scene.image, KINDS.index((scene.color, scene.shape))
        batch.append(encoder.preprocess(image))
        kinds.append(kind)
    return encoder.encode_images(batch), np.array(kinds)


def pool(renderer: str, seed: int, per_kind: int, cache: Path, workers: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(image vectors (12 x per_kind, d), their kind index, the 12 query vectors), cached."""
    path = cache / (f"cutoff-pool-{seed}-{per_kind}.npz" if renderer == "independent" else f"cutoff-pool-{renderer}-{seed}-{per_kind}.npz")
    if path.exists():
        saved = np.load(path)
        return saved["images"], saved["kinds"], saved["queries"]
    if renderer == "independent":
        jobs = [(renderer, seed, kind, chunk, min(CHUNK, per_kind - chunk * CHUNK)) for kind in range(len(KINDS)) for chunk in range(-(-per_kind // CHUNK))]
    else:  # kinds at random: render 10% more than needed, then take per_kind of each
        jobs = [(renderer, seed, len(KINDS), chunk, CHUNK) for chunk in range(-(-int(1.1 * per_kind * len(KINDS)) // CHUNK))]
    started = time.perf_counter()
    with multiprocessing.get_context("spawn").Pool(workers) as workers_pool:
        parts = []
        for done, part in enumerate(workers_pool.imap(_embed_chunk, jobs), 1):
            parts.append(part)
            print(f"pool: {done}/{len(jobs)} chunks, {time.perf_counter() - started:.0f} s", file=sys.stderr, flush=True)
    images = np.concatenate([vectors for vectors, _ in parts]).astype(np.float32)
    kinds = np.concatenate([k for _, k in parts])
    taken = np.concatenate([np.flatnonzero(kinds == k)[:per_kind] for k in range(len(KINDS))])
    if len(taken) < per_kind * len(KINDS):
        raise SystemExit(f"too few scenes of some kind: {np.bincount(kinds, minlength=len(KINDS))}; use another --seed")
    images, kinds = images[taken], kinds[taken]
    queries = _encoder().encode_texts([f"a {c} {s}" for c, s in KINDS]).astype(np.float32)
    cache.mkdir(parents=True, exist_ok=True)
    np.savez(path, images=images, kinds=kinds, queries=queries)
    return images, kinds, queries


def _scores(prf_of: list, kept: np.ndarray, truth: np.ndarray, scores: np.ndarray) -> None:
    tp = int((kept & truth).sum())
    relevant, returned = int(truth.sum()), int(kept.sum())
    precision = tp / returned if returned else (1.0 if relevant == 0 else 0.0)
    recall = tp / relevant if relevant else 1.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    prf_of.append((precision, recall, f1, _best_f1(scores, truth), returned))


def _best_f1(scores: np.ndarray, truth: np.ndarray) -> float:
    """The F1 of the best threshold: keep the top j for the best j."""
    if not truth.any():
        return 1.0
    order = np.argsort(-scores, kind="stable")
    tp = np.cumsum(truth[order])
    j = np.arange(1, len(scores) + 1)
    return float((2 * tp / (j + truth.sum())).max())


def evaluate(images: np.ndarray, kinds: np.ndarray, queries: np.ndarray, size: int, seed: int, cutoff) -> dict:
    rng = np.random.default_rng([seed, size])
    by_kind = [np.flatnonzero(kinds == k) for k in range(len(KINDS))]
    rows: dict[str, list] = {}

    def run(name: str, query: np.ndarray, positives: np.ndarray, negatives: np.ndarray) -> None:
        picked = np.concatenate([negatives, positives])
        scores = (images[picked] @ query.T).reshape(len(picked), -1).max(axis=1)  # several queries: the best of them
        truth = np.r_[np.zeros(len(negatives), bool), np.ones(len(positives), bool)]
        _scores(rows.setdefault(name, []), cutoff(scores).relevant(scores), truth, scores)

    for q in range(len(KINDS)):
        others = np.concatenate([by_kind[k] for k in range(len(KINDS)) if k != q])
        for prevalence in PREVALENCES:
            k = max(1, round(prevalence * size))
            run(f"{prevalence:.2%}", queries[q], rng.choice(by_kind[q], k, replace=False), rng.choice(others, size - k, replace=False))
        run("one", queries[q], rng.choice(by_kind[q], 1), rng.choice(others, size - 1, replace=False))
        run("absent", queries[q], by_kind[q][:0], rng.choice(others, size, replace=False))
        # two groups: this kind and the kind of the other colour and shape three steps on, 1% each
        other = (q + 4) % len(KINDS)
        both = queries[q] + queries[other]
        k = round(0.01 * size)
        rest = np.concatenate([by_kind[j] for j in range(len(KINDS)) if j not in (q, other)])
        positives = np.concatenate([rng.choice(by_kind[q], k, replace=False), rng.choice(by_kind[other], k, replace=False)])
        negatives = rng.choice(rest, size - 2 * k, replace=False)
        run("two groups", both / np.linalg.norm(both), positives, negatives)
        run("either kind", np.stack([queries[q], queries[other]]), positives, negatives)
    table = {}
    for name, values in rows.items():
        a = np.array(values)
        table[name] = {
            "precision": round(float(a[:, 0].mean()), 3), "recall": round(float(a[:, 1].mean()), 3),
            "f1": round(float(a[:, 2].mean()), 3), "worst_f1": round(float(a[:, 2].min()), 3),
            "best_f1": round(float(a[:, 3].mean()), 3), "returned_nothing": round(float((a[:, 4] == 0).mean()), 3),
        }
    return table


def timing(cutoff, n: int = 1_000_000, rounds: int = 5) -> list[float]:
    """Seconds of one cut-off on n scores (a bulk and 0.1% relevant), per round."""
    rng = np.random.default_rng(0)
    scores = np.r_[rng.normal(0.25, 0.08, n - n // 1000), rng.normal(0.7, 0.03, n // 1000)].astype(np.float32)
    out = []
    for _ in range(rounds):
        started = time.perf_counter()
        cutoff(scores)
        out.append(round(time.perf_counter() - started, 4))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--renderer", choices=("training", "independent"), default="training",
                        help="training: held-out scenes from the renderer the model learnt (make_shapes.py, a new seed); "
                             "independent: scripts/render_eval_shapes.py's other drawing, sizes and backgrounds (the model's generalisation is tested too)")
    parser.add_argument("--seed", type=int, default=27002)
    parser.add_argument("--sizes", type=int, nargs="+", default=[5000, 50000])
    parser.add_argument("--per-kind", type=int, default=None, help="scenes rendered per kind (default: enough for 20%% of the largest size)")
    parser.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "searchlite-eval")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    from searchlite.query.relevance import cutoff

    per_kind = args.per_kind or round(0.2 * max(args.sizes))
    images, kinds, queries = pool(args.renderer, args.seed, per_kind, args.cache, args.workers)
    report = {"renderer": args.renderer, "seed": args.seed, "per_kind": per_kind, "sizes": {}}
    for size in args.sizes:
        report["sizes"][size] = evaluate(images, kinds, queries, size, args.seed, cutoff)
    report["seconds_on_1M_scores"] = timing(cutoff)
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
