"""Failures as a user sees them: one line on stderr, `searchlite: error: ...`, with the flag that
fixes a library error (when the running command has it), and an exit status: 1 for a failure, 2
for a flag given a value it does not take, 130 when interrupted."""

from __future__ import annotations

import importlib
import logging
import os
import re
import shlex
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import typer

from ..server.settings import TOKEN_ENV


def _click() -> Any:
    """The click that runs our commands: typer 0.2x carries its own copy (typer._click)."""
    try:
        name = importlib.import_module("typer._click").__name__
    except ImportError:  # older typer runs on click itself
        name = "click"
    for sub in ("exceptions", "globals", "types"):  # the submodules used by name
        importlib.import_module(f"{name}.{sub}")
    return importlib.import_module(name)


click = _click()

# The flag a library error's `setting` is changed with on the command line
_HINTS = {
    "index_dir": "run `searchlite index FOLDER --index {index_dir}` first, or pass --index DIR (or set SEARCHLITE_INDEX) for another index",
    "max_megapixels": "raise the limit with --max-megapixels",
    "pretrained": "pass the weights with --pretrained TAG|hf-hub:ID|CHECKPOINT",
    "weights": "run once with network to cache them, pass a local checkpoint with --pretrained CHECKPOINT, or try searchlite "
    "offline with --model searchlite-shapes (a demo model that knows four colours and three shapes)",
    "model": "drop --model/--pretrained to use the index's model, or pass --index NEW_DIR to build a separate index with this one",
    "device": "pass --device cpu",
    "precision": "use --precision auto|fp32|int8|bf16|fp16",
    "token": f"pass --token SECRET (or set {TOKEN_ENV})",
    "labels": "e.g. --labels cat,dog,car",
    "probe": "make one with `searchlite probe train`",
    "query": 'e.g. searchlite query "a dog on grass", or --image PHOTO',
    "ray": "e.g. --ray auto, --ray ray://HOST:10001 or --ray HOST:6379",
}
# for commands that lack the flags a hint names: advice that works from any command
_FALLBACK_HINTS = {
    "pretrained": "give the weights once with `searchlite index FOLDER --pretrained TAG|hf-hub:ID|CHECKPOINT`",
    "weights": "run once with network to cache them, or try searchlite offline on a new index: "
    "`searchlite index FOLDER --index NEW_DIR --model searchlite-shapes` (a demo model that knows four colours and three shapes)",
    "model": "a separate index is built with `searchlite index FOLDER --index NEW_DIR --model MODEL --pretrained WEIGHTS`",
}


class FlagError(click.exceptions.UsageError):
    """A flag given a value it does not take: one line and exit status 2, not click's usage block."""

    def show(self, file: Any = None) -> None:
        typer.echo(error_line(self.message), err=True)


def fail(message: str, code: int = 1) -> typer.Exit:
    """Say message as the error line; the Exit to raise with status code."""
    typer.echo(f"searchlite: error: {message}", err=True)
    return typer.Exit(code)


def error_line(message: object, hint: str | None = None) -> str:
    """One line on stderr, whatever the message holds."""
    text = " ".join(str(message).split())
    return f"searchlite: error: {text}" + (f"; {hint}" if hint else "")


def printable(path: str) -> str:
    """A path for a message: bytes that are not UTF-8 as \\x escapes."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def _hint(setting: str | None) -> str | None:
    """The flag hint for an error's setting, if the running command has the flags it names (a
    command never advises a flag it lacks)."""
    hint = _HINTS.get(setting or "")
    ctx = click.globals.get_current_context(silent=True)
    if hint is None or ctx is None:
        return hint
    flags = {opt for param in ctx.command.params for opt in getattr(param, "opts", ())}
    named = set(re.findall(r"--[a-z][a-z-]*", re.sub(r"`[^`]*`", "", hint)))  # outside `commands`
    return hint if named <= flags else _FALLBACK_HINTS.get(setting or "")


@contextmanager
def user_errors() -> Iterator[None]:
    """Every failure as one line on stderr and exit status 1 (130 when interrupted): library
    errors with the flag hint for their setting; an OSError the library did not expect naming its
    file; anything else as a bug to report (its traceback only with --verbose)."""
    from ..errors import SearchliteError, os_advice, os_reason

    try:
        yield
    except SearchliteError as e:
        hint = _hint(e.setting)
        if hint is not None:  # the index an error is about, as its --index value
            where = getattr(e, "index_dir", None)
            hint = hint.replace("{index_dir}", shlex.quote(printable(str(where))) if where is not None else "DIR")
        # a flag hint replaces the advice the library gave in values, where it gives it apart
        typer.echo(error_line(e.problem if hint else e, hint), err=True)
        raise typer.Exit(1) from None
    except KeyboardInterrupt as e:
        # an interruption that knows what it saved says so (train: which checkpoint, if any)
        message = str(e) or "interrupted; what was done is saved: run the same command again to resume"
        typer.echo(f"searchlite: {message}", err=True)
        raise typer.Exit(130) from None
    except (typer.Exit, typer.Abort, click.exceptions.ClickException):  # typer's own exits and usage errors
        raise
    except OSError as e:
        _log_traceback()
        where = f"{os.fsdecode(e.filename)}: " if e.filename is not None else ""
        typer.echo(error_line(f"{where}{os_reason(e)}; {os_advice(e, writing=False)}"), err=True)
        raise typer.Exit(1) from None
    except Exception as e:  # noqa: BLE001 - the last line of defence: never a traceback by default
        _log_traceback()
        typer.echo(
            error_line(f"unexpected {type(e).__name__}: {e}; this is a bug: please report it (run again with -v for details)"),
            err=True,
        )
        raise typer.Exit(1) from None


def _log_traceback() -> None:
    """The traceback of the exception being handled, on stderr with --verbose only."""
    if logging.getLogger("searchlite").isEnabledFor(logging.INFO):  # what --verbose sets
        import traceback

        traceback.print_exc(file=sys.stderr)
