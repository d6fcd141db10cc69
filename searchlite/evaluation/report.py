"""What `searchlite eval` found, as plain data (to_json) and as tables to read (tables)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from .metrics import ProbePoint, RetrievalScores, ZeroShotScores


@dataclass(frozen=True)
class ClassificationReport:
    """Zero-shot scores per template set and the few-shot probe curve on one labelled folder."""

    folder: str
    classes: tuple[str, ...]
    counts: dict[str, int]  # readable images per class
    zero_shot: tuple[ZeroShotScores, ...]
    probe: tuple[ProbePoint, ...]
    draws: int
    left_out_shots: tuple[int, ...] = ()  # default shot counts with too few images to draw

    @property
    def images(self) -> int:
        return sum(self.counts.values())

    def probe_wins_at(self) -> dict[str, int | None]:
        """Per template set: the fewest shots at which the probe's mean accuracy beats its
        zero-shot top-1 (None: no shot count measured does)."""
        return {zs.templates: next((p.shots for p in self.probe if p.mean > zs.top1), None) for zs in self.zero_shot}


@dataclass(frozen=True)
class EvalReport:
    """The whole evaluation. classification and retrieval are None when not asked for."""

    model: str
    seed: int
    classification: ClassificationReport | None
    retrieval: RetrievalScores | None
    from_index: int  # images whose stored embedding was reused
    encoded: int
    unreadable: tuple[tuple[str, str], ...] = ()  # (path, reason) of files left out

    def to_json(self) -> dict[str, Any]:
        """Everything measured, with plain values (all confusion matrices, every draw)."""
        out: dict[str, Any] = {
            "model": self.model,
            "seed": self.seed,
            "images_from_index": self.from_index,
            "images_encoded": self.encoded,
            "unreadable": [{"path": p, "error": e} for p, e in self.unreadable],
        }
        c = self.classification
        if c is not None:
            out["classification"] = {
                "folder": c.folder,
                "classes": list(c.classes),
                "counts": c.counts,
                "images": c.images,
                "zero_shot": [
                    {
                        "templates": zs.templates,
                        "template_count": zs.template_count,
                        "top1": _r(zs.top1),
                        "top5": None if zs.top5 is None else _r(zs.top5),
                        "per_class": {k: _r(v) for k, v in zs.per_class.items()},
                        "confusion": [list(row) for row in zs.confusion],
                        "most_confused": [
                            {"true": t, "predicted": p, "images": n} for t, p, n in zs.most_confused(c.classes, n=len(c.classes) ** 2)
                        ],
                    }
                    for zs in c.zero_shot
                ],
                "probe": {
                    "draws": c.draws,
                    "points": [
                        {
                            "shots": p.shots,
                            "mean": _r(p.mean),
                            "std": _r(p.std),
                            "min": _r(min(p.accuracies)),
                            "max": _r(max(p.accuracies)),
                            "accuracies": [_r(a) for a in p.accuracies],
                        }
                        for p in c.probe
                    ],
                    "left_out_shots": list(c.left_out_shots),
                    "beats_zero_shot_at": c.probe_wins_at(),
                },
            }
        if self.retrieval is not None:
            r = self.retrieval
            out["retrieval"] = {
                "images": r.images,
                "captions": r.captions,
                "text_to_image": {f"R@{k}": _r(v) for k, v in r.text_to_image.items()},
                "image_to_text": {f"R@{k}": _r(v) for k, v in r.image_to_text.items()},
            }
        return out

    def tables(self) -> str:
        """The results as aligned tables for a person."""
        blocks = []
        c = self.classification
        if c is not None:
            blocks.append(_zero_shot_tables(c))
            if c.probe:
                blocks.append(_probe_table(c))
        if self.retrieval is not None:
            blocks.append(_retrieval_table(self.retrieval))
        return "\n".join(blocks)


def _shown(templates: str) -> str:
    """A template file by its name only (the tables stay narrow; JSON keeps the path)."""
    return os.path.basename(templates) or templates


def _r(x: float) -> float:
    return round(float(x), 4)


def _table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(cell)) for cell in col) for col in zip(header, *rows)]
    line = lambda cells: "  ".join(f"{cell:<{w}}" for cell, w in zip(cells, widths)).rstrip()  # noqa: E731
    return "\n".join([line(header), *(line(row) for row in rows)]) + "\n"


def _zero_shot_tables(c: ClassificationReport) -> str:
    top5 = any(zs.top5 is not None for zs in c.zero_shot)
    header = ["templates", "prompts", "top-1"] + (["top-5"] if top5 else [])
    rows = [
        [_shown(zs.templates), str(zs.template_count), f"{zs.top1:.3f}"] + ([f"{zs.top5:.3f}"] if top5 and zs.top5 is not None else [])
        for zs in c.zero_shot
    ]
    out = f"zero-shot: {c.images} images in {len(c.classes)} classes ({c.folder})\n" + _table(header, rows)
    per_class = [[name, str(c.counts[name])] + [f"{zs.per_class.get(name, 0.0):.3f}" for zs in c.zero_shot] for name in c.classes]
    out += "\nper-class accuracy\n" + _table(["class", "images"] + [_shown(zs.templates) for zs in c.zero_shot], per_class)
    for zs in c.zero_shot:
        pairs = zs.most_confused(c.classes)
        text = ", ".join(f"{t} -> {p} ({n})" for t, p, n in pairs) or "none"
        out += f"most confused ({_shown(zs.templates)}): {text}\n"
    return out


def _probe_table(c: ClassificationReport) -> str:
    rows = [
        [str(p.shots), f"{p.mean:.3f}", f"{p.std:.3f}", f"{min(p.accuracies):.3f}", f"{max(p.accuracies):.3f}"]
        for p in c.probe
    ]
    out = f"few-shot linear probe: {c.draws} random draws per shot count, accuracy on the images not drawn\n"
    out += _table(["shots", "mean", "std", "min", "max"], rows)
    if c.left_out_shots:
        out += f"left out: {', '.join(map(str, c.left_out_shots))} shots (a class has too few images to draw them and keep one to test)\n"
    for name, shots in c.probe_wins_at().items():
        top1 = next(zs.top1 for zs in c.zero_shot if zs.templates == name)
        verdict = f"from {shots} shots per class" if shots else "at no shot count measured"
        out += f"the probe beats zero-shot ({_shown(name)}, {top1:.3f}) {verdict}\n"
    return out


def _retrieval_table(r: RetrievalScores) -> str:
    ks = sorted(r.text_to_image)
    rows = [
        ["text -> image"] + [f"{r.text_to_image[k]:.3f}" for k in ks],
        ["image -> text"] + [f"{r.image_to_text[k]:.3f}" for k in ks],
    ]
    return f"retrieval: {r.images} images, {r.captions} captions\n" + _table(["direction"] + [f"R@{k}" for k in ks], rows)
