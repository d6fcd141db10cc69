"""The `searchlite` command. Thin: parses flags, calls the library, prints.

stdout carries results (TSV, or JSON lines with --json); stderr carries progress and messages.
Library errors become one-line messages and exit status 1; Ctrl-C exits 130.

    app.py                the Typer app (commands in --help's order, --verbose) and main()
    options.py            options several commands share, declared once; Choice for fixed values
    user_errors.py        failures -> one line on stderr, the flag that fixes it, an exit status
    opening.py            the engine a command works on
    console.py            results to stdout as bytes, progress bars on stderr
    commands_index.py     index, optimize, export, import
    commands_search.py    query, duplicates
    commands_info.py      info
    commands_classify.py  classify, explain, tag, probe
    commands_model.py     eval, train
    commands_serve.py     serve, mcp

A hit becomes JSON or TSV in searchlite/output.py, shared with the HTTP API and MCP.
"""

from .app import app, main

__all__ = ["app", "main"]
