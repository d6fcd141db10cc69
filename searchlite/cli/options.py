"""Options more than one command takes, declared once, and Choice: a flag that takes one of a
fixed set of values, refused with one line before any work is done."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from ..config import INDEX_ENV
from .user_errors import FlagError, click

MODEL_METAVAR = "NAME|CONFIG.json"
PRETRAINED_METAVAR = "TAG|hf-hub:ID|CHECKPOINT"


class Choice(click.types.ParamType):
    """One of values; any other is a FlagError saying `unknown FLAG 'x': ` and advice (which may
    name the flag as {flag}), e.g. "give {flag} exact, near or similar"."""

    name = "choice"

    def __init__(self, values: Sequence[str], advice: str) -> None:
        self.values = tuple(values)
        self.advice = advice

    def convert(self, value: Any, param: Any, ctx: Any) -> str:
        if value in self.values:
            return value
        flag = param.opts[0] if param is not None and param.opts else "value"
        raise FlagError(f"unknown {flag} {value!r}: {self.advice.format(flag=flag)}", ctx=ctx)


def model_option(help: str) -> Any:
    """--model, with the help its command gives it."""
    return typer.Option(metavar=MODEL_METAVAR, help=help)


def pretrained_option(help: str) -> Any:
    """--pretrained, with the help its command gives it."""
    return typer.Option(metavar=PRETRAINED_METAVAR, help=help)


IndexOpt = Annotated[
    Optional[Path],
    typer.Option("--index", envvar=INDEX_ENV, metavar="DIR", help="Index folder [default: ./index]", show_default=False),
]
DeviceOpt = Annotated[Optional[str], typer.Option(metavar="DEVICE", help="torch device, e.g. cpu, cuda, cuda:1 [default: cuda when available]")]
JsonOpt = Annotated[bool, typer.Option("--json", help="One JSON object per line.")]
# the commands that can run on a model of their own instead of the index's (classify, explain, eval)
OwnPretrainedOpt = Annotated[Optional[str], pretrained_option("Its weights (with or without --model).")]
PathFilterOpt = Annotated[Optional[str], typer.Option("--path", metavar="DIR|GLOB", help="Only images under this folder, or matching this glob.")]
LabelsOpt = Annotated[str, typer.Option("--labels", metavar="A,B,C", help="Comma-separated labels.", show_default=False)]
TemplatesOpt = Annotated[
    Optional[str],
    typer.Option(metavar="single|imagenet|FILE", help='Prompt templates: "a photo of a {}.", the CLIP paper\'s 80 ImageNet templates, or a file of templates. [default: single]'),
]
ThresholdOpt = Annotated[
    float, typer.Option(min=0.0, max=1.0, help="Also tag an image with every label whose probability reaches this (its best label always).")
]
