"""The relevance cut-off on synthetic score distributions, one test per regime: nothing relevant,
one match, a few, groups from 1% to 20% of the images, two groups of matches, a middle group of
partial matches; the verdict's words; and the CLI saying why when nothing stands out."""

from __future__ import annotations

import math

import numpy as np

from searchlite.query.relevance import cutoff, fixed_cutoff


def scores(*groups: tuple[int, float, float], seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Scores of (count, mean, sd) groups, shuffled; and which belong to the last group."""
    rng = np.random.default_rng(seed)
    parts = [rng.normal(mean, sd, count) for count, mean, sd in groups]
    labels = np.concatenate([np.full(len(p), i == len(parts) - 1) for i, p in enumerate(parts)])
    order = rng.permutation(len(labels))
    return np.concatenate(parts)[order], labels[order]


def f1(kept: np.ndarray, truth: np.ndarray) -> float:
    tp = int((kept & truth).sum())
    return 0.0 if tp == 0 else 2 * tp / (int(kept.sum()) + int(truth.sum()))


def test_one_clear_cluster_is_kept() -> None:
    for seed in range(3):
        s, truth = scores((5000, 0.20, 0.03), (40, 0.34, 0.01), seed=seed)
        verdict = cutoff(s)
        assert f1(verdict.relevant(s), truth) >= 0.95, (seed, verdict)
        assert 0.24 < verdict.threshold < 0.34


def test_a_few_clear_matches_among_a_few_dozen_are_kept() -> None:
    # a filtered timeline: 5 photos of it among 48 (a camera, a few months)
    for seed in range(6):
        s, truth = scores((43, 0.30, 0.12), (5, 0.75, 0.012), seed=seed)
        verdict = cutoff(s)
        assert f1(verdict.relevant(s), truth) >= 0.9, (seed, verdict)


def test_scores_a_hair_apart_or_a_world_apart_get_a_verdict() -> None:
    rng = np.random.default_rng(0)
    for spread in (1e-7, 1e-5, 1e-4):  # float32 scores of near-identical pictures (FAISS gives float32)
        s = (0.3 + rng.uniform(0, spread, 100)).astype(np.float32)
        assert cutoff(s).judged == 100
    # a gap of dozens of standard deviations: no density is left at the cut, and the group is kept
    s, truth = scores((95, 0.2, 0.001), (5, 0.8, 0.001), seed=1)
    assert cutoff(s).relevant(s).tolist() == truth.tolist()


def test_nothing_stands_out_so_nothing_is_relevant() -> None:
    for seed in range(3):
        s, _ = scores((20000, 0.20, 0.03), seed=seed)
        verdict = cutoff(s)
        assert verdict.relevant(s).sum() <= 0.001 * len(s), (seed, verdict)
        assert "nothing stands out" in verdict.describe() or verdict.relevant(s).sum() == 0


def test_with_two_clusters_above_the_bulk_only_the_top_one_is_kept() -> None:
    # the bulk, a middle group sharing part of the query (right colour, wrong shape), the matches
    for seed in range(3):
        s, truth = scores((3000, 0.20, 0.04), (2500, 0.46, 0.05), (250, 0.75, 0.02), seed=seed)
        verdict = cutoff(s)
        assert f1(verdict.relevant(s), truth) >= 0.97, (seed, verdict)


def library(relevant: int, n: int = 5000, seed: int = 0, top: tuple[float, float] = (0.75, 0.02)) -> tuple[np.ndarray, np.ndarray]:
    """Scores shaped like the bundled model's: a bulk, partial matches (the right colour or the right
    shape: 4 kinds of the other 11, 40% of the images), their thin tail of near misses, and the
    matches at the top."""
    partial, misses = int(0.4 * n), n // 100
    return scores((n - relevant - partial - misses, 0.20, 0.05), (partial, 0.46, 0.03), (misses, 0.58, 0.04), (relevant, *top), seed=seed)


def test_nothing_relevant_beside_partial_matches_keeps_nothing_and_says_why() -> None:
    for seed in range(4):
        s, _ = library(0, seed=seed)
        verdict = cutoff(s)
        assert verdict.kept == 0 and verdict.threshold == math.inf, (seed, verdict)
        words = verdict.summary()
        assert words.startswith(f"nothing stands out: best {s.max():.2f}, the other 4,999 around") and "--min-score" in words, words


def test_one_match_and_a_few_beyond_the_bulk_are_kept() -> None:
    for seed in range(3):
        s, truth = scores((5000, 0.20, 0.05), (1, 0.60, 0.01), seed=seed)  # one far beyond a plain bulk
        verdict = cutoff(s)
        assert verdict.relevant(s).tolist() == truth.tolist(), (seed, verdict)
        assert verdict.summary() == f"1 of 5,001 stand out (score >= {verdict.threshold:.3f})"
        s, truth = library(10, seed=seed, top=(0.80, 0.01))  # ten beyond the near misses
        assert f1(cutoff(s).relevant(s), truth) >= 0.9, seed


def test_groups_from_one_to_twenty_percent_are_kept_and_a_third_is_taken_for_the_bulk() -> None:
    for share in (0.01, 0.05, 0.2):
        s, truth = library(int(share * 5000), seed=7)
        verdict = cutoff(s)
        assert f1(verdict.relevant(s), truth) >= 0.9, (share, verdict)
    # a clump of a third at the top is what a query the model cannot place gives: not a group of matches
    s, _ = scores((3300, 0.20, 0.05), (1700, 0.60, 0.03), seed=7)
    assert cutoff(s).kept == 0


def test_a_fifth_whose_tail_is_a_wide_component_reaching_past_it_is_kept() -> None:
    # the mixture models such a group with a tight core and a wide component whose tail, not the
    # core's, holds the very best scores: it is still the top group (most of what lies above the cut)
    for seed in range(4):
        s, truth = scores((25000, 0.42, 0.03), (8000, 0.50, 0.04), (1200, 0.62, 0.07), (10000, 0.75, 0.02), seed=seed)
        truth |= s > 0.70
        verdict = cutoff(s)
        assert f1(verdict.relevant(s), truth) >= 0.95, (seed, verdict)


def test_two_groups_of_matches_are_both_kept() -> None:
    # a query matching two kinds of picture, one a little better than the other
    s, truth = scores((4000, 0.20, 0.05), (900, 0.46, 0.03), (60, 0.71, 0.015), (60, 0.77, 0.015), seed=3)
    truth = s >= 0.65
    verdict = cutoff(s)
    assert f1(verdict.relevant(s), truth) >= 0.95, verdict


def test_the_cut_off_moves_with_the_query_where_a_constant_would_fail() -> None:
    low, low_truth = scores((5000, 0.10, 0.02), (60, 0.19, 0.01), seed=1)
    high, high_truth = scores((5000, 0.25, 0.02), (60, 0.34, 0.01), seed=2)
    low_cut, high_cut = cutoff(low), cutoff(high)
    assert f1(low_cut.relevant(low), low_truth) >= 0.9 and f1(high_cut.relevant(high), high_truth) >= 0.9
    assert f1(high >= low_cut.threshold, high_truth) < 0.1 and f1(low >= high_cut.threshold, low_truth) == 0  # neither cut fits the other


def test_few_scores_keep_everything_and_min_score_overrides() -> None:
    verdict = cutoff(np.array([0.1, 0.2, 0.3]))
    assert verdict.threshold == -math.inf and verdict.relevant(np.array([0.1])).all()
    for n in (100, 5000):  # all alike: none stands out
        assert cutoff(np.full(n, 0.3)).relevant(np.full(n, 0.3)).sum() == 0
    assert fixed_cutoff(0.25).relevant(np.array([0.2, 0.25, 0.3])).tolist() == [False, True, True]


def test_sort_date_returns_the_relevant_scenes_in_date_order(tmp_path) -> None:
    """With the bundled shapes model on fresh scenes: `query TEXT --sort date` returns the scenes
    showing that colour and shape (not a top-k), oldest first; --all marks every scene."""
    import json
    import os

    from typer.testing import CliRunner

    from searchlite import SearchEngine
    from searchlite.cli import app
    from tests.conftest import load_script

    scenes = load_script("render_eval_shapes").write(tmp_path / "scenes", 150, seed=23)
    paths = sorted((tmp_path / "scenes").iterdir())
    for i, path in enumerate(paths):  # capture times from file times: scene i taken on day i, in reverse order
        t = (1_700_000_000 - 86_400 * i) * 10**9
        os.utime(path, ns=(t, t))
    wanted = {str(p) for p, s in zip(paths, scenes) if s.objects[0] == ("red", "circle")}
    with SearchEngine.open(tmp_path / "index", model="searchlite-shapes") as engine:
        engine.index(tmp_path / "scenes")
        hits = engine.search("a red circle", sort="date")
        got = {h.path for h in hits}
        assert len(got & wanted) >= 0.8 * len(wanted) and len(got & wanted) >= 0.9 * len(got), (len(got), len(wanted), len(got & wanted))
        assert [h.taken_at for h in hits] == sorted(h.taken_at for h in hits)
        newest = engine.search("a red circle", sort="-date")
        assert [h.path for h in newest] == [h.path for h in hits][::-1]
        assert [h.path for h in engine.search("a red circle", sort="date", min_score=-1.0)] == [
            h.path for h in engine.search(sort="date")
        ]  # a cut-off below every score keeps every scene
    result = CliRunner().invoke(app, ["query", "a red circle", "--all", "--json", "--index", str(tmp_path / "index")])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(rows) == 150 and {r["path"] for r in rows if r["relevant"]} == got
    assert [r["score"] for r in rows] == sorted((r["score"] for r in rows), reverse=True)


def test_an_empty_answer_says_why_and_explain_cutoff_says_how(tmp_path) -> None:
    """`query TEXT --sort date` for a kind the folder lacks prints no hit and says on stderr that
    nothing stands out, with the figures; --explain-cutoff says how many stood out and why."""
    from typer.testing import CliRunner

    from searchlite.cli import app
    from tests.conftest import load_script

    scenes = load_script("render_eval_shapes").write(tmp_path / "scenes", 150, seed=29)
    for i, scene in enumerate(scenes):
        if scene.objects[0] == ("yellow", "triangle"):
            (tmp_path / "scenes" / f"{i:05d}.jpg").unlink()
    left = len(list((tmp_path / "scenes").iterdir()))
    index = ["--index", str(tmp_path / "index")]
    assert CliRunner().invoke(app, ["index", str(tmp_path / "scenes"), "--model", "searchlite-shapes", *index]).exit_code == 0
    result = CliRunner().invoke(app, ["query", "a yellow triangle", "--sort", "date", *index])
    assert result.exit_code == 0 and result.stdout == "", result.output
    assert result.stderr.startswith(f"searchlite: nothing stands out: best 0.") and f"the other {left - 1} around" in result.stderr, result.stderr
    assert "use --min-score 0." in result.stderr and result.stderr.count("\n") == 1
    explained = CliRunner().invoke(app, ["query", "a red circle", "--sort", "date", "--explain-cutoff", *index])
    assert explained.exit_code == 0, explained.output
    kept = len(explained.stdout.splitlines())
    assert kept and explained.stderr.startswith(f"searchlite: {kept} of {left} stand out (score >= 0."), explained.stderr
    assert "; " in explained.stderr  # and how the threshold was chosen
    for sort in (["--sort", "date"], []):  # filters that leave nothing to judge say so too
        filtered = CliRunner().invoke(app, ["query", "a red circle", "--after", "2099", *sort, *index])
        assert filtered.exit_code == 0 and filtered.stdout == "", filtered.output
        assert filtered.stderr == "searchlite: no indexed file matches the filters\n"
