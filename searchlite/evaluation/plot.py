"""The CLIP paper's figure for one labelled folder (matplotlib, an optional extra): probe accuracy
against shots per class, zero-shot as a horizontal line per template set; beside it the
confusion matrix of the best template set."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np

from ..errors import SearchliteError, file_error
from ..storage.atomic_file import write_atomic
from .report import ClassificationReport

MISSING = "drawing plots needs matplotlib: pip install 'searchlite[eval]'"


def check_available() -> None:
    """Raise SearchliteError naming the pip command when matplotlib is not installed."""
    import importlib.util

    if importlib.util.find_spec("matplotlib") is None:
        raise SearchliteError(MISSING)


def write_png(report: ClassificationReport, model: str, path: str | os.PathLike[str]) -> None:
    """Draw the figure and write it atomically as a PNG."""
    check_available()
    from matplotlib.figure import Figure  # no pyplot: no global backend or figure state is touched

    fig = Figure(figsize=(11, 4.4), dpi=90)
    curve, matrix = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1.15, 1]})
    _draw_curve(curve, report)
    _draw_confusion(matrix, report)
    fig.suptitle(f"{_short(model)}: {report.images} images, {len(report.classes)} classes", fontsize=10)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})  # no version stamp: same data, same bytes
    try:
        write_atomic(Path(path), buf.getvalue())
    except OSError as e:
        raise file_error(path, e, writing=True, what="plot") from None


def _short(model: str) -> str:
    """A model's description with a checkpoint named by its file name only."""
    import re

    return re.sub(r"checkpoint (?:\S*/)?(\S+) \(sha256 \w+\)", r"\1", model)


def _draw_curve(ax, report: ClassificationReport) -> None:  # noqa: ANN001 - a matplotlib Axes
    colours = ["tab:red", "tab:green", "tab:purple", "tab:orange", "tab:brown", "tab:pink"]
    if report.probe:
        shots = [p.shots for p in report.probe]
        mean = np.array([p.mean for p in report.probe])
        std = np.array([p.std for p in report.probe])
        ax.plot(shots, mean, "o-", color="tab:blue", label=f"linear probe (mean of {report.draws} draws)")
        ax.fill_between(shots, mean - std, mean + std, color="tab:blue", alpha=0.2, label="± 1 std")
        ax.set_xscale("log", base=2)
        ax.set_xticks(shots, [str(s) for s in shots])
    for zs, colour in zip(report.zero_shot, colours * 4):
        prompts = f"{zs.template_count} prompt" + ("s" if zs.template_count != 1 else "")
        ax.axhline(zs.top1, linestyle="--", color=colour, label=f"zero-shot, {os.path.basename(zs.templates)} ({prompts})")
    ax.set_xlabel("training images per class (shots)")
    ax.set_ylabel("top-1 accuracy")
    # zoomed to the data (in steps of 0.1), so that close curves stay apart
    lowest = min([zs.top1 for zs in report.zero_shot] + [p.mean - p.std for p in report.probe])
    ax.set_ylim(max(0.0, np.floor(lowest * 10 - 0.5) / 10), 1.01)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    ax.set_title("few-shot probe vs zero-shot", fontsize=10)


def _draw_confusion(ax, report: ClassificationReport) -> None:  # noqa: ANN001
    best = max(report.zero_shot, key=lambda zs: zs.top1)
    counts = np.array(best.confusion, dtype=float)
    rates = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    n = len(report.classes)
    ax.set_xticks(range(n), report.classes, rotation=45 if n > 4 else 0, ha="right" if n > 4 else "center", fontsize=8)
    ax.set_yticks(range(n), report.classes, fontsize=8)
    if n <= 15:
        for i in range(n):
            for j in range(n):
                if counts[i, j]:
                    ax.text(j, i, str(int(counts[i, j])), ha="center", va="center", fontsize=7, color="white" if rates[i, j] > 0.6 else "black")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true class")
    ax.set_title(f"zero-shot confusion ({best.templates}, top-1 {best.top1:.3f})", fontsize=10)
