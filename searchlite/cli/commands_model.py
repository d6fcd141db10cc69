"""Commands about a model itself: eval (how well it does on your photos) and train."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from ..output import json_line
from .console import progress_bar, stage_bars, write
from .opening import open_for_model
from .options import DeviceOpt, IndexOpt, OwnPretrainedOpt, model_option, pretrained_option
from .user_errors import fail, printable, user_errors


def eval_(
    folder: Annotated[
        Optional[Path], typer.Argument(metavar="[LABELLED_DIR]", help="One subfolder of images per class (its name is the label).", show_default=False)
    ] = None,
    captions: Annotated[Optional[Path], typer.Option(metavar="PAIRS.csv", help="image,caption rows for text<->image recall@1/5/10.", show_default=False)] = None,
    templates: Annotated[
        str, typer.Option(metavar="single,imagenet,FILE...", help="Template sets to compare for zero-shot (comma-separated).")
    ] = "single,imagenet",
    shots: Annotated[
        Optional[str], typer.Option(metavar="1,2,4,8,16", help="Training images per class for the linear probe. [default: 1,2,4,8,16, those that fit]", show_default=False)
    ] = None,
    draws: Annotated[int, typer.Option(min=1, metavar="N", help="Random draws of training images per shot count.")] = 5,
    seed: Annotated[int, typer.Option(metavar="N", help="Seed of the draws (same seed, same numbers).")] = 0,
    plot: Annotated[Optional[Path], typer.Option(metavar="OUT.png", help="Draw the probe curve and the confusion matrix (needs matplotlib).", show_default=False)] = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object with everything measured.")] = False,
    index: IndexOpt = None,
    model: Annotated[
        Optional[str], model_option("Evaluate this model instead of the index's (no index needed). [default: the index's, else ViT-B-32-256]")
    ] = None,
    pretrained: OwnPretrainedOpt = None,
    device: DeviceOpt = None,
) -> None:
    """Evaluate a model on your labelled photos as the CLIP paper does: zero-shot accuracy per
    template set, few-shot linear-probe curve, and caption retrieval recall. Tables on stdout."""
    if folder is None and captions is None:
        raise fail("give a LABELLED_DIR (one subfolder of images per class), --captions PAIRS.csv, or both", 2)
    with user_errors(), open_for_model(index, model, pretrained, device) as engine, stage_bars() as progress:
        report = engine.evaluate(folder, captions=captions, templates=templates, shots=shots, draws=draws, seed=seed, plot=plot, progress=progress)
    typer.echo(f"evaluated {report.model}: {report.from_index} embeddings from the index, {report.encoded} images encoded", err=True)
    if plot is not None:
        typer.echo(f"wrote {printable(str(plot))}", err=True)
    if as_json:
        write([json_line(report.to_json())])
    else:
        write([report.tables().encode("utf-8", "backslashreplace")])


def train(
    data: Annotated[Path, typer.Argument(metavar="DATA", help="Folder of images with same-name .txt captions, or a .csv/.jsonl of image,caption.", show_default=False)],
    output: Annotated[Path, typer.Option("--output", "-o", metavar="CKPT", help="Where to write the trained weights (.pt or .safetensors).", show_default=False)],
    model: Annotated[Optional[str], model_option("Architecture. [default: ViT-B-32-256]")] = None,
    pretrained: Annotated[
        Optional[str],
        pretrained_option(
            "Start from these weights (fine-tuning) [default: random weights; the bundled searchlite-shapes starts from its shipped weights]"
        ),
    ] = None,
    epochs: Annotated[Optional[int], typer.Option(min=1, metavar="N", help="Passes over the data. [default: 1]")] = None,
    steps: Annotated[Optional[int], typer.Option(min=1, metavar="N", help="Optimizer steps (instead of --epochs).")] = None,
    batch_size: Annotated[int, typer.Option(min=2, metavar="N", help="Pairs per micro-batch.")] = 64,
    accumulate: Annotated[int, typer.Option(min=1, metavar="N", help="Micro-batches per optimizer step.")] = 1,
    lr: Annotated[float, typer.Option(min=0.0, help="Peak learning rate (AdamW, warmup then cosine decay).")] = 5e-4,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing output file.")] = False,
    device: DeviceOpt = None,
) -> None:
    """Contrastive training or fine-tuning on image-caption pairs; resumes an interrupted run.
    A checkpoint is saved every 500 steps beside the output (OUT.train-state)."""
    from ..errors import OutputExistsError
    from ..train.training import TrainInterrupted, TrainSettings, train_from_flags

    if epochs and steps:
        raise fail("give --epochs or --steps, not both", 2)
    settings = TrainSettings(epochs=epochs, steps=steps, batch_size=batch_size, accumulate=accumulate, lr=lr)
    with user_errors(), progress_bar("training", unit="step") as progress:
        try:
            report = train_from_flags(
                data, output, model=model, pretrained=pretrained, device=device, settings=settings, progress=progress, overwrite=overwrite
            )
        except OutputExistsError as e:  # the library speaks of overwrite=True; here it is a flag
            raise fail(f"output {e.path} already exists: give another --output, or pass --overwrite to replace it") from None
        except TrainInterrupted as e:
            if e.checkpoint is not None:  # the library says "the same training"; here it is this command
                saved = f"the checkpoint of step {e.saved_step} is saved" if e.saved_step else "an earlier run's checkpoint is kept"
                raise KeyboardInterrupt(f"interrupted; {saved} in {e.checkpoint}: run the same command again to resume from it") from None
            raise
    typer.echo(
        f"wrote {output}: {report.steps} steps over {report.pairs} pairs in {report.seconds:.0f}s of training "
        f"(+{report.load_seconds:.0f}s loading the data and model), "
        f"loss {report.first_loss:.3f} -> {report.last_loss:.3f}; use it with --pretrained {output}",
        err=True,
    )
