"""Commands that put labels on images: classify, explain, tag, probe train/apply."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Optional

import typer

from ..output import json_line
from .console import write
from .opening import open_for_model, open_index
from .options import DeviceOpt, IndexOpt, JsonOpt, LabelsOpt, OwnPretrainedOpt, TemplatesOpt, ThresholdOpt, model_option
from .user_errors import printable, user_errors


def classify(
    files: Annotated[list[Path], typer.Argument(metavar="IMAGE...", help="Image files (indexed or not).", show_default=False)],
    labels: LabelsOpt,
    templates: TemplatesOpt = None,
    top: Annotated[int, typer.Option(min=1, metavar="N", help="Labels listed per file.")] = 3,
    as_json: JsonOpt = False,
    index: IndexOpt = None,
    model: Annotated[
        Optional[str], model_option("Classify with this model instead of the index's (no index needed). [default: the index's, else ViT-B-32-256]")
    ] = None,
    pretrained: OwnPretrainedOpt = None,
    device: DeviceOpt = None,
) -> None:
    """Zero-shot classify images: path<TAB>label<TAB>probability<TAB>runner-ups per file.
    Exits 1 when a file could not be read (the others are still classified)."""
    with user_errors(), open_for_model(index, model, pretrained, device) as engine:
        results = engine.classify(files, labels, templates)
    lines = []
    for r in results:
        if r.error:
            typer.echo(f"searchlite: error: {printable(r.error)}", err=True)
        if as_json:
            ranking = [{"label": label, "score": round(p, 6)} for label, p in r.ranking[:top]]
            obj = {"path": r.path, "label": r.label, "score": None if r.score is None else round(r.score, 6), "labels": ranking}
            lines.append(json_line(obj | ({"error": r.error} if r.error else {})))
        elif not r.error:
            others = ", ".join(f"{label} {p:.3f}" for label, p in r.ranking[1:top])
            lines.append(os.fsencode(r.path) + f"\t{r.label}\t{r.score:.4f}\t{others}\n".encode())
    write(lines)
    if any(r.error for r in results):
        raise typer.Exit(1)


def explain(
    image: Annotated[Path, typer.Argument(metavar="IMAGE", help="An image file (indexed or not).", show_default=False)],
    text: Annotated[str, typer.Argument(metavar="TEXT", help="What to look for in it.", show_default=False)],
    output: Annotated[Optional[Path], typer.Option("--output", "-o", metavar="PNG", help="Write the image overlaid with the heat map here.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the grid of scores and the peak as JSON.")] = False,
    index: IndexOpt = None,
    model: Annotated[
        Optional[str], model_option("Use this model instead of the index's (no index needed). [default: the index's, else ViT-B-32-256]")
    ] = None,
    pretrained: OwnPretrainedOpt = None,
    device: DeviceOpt = None,
) -> None:
    """Where TEXT matches in IMAGE: prints the peak as x<TAB>y (pixels of the oriented image),
    the grid of scores with --json, and writes a heat map with --output."""
    with user_errors(), open_for_model(index, model, pretrained, device) as engine:
        result = engine.explain(image, text, output=output)
    if as_json:
        write([json_line({"path": str(image), "text": text} | result.to_json())])
    else:
        write([f"{result.peak[0]:.0f}\t{result.peak[1]:.0f}\n".encode()])


def tag(
    labels: LabelsOpt,
    templates: TemplatesOpt = None,
    name: Annotated[str, typer.Option(help="Tag set name: a new label set under the same name replaces the old.")] = "tags",
    threshold: ThresholdOpt = 0.3,
    index: IndexOpt = None,
    device: DeviceOpt = None,
) -> None:
    """Tag the indexed images by zero-shot classification; later index runs tag new images too."""
    with user_errors(), open_index(index, device=device, create=False) as engine:
        tagged = engine.tag(labels, templates, name=name, threshold=threshold)
        counts = engine.info()["tags"]
    _say_tagged(tagged, counts)


probe_app = typer.Typer(help="Few-shot linear probes: train on labelled examples, tag the index.", no_args_is_help=True)


@probe_app.command("train")
def probe_train(
    folder: Annotated[Path, typer.Argument(metavar="DIR", help="One subfolder of example images per label.", show_default=False)],
    output: Annotated[Path, typer.Option("--output", "-o", metavar="FILE", help="Where to write the probe (.npz).", show_default=False)],
    index: IndexOpt = None,
    device: DeviceOpt = None,
) -> None:
    """Fit a logistic-regression probe on the index model's image embeddings."""
    with user_errors(), open_index(index, device=device, create=False) as engine:
        fitted = engine.train_probe(folder)
        engine.save_probe(fitted, output)
    accuracy = "n/a (too few examples)" if fitted.cv_accuracy is None else f"{fitted.cv_accuracy:.3f}"
    counts = ", ".join(f"{label}: {n}" for label, n in fitted.counts.items())
    typer.echo(f"wrote {output}: {len(fitted.counts)} labels ({counts}); {fitted.folds}-fold cross-validated accuracy {accuracy}", err=True)


@probe_app.command("apply")
def probe_apply(
    probe_file: Annotated[Path, typer.Argument(metavar="FILE", help="A probe from `searchlite probe train`.", show_default=False)],
    name: Annotated[Optional[str], typer.Option(help="Tag set name [default: the file's name]")] = None,
    threshold: ThresholdOpt = 0.3,
    index: IndexOpt = None,
) -> None:
    """Tag the indexed images with a probe, like `searchlite tag` does."""
    with user_errors(), open_index(index, create=False) as engine:
        tagged = engine.apply_probe(probe_file, name=name, threshold=threshold)
        counts = engine.info()["tags"]
    _say_tagged(tagged, counts)


def _say_tagged(tagged: int, counts: dict[str, int]) -> None:
    typer.echo(f"tagged {tagged} images; " + ", ".join(f"{label}: {n}" for label, n in counts.items()), err=True)
