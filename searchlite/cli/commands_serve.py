"""Commands that serve an index to others: serve (a web page and a JSON API) and mcp (AI agents)."""

from __future__ import annotations

import sys
from typing import Annotated, Optional

import typer

from ..server.settings import TOKEN_ENV
from .opening import open_index
from .options import DeviceOpt, IndexOpt
from .user_errors import fail, printable, user_errors


def serve(
    index: IndexOpt = None,
    host: Annotated[str, typer.Option(metavar="HOST", help="Address to listen on; anything but loopback needs --token.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, metavar="PORT", help="Port (0: any free one).")] = 8765,
    token: Annotated[
        Optional[str],
        typer.Option(
            envvar=TOKEN_ENV, metavar="SECRET",
            help="Require this token, 16 characters or more (Bearer header, or open the printed URL once); auto: make one and print it in the URL.",
        ),
    ] = None,
    open_browser: Annotated[bool, typer.Option("--open", help="Open the page in a web browser.")] = False,
    cors: Annotated[Optional[list[str]], typer.Option("--cors", metavar="ORIGIN", help="Let pages from this origin call the API (repeatable).")] = None,
    max_upload_mb: Annotated[float, typer.Option(min=0.01, metavar="MB", help="Largest request body (uploaded query images).")] = 50.0,
    max_file_mb: Annotated[
        float, typer.Option(min=0.01, metavar="MB", help="Largest file decoded for the page (thumbnails, views, explain); originals are sent whatever their size.")
    ] = 256.0,
    device: DeviceOpt = None,
    verbose_http: Annotated[bool, typer.Option("--access-log", help="Log every request to stderr (tokens hidden).")] = False,
) -> None:
    """Serve the index: a web page and a JSON API (OpenAPI at /openapi.json) on http://127.0.0.1:8765."""
    from ..server.settings import ServerSettings

    _need_extra("fastapi", "uvicorn", "multipart")
    with user_errors():
        from ..server.run import Server, address, bind, check_settings, make_token, setting_warnings, warm, warm_image_tower

        settings = ServerSettings(
            host=host, port=port, token=make_token() if token == "auto" else token or None, max_upload_bytes=int(max_upload_mb * 1024 * 1024),
            cors_origins=tuple(cors or ()), max_file_bytes=int(max_file_mb * 1024 * 1024),
        )

        from ..server.settings import is_loopback

        if not is_loopback(host) and not settings.token:
            raise fail(f"--host {host} makes the server reachable from other machines: add --token SECRET (or set {TOKEN_ENV})", 2)
        check_settings(settings)  # the library's own checks; the host one is answered above with its flag
        for warning in setting_warnings(settings):
            typer.echo(f"searchlite: warning: {warning}", err=True)
        with open_index(index, device=device, create=False) as engine:
            from ..server.app import create_app

            engine.remember_queries = False  # the server never writes to the index
            warm(engine)
            sock = bind(host, port)
            server = Server(create_app(engine, settings), sock, log_level="info" if verbose_http else "warning", settings=settings)
            url = address(settings, server.port)

            def ready() -> None:
                facts = engine.info()
                typer.echo(f"searchlite: serving {printable(facts['index'])} ({facts['images']} images) at", err=True)
                typer.echo(url)
                sys.stdout.flush()
                if open_browser:
                    import webbrowser

                    webbrowser.open(url)
                warm_image_tower(engine)

            server.run(on_ready=ready)


def mcp(
    index: IndexOpt = None,
    device: DeviceOpt = None,
    folder: Annotated[
        Optional[list[str]], typer.Option("--folder", metavar="DIR", help="Let the tools read image files only inside this folder (repeatable): the folders you indexed.")
    ] = None,
    max_file_mb: Annotated[float, typer.Option(min=0.01, metavar="MB", help="Largest file the tools read.")] = 256.0,
) -> None:
    """A Model Context Protocol server on stdio, for AI agents: tools search, search_by_image, timeline (every relevant file by date), info, classify."""
    _need_extra("mcp")
    with user_errors(), open_index(index, device=device, create=False) as engine:
        from ..server.mcp_tools import serve_stdio

        engine.remember_queries = False  # nor does the MCP server
        serve_stdio(engine, max_file_bytes=int(max_file_mb * 1024 * 1024), folders=folder or ())


def _need_extra(*modules: str) -> None:
    import importlib.util

    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        raise fail(f"this command needs {', '.join(missing)}: pip install 'searchlite[serve]'")
