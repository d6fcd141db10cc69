"""What the commands write: results to stdout as bytes, progress bars on stderr."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any


def write(lines: Iterable[bytes]) -> None:
    """Results to stdout as bytes (paths are written exactly as the OS has them)."""
    out = sys.stdout.buffer
    try:
        for line in lines:
            out.write(line)
        out.flush()
    except BrokenPipeError:  # `searchlite query ... | head -1`: the reader has all it wants
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


@contextmanager
def progress_bar(description: str, unit: str = "file") -> Iterator[Any]:
    """A tqdm bar on stderr (only when it is a terminal), created once the total is known;
    a third argument, when given, is shown as the loss."""
    from tqdm import tqdm

    bar: list[tqdm] = []

    def update(done: int, total: int, loss: float | None = None) -> None:
        if not bar:
            bar.append(tqdm(total=total, initial=done - 1, desc=description, unit=unit, file=sys.stderr, disable=None))
        if loss is not None:
            bar[0].set_postfix(loss=f"{loss:.3f}", refresh=False)
        bar[0].update(done - bar[0].n)

    try:
        yield update
    finally:
        if bar:
            bar[0].close()


@contextmanager
def stage_bars() -> Iterator[Any]:
    """progress(stage, done, total): one tqdm bar per stage on stderr (on a terminal)."""
    from tqdm import tqdm

    bars: dict[str, Any] = {}

    def update(stage: str, done: int, total: int) -> None:
        if stage not in bars:
            bars[stage] = tqdm(total=total, desc=stage, file=sys.stderr, disable=None)
        bars[stage].update(done - bars[stage].n)

    try:
        yield update
    finally:
        for bar in bars.values():
            bar.close()
