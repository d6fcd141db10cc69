"""The Typer app: every command registered in the order --help lists them, the global
--verbose, and main(), the console script."""

from __future__ import annotations

import logging
import os
import sys
import warnings
from typing import Annotated

import typer

from . import commands_classify, commands_index, commands_info, commands_model, commands_search, commands_serve

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    rich_markup_mode=None,
    help="Semantic image search over your photos, built on CLIP.",
)

app.command()(commands_index.index)
app.command()(commands_search.query)
app.command()(commands_search.duplicates)
app.command()(commands_info.info)
app.command()(commands_index.optimize)
app.command("export")(commands_index.export_)
app.command("import")(commands_index.import_)
app.command()(commands_classify.classify)
app.command()(commands_classify.explain)
app.command()(commands_classify.tag)
app.add_typer(commands_classify.probe_app, name="probe")
app.command("eval")(commands_model.eval_)
app.command()(commands_model.train)
app.command()(commands_serve.serve)
app.command()(commands_serve.mcp)


@app.callback()
def _main(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log what happens to stderr.")] = False,
) -> None:
    _configure_logging(verbose)
    if not verbose:  # Pillow warns about odd files it still reads; the verdicts say what matters
        warnings.filterwarnings("ignore", module="PIL")


def _configure_logging(verbose: bool) -> None:
    """Our messages as `searchlite: ...` lines on stderr; other libraries' only with --verbose."""
    ours = logging.getLogger("searchlite")
    for handler in list(ours.handlers):
        ours.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("searchlite: %(message)s"))
    ours.addHandler(handler)
    ours.setLevel(logging.INFO if verbose else logging.WARNING)
    ours.propagate = False
    root = logging.getLogger()
    if verbose:
        logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s", stream=sys.stderr)
    elif not root.handlers:
        # open_clip logs its own errors on the root logger; ours say the same thing better
        root.addHandler(logging.NullHandler())


def main() -> None:
    """Console-script entry point. The command's work is done, closed and synced when app()
    returns; the interpreter's own teardown of the modules it loaded (onnxruntime, FAISS,
    SQLAlchemy: 0.1-0.2 s, a tenth of adding one photo) is skipped. Exit handlers still run."""
    try:
        app()
    except SystemExit as e:
        code = e.code
    else:
        code = 0
    import atexit

    if code is None:
        code = 0
    elif not isinstance(code, int):
        print(code, file=sys.stderr)
        code = 1
    atexit._run_exitfuncs()  # what exit handlers would do at a normal exit (Ray's shutdown among them)
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # closed, or a reader that left
            pass
    os._exit(code)
