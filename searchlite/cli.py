"""The `searchlite` command. Thin: parses flags, calls the library, prints.

stdout carries results (TSV, or JSON lines with --json); stderr carries progress and messages.
Library errors become one-line messages and exit status 1; Ctrl-C exits 130.
"""

from __future__ import annotations

import json
import logging
import os
import shlex
import sys
import warnings
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Optional

import typer

from .config import INDEX_ENV

if TYPE_CHECKING:
    from .engine import SearchEngine

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    rich_markup_mode=None,
    help="Semantic image search over your photos, built on CLIP.",
)

IndexOpt = Annotated[
    Optional[Path],
    typer.Option("--index", envvar=INDEX_ENV, metavar="DIR", help="Index folder [default: ./index]", show_default=False),
]
DeviceOpt = Annotated[Optional[str], typer.Option(metavar="DEVICE", help="torch device, e.g. cpu, cuda, cuda:1 [default: cuda when available]")]
JsonOpt = Annotated[bool, typer.Option("--json", help="One JSON object per line.")]


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


# The flag a library error's `setting` is changed with on the command line
_HINTS = {
    "index_dir": "run `searchlite index FOLDER --index {index_dir}` first, or pass --index DIR (or set SEARCHLITE_INDEX) for another index",
    "max_megapixels": "raise the limit with --max-megapixels",
    "pretrained": "pass the weights with --pretrained TAG|hf-hub:ID|CHECKPOINT",
    "weights": "run once with network to cache them, pass a local checkpoint with --pretrained CHECKPOINT, or try searchlite "
    "offline with --model searchlite-shapes (a demo model that knows four colours and three shapes)",
    "model": "drop --model/--pretrained to use the index's model, or pass --index NEW_DIR to build a separate index with this one",
    "device": "pass --device cpu",
    "precision": "use --precision auto|fp32|bf16|fp16",
    "token": "pass --token SECRET (or set SEARCHLITE_TOKEN)",
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


def _click() -> Any:
    """The click that runs our commands: typer 0.2x carries its own copy (typer._click)."""
    import importlib

    try:
        name = importlib.import_module("typer._click").__name__
    except ImportError:  # older typer runs on click itself
        name = "click"
    for sub in ("exceptions", "globals"):  # the submodules used by name
        importlib.import_module(f"{name}.{sub}")
    return importlib.import_module(name)


def _hint(setting: str | None) -> str | None:
    """The flag hint for an error's setting, if the running command has the flags it names (a
    command never advises a flag it lacks)."""
    import re

    hint = _HINTS.get(setting or "")
    ctx = _click().globals.get_current_context(silent=True)
    if hint is None or ctx is None:
        return hint
    flags = {opt for param in ctx.command.params for opt in getattr(param, "opts", ())}
    named = set(re.findall(r"--[a-z][a-z-]*", re.sub(r"`[^`]*`", "", hint)))  # outside `commands`
    return hint if named <= flags else _FALLBACK_HINTS.get(setting or "")


def _error_line(message: object, hint: str | None = None) -> str:
    """One line on stderr, whatever the message holds."""
    text = " ".join(str(message).split())
    return f"searchlite: error: {text}" + (f"; {hint}" if hint else "")


@contextmanager
def _user_errors() -> Iterator[None]:
    """Every failure as one line on stderr and exit status 1 (130 when interrupted): library
    errors with the flag hint for their setting; an OSError the library did not expect naming its
    file; anything else as a bug to report (its traceback only with --verbose)."""
    from .errors import SearchliteError, os_advice, os_reason

    click = _click()

    try:
        yield
    except SearchliteError as e:
        hint = _hint(e.setting)
        if hint is not None:  # the index an error is about, as its --index value
            where = getattr(e, "index_dir", None)
            hint = hint.replace("{index_dir}", shlex.quote(_printable(str(where))) if where is not None else "DIR")
        # a flag hint replaces the advice the library gave in values, where it gives it apart
        typer.echo(_error_line(e.problem if hint else e, hint), err=True)
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
        typer.echo(_error_line(f"{where}{os_reason(e)}; {os_advice(e, writing=False)}"), err=True)
        raise typer.Exit(1) from None
    except Exception as e:  # noqa: BLE001 - the last line of defence: never a traceback by default
        _log_traceback()
        typer.echo(
            _error_line(f"unexpected {type(e).__name__}: {e}; this is a bug: please report it (run again with -v for details)"),
            err=True,
        )
        raise typer.Exit(1) from None


def _log_traceback() -> None:
    """The traceback of the exception being handled, on stderr with --verbose only."""
    if logging.getLogger("searchlite").isEnabledFor(logging.INFO):  # what --verbose sets
        import traceback

        traceback.print_exc(file=sys.stderr)


def _open(index: Path | None, **kwargs: Any) -> SearchEngine:
    from .engine import SearchEngine

    return SearchEngine.open(index, **kwargs)


@app.command()
def index(
    folders: Annotated[list[Path], typer.Argument(metavar="FOLDER...", help="Folders (or files) of photos to index.", show_default=False)],
    index: IndexOpt = None,
    model: Annotated[
        Optional[str], typer.Option(metavar="NAME|CONFIG.json", help="open_clip model name or model-config JSON (new index only) [default: ViT-B-32-256]")
    ] = None,
    pretrained: Annotated[
        Optional[str],
        typer.Option(metavar="TAG|hf-hub:ID|CHECKPOINT", help="open_clip pretrained tag, hf-hub:ID, or checkpoint file [default: datacomp_s34b_b86k]"),
    ] = None,
    device: DeviceOpt = None,
    batch_size: Annotated[Optional[int], typer.Option(min=1, metavar="N", help="Images encoded together. [default: 32 on a CPU, 256 on a GPU]")] = None,
    workers: Annotated[Optional[int], typer.Option(min=1, metavar="N", help="Decode workers.")] = None,
    max_megapixels: Annotated[
        Optional[float], typer.Option(min=0.001, metavar="MP", help="Refuse larger images (read from the header). [default: 150]")
    ] = None,
    follow_links: Annotated[
        bool, typer.Option("--follow-links", help="Follow symbolic links to folders and out of the collection.")
    ] = False,
    precision: Annotated[
        Optional[str], typer.Option(metavar="auto|fp32|bf16|fp16", help="Image tower precision; auto keeps fp32 unless the hardware has fast fp16/bf16 that matches it. [default: auto]")
    ] = None,
    ray: Annotated[
        Optional[str],
        typer.Option(metavar="auto|ray://HOST:PORT|HOST:PORT", help="Decode and encode on a Ray cluster (auto: the one this machine belongs to); needs searchlite[ray]."),
    ] = None,
    shared_fs: Annotated[
        Optional[bool],
        typer.Option("--shared-fs/--no-shared-fs", help="Whether the Ray workers see the folders at the same paths (read there) or not (sent bytes). [default: found out per worker]", show_default=False),
    ] = None,
    raw_siblings: Annotated[
        Optional[bool],
        typer.Option(
            "--raw-siblings/--no-raw-siblings",
            help="Also index camera RAW files that have a same-name JPEG beside them (IMG_1.CR2 + IMG_1.JPG); the index remembers the choice. [default: off]",
            show_default=False,
        ),
    ] = None,
    regions: Annotated[
        bool, typer.Option("--regions", help="Also store vectors for regions of large images, to find small objects (remembered by the index).")
    ] = False,
) -> None:
    """Index photo folders (and videos, with searchlite[video]): the first run reads everything,
    later runs only what changed."""
    from dataclasses import replace

    from .config import IndexSettings

    flags = {"batch_size": batch_size, "workers": workers, "max_megapixels": max_megapixels, "follow_links": follow_links, "precision": precision,
             "regions": regions}
    settings = replace(IndexSettings(), **{k: v for k, v in flags.items() if v}, raw_siblings=raw_siblings)
    for folder in folders:  # every folder before any work: a typo must not cost a model load
        if not os.path.exists(folder):
            typer.echo(f"searchlite: error: folder {_printable(str(folder))} not found", err=True)
            raise typer.Exit(1)
    with _user_errors(), _open(index, model=model, pretrained=pretrained, device=device, settings=settings) as engine:
        for folder in folders:
            with _progress(f"indexing {_printable(str(folder))}") as progress:
                report = engine.index(folder, progress=progress, ray=ray, shared_fs=shared_fs)
            typer.echo(f"{_printable(str(folder))}: {report.summary()}", err=True)
            for path, reason in report.failures[:10]:
                typer.echo(f"  failed: {_printable(path)}: {reason}", err=True)
            if len(report.failures) > 10:
                typer.echo(f"  … and {len(report.failures) - 10} more: searchlite info --failed", err=True)
            for path in report.not_followed[:10]:
                typer.echo(f"  link not followed (out of the collection; --follow-links follows it): {_printable(path)}", err=True)
            if len(report.not_followed) > 10:
                typer.echo(f"  … and {len(report.not_followed) - 10} more: searchlite info --skipped", err=True)
            if report.raw_siblings:
                typer.echo(f"  {report.raw_siblings} camera raw file{'s' if report.raw_siblings != 1 else ''} not indexed: "
                           "the same-name JPEG beside each is (--raw-siblings indexes both)", err=True)


@contextmanager
def _progress(description: str, unit: str = "file") -> Iterator[Any]:
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


@app.command()
def query(
    text: Annotated[
        Optional[list[str]],
        typer.Argument(
            metavar="[TEXT]...",
            help='What to search for. Unquoted words are one text (a yellow triangle); quoted texts ("a beach" "a sunset") or weighted ones ("2::beach": a number and a double colon) are separate terms that add up.',
            show_default=False,
        ),
    ] = None,
    image: Annotated[Optional[list[str]], typer.Option("--image", "-i", metavar="PATH", help='Find images similar to this file (repeatable); "0.5::PATH" weights it.')] = None,
    negative: Annotated[Optional[list[str]], typer.Option("--not", metavar="TEXT", help='Text to steer away from (repeatable); "3::people" weights it.')] = None,
    k: Annotated[
        Optional[int],
        typer.Option("-k", "--top", min=1, metavar="K", help="Number of results [default: 10]; with --sort or --all, which return every match, the K most relevant of them, in their order.", show_default=False),
    ] = None,
    as_json: JsonOpt = False,
    null: Annotated[
        bool, typer.Option("--null", "-0", help="End each score<TAB>path record with NUL, not newline (any file name is safe; not with --json).")
    ] = False,
    tag: Annotated[Optional[str], typer.Option(metavar="LABEL", help="Only images carrying this tag (see `searchlite tag`).")] = None,
    after: Annotated[Optional[str], typer.Option(metavar="DATE", help="Only photos taken from DATE on: 2023, 2023-06, 2023-06-14 or an ISO time.")] = None,
    before: Annotated[Optional[str], typer.Option(metavar="DATE", help="Only photos taken before DATE (same forms; --after 2023 --before 2024 is 2023).")] = None,
    camera: Annotated[Optional[str], typer.Option(metavar="TEXT", help="Only photos whose camera make or model contains TEXT (any case).")] = None,
    path: Annotated[Optional[str], typer.Option("--path", metavar="DIR|GLOB", help="Only images under this folder, or matching this glob.")] = None,
    near: Annotated[Optional[str], typer.Option(metavar="LAT,LON[,KM]", help="Only photos taken within KM (default 5) of this position.")] = None,
    place: Annotated[Optional[str], typer.Option(metavar="NAME", help='Only photos taken in this city ("Lisbon", "Paris, US"), resolved offline.')] = None,
    sort: Annotated[
        Optional[str], typer.Option(metavar="date|-date", help="Every relevant image, oldest (date) or newest (-date) first; with no query, every matching photo.")
    ] = None,
    min_score: Annotated[Optional[float], typer.Option(metavar="SCORE", help="Relevant means score >= SCORE (instead of the cut-off judged from the scores).")] = None,
    all_ranked: Annotated[bool, typer.Option("--all", help='Every image searched, with "relevant": true|false in --json.')] = False,
    type_: Annotated[Optional[str], typer.Option("--type", metavar="video|image", help="Only videos, or only images.")] = None,
    index: IndexOpt = None,
    device: DeviceOpt = None,
) -> None:
    """Search the index: prints score<TAB>path per line, best first (by date with --sort); a third
    column says where a video or a region matched (t=SECONDS or box=x0,y0,x1,y1), when it did."""
    from .query.terms import texts_from_words
    if as_json and null:
        typer.echo("searchlite: error: give --json or -0, not both (JSON lines already keep any file name intact)", err=True)
        raise typer.Exit(2)
    if sort is not None and sort not in ("date", "-date"):
        typer.echo(f"searchlite: error: unknown --sort {sort!r}: give --sort date (oldest first) or --sort -date (newest first)", err=True)
        raise typer.Exit(2)
    listing = sort is not None and not (text or image or negative)  # matching photos by date, no query
    with _user_errors(), _open(index, device=device, create=False) as engine:
        filters = engine.filters(after=after, before=before, camera=camera, path=path, near=near, place=place)
        chosen = filters.place_chosen if filters else None
        if chosen is not None:
            others = f"; also {len(chosen.others)} other place{'s' if len(chosen.others) != 1 else ''} of that name ({', '.join(chosen.others[:3])}{', ...' if len(chosen.others) > 3 else ''}): add a country, e.g. \"{chosen.name}, {chosen.country}\", or use --near" if chosen.others else ""
            typer.echo(f"searchlite: place {place!r} is {chosen.describe()}{others}", err=True)
        hits = engine.search(
            texts_from_words(text or []), image=image or [], negative=negative or [], tag=tag, type=type_, filters=filters, sort=sort,
            min_score=min_score, all_ranked=all_ranked, **({} if k is None else {"k": k}),
        )
    if k is not None and (sort is not None or all_ranked):
        # -k caps what is otherwise every match: its k most relevant (the first k with no query), in the order shown
        best = hits[:k] if listing else sorted(hits, key=lambda h: -h.score)[:k]
        kept = {id(h) for h in best}
        hits = [h for h in hits if id(h) in kept]

    def record(h: Any) -> dict[str, Any]:
        out = _hit_record(h) | {"taken_at": h.taken_at}
        if listing:
            del out["score"]
        if h.relevant is not None and all_ranked:
            out["relevant"] = h.relevant
        return out

    def line(h: Any) -> bytes:
        first = (h.taken_at or "-") if listing else f"{h.score:.4f}"
        if sort is not None and not listing:
            first += f"\t{h.taken_at or '-'}"
        if all_ranked and h.relevant is not None:
            first += "\trelevant" if h.relevant else "\t-"
        where = f"\t{h.where()}".encode() if h.where() else b""
        return f"{first}\t".encode() + os.fsencode(h.path) + where + (b"\0" if null else b"\n")

    _write(_json_line(record(h)) if as_json else line(h) for h in hits)


@app.command()
def duplicates(
    tier: Annotated[str, typer.Option(metavar="exact|near|similar", help="exact: same bytes; near: the same picture re-encoded, resized, cropped a little, rotated or converted; similar: burst shots, the same scene.")] = "near",
    path: Annotated[Optional[str], typer.Option("--path", metavar="DIR|GLOB", help="Only images under this folder, or matching this glob.")] = None,
    as_json: JsonOpt = False,
    index: IndexOpt = None,
) -> None:
    """Groups of duplicate images, each with a suggested keeper (largest, then earliest, then shortest path). Deletes nothing."""
    if tier not in ("exact", "near", "similar"):
        typer.echo(f"searchlite: error: unknown --tier {tier!r}: give --tier exact, near or similar", err=True)
        raise typer.Exit(2)
    with _user_errors(), _open(index, create=False) as engine:
        groups = engine.duplicates(tier, path=path)
    spare = sum(len(g.files) - 1 for g in groups)
    typer.echo(f"{len(groups)} group{'s' if len(groups) != 1 else ''} of {tier} duplicates; {spare} file{'s' if spare != 1 else ''} beside the keepers (nothing was deleted)", err=True)
    if as_json:
        _write(_json_line(g.to_dict()) for g in groups)
        return

    def lines() -> Iterator[bytes]:
        for n, g in enumerate(groups, 1):
            yield f"group {n}: {len(g.files)} files, keep the first ({g.reason})\n".encode()
            for f in g.files:
                size = f"{f.width}x{f.height}" if f.width and f.height else "?"
                yield f"{'keep' if f.keeper else '    '}\t{size}\t{f.taken_at or '-'}\t".encode() + os.fsencode(f.path) + b"\n"

    _write(lines())


def _hit_record(h: Any) -> dict[str, Any]:
    """A hit as --json prints it: box, time and span, and the paths of exact copies, only where the hit has them."""
    record = {"path": h.path, "score": round(h.score, 6), "id": h.id, "width": h.width, "height": h.height, "size": h.size, "tags": list(h.tags)}
    if h.kind != "image":
        record["type"] = h.kind
    if h.box is not None:
        record["box"] = list(h.box)
    if h.time is not None:
        record["time"] = round(h.time, 3)
        record["span"] = None if h.span is None else round(h.span, 3)
    if h.copies:
        record["copies"] = list(h.copies)
    return record


@app.command()
def info(
    as_json: JsonOpt = False,
    failed: Annotated[bool, typer.Option("--failed", help="List the files that failed, with reasons.")] = False,
    skipped: Annotated[
        bool, typer.Option("--skipped", help="List the files skipped (not images, links out of the collection), with reasons.")
    ] = False,
    index: IndexOpt = None,
) -> None:
    """What the index holds: images indexed and failed, model, dimensions, sizes on disk."""
    with _user_errors(), _open(index, create=False) as engine:
        rows = (engine.failures() if failed else []) + (engine.skipped() if skipped else [])
        facts = engine.info()
    if failed or skipped:
        _write(
            _json_line({"path": r.path, "error": r.error}) if as_json else os.fsencode(r.path) + f"\t{r.error}\n".encode()
            for r in rows
        )
    elif as_json:
        _write([_json_line(facts)])
    else:
        _write([_describe_info(facts).encode("utf-8", "backslashreplace")])


def _raw_sibling_row(facts: dict[str, Any]) -> list[tuple[str, str]]:
    """info's line on camera RAW files beside same-name JPEGs, when there is something to say."""
    if facts.get("raw_siblings_indexed"):
        return [("raw siblings", "indexed beside their JPEGs (--no-raw-siblings skips them)")]
    if facts.get("raw_siblings_skipped"):
        return [("raw siblings", f"{facts['raw_siblings_skipped']} not indexed, their same-name JPEGs are (--raw-siblings indexes both)")]
    return []


_SEARCH_KINDS = {"exact": "exact search", "ivf": "approximate search (IVF)"}


def _describe_info(facts: dict[str, Any]) -> str:
    """info's facts as aligned lines a person reads (--json keeps the machine values)."""
    tags = ", ".join(f"{label} {n}" for label, n in facts["tags"].items()) or "none"
    rows = [
        ("index", _printable(facts["index"])),
        ("images", str(facts["images"])),
        *([("videos", str(facts["videos"]))] if facts.get("videos") else []),
        ("failed", str(facts["failed"]) + (" (searchlite info --failed lists them)" if facts["failed"] else "")),
        ("not images", str(facts["not_images"])),
        *_raw_sibling_row(facts),
        ("model", facts["model"] or "none yet (the first index run records it)"),
        ("dimensions", str(facts["dim"] or "none yet")),
        ("database", _human_size(facts["database_bytes"])),
        ("vectors", f"{_human_size(facts['vectors_bytes'])}, " + _SEARCH_KINDS.get(facts["vector_index"], facts["vector_index"])),
        ("tags", tags),
        ("taken", _describe_dates(facts.get("dates"))),
        ("cameras", ", ".join(f"{_camera_name(c)} {c['images']}" for c in facts.get("cameras") or []) or "none recorded"),
    ]
    width = max(len(key) for key, _ in rows) + 2
    return "".join(f"{key + ':':<{width}}{value}\n" for key, value in rows)


def _describe_dates(dates: dict[str, Any] | None) -> str:
    if not dates:
        return "no dates yet"
    guessed = f" ({dates['from_mtime']} from file times, no EXIF date)" if dates["from_mtime"] else ""
    return f"{dates['first'].replace('T', ' ')} to {dates['last'].replace('T', ' ')}{guessed}"


def _camera_name(camera: dict[str, Any]) -> str:
    """"Canon EOS R5", not "Canon Canon EOS R5": the model often repeats the make."""
    make, model = camera.get("make") or "", camera.get("model") or ""
    return model if make and model.lower().startswith(make.lower().split()[0]) else " ".join(p for p in (make, model) if p)


def _human_size(n: int) -> str:
    """12345678 -> '12.3 MB' (powers of 1000, as disk sizes are sold)."""
    if n < 1000:
        return f"{n} bytes"
    for unit in ("kB", "MB", "GB", "TB"):
        n /= 1000
        if n < 999.95 or unit == "TB":
            return f"{n:.1f} {unit}"
    raise AssertionError("unreachable")


@app.command()
def optimize(
    index: IndexOpt = None,
    memory_budget: Annotated[
        Optional[int], typer.Option(min=1, metavar="BYTES", help="Memory for the vector index; past it, a compressed one (default: a quarter of this machine's).")
    ] = None,
    structure: Annotated[
        str, typer.Option(metavar="auto|exact|ivf|hnsw|ivfpq|hnswpq", help="Build this structure whatever the size; auto picks for the size and the memory budget.")
    ] = "auto",
) -> None:
    """Rebuild the vector index as an approximate one (IVF or HNSW; IVF-PQ re-ranked exactly past
    the memory budget), searching just enough for recall@10 >= 0.97 on text queries and your recent
    ones. Index runs do this by themselves past 100,000 images."""
    with _user_errors(), _open(index, create=False) as engine:
        chosen = engine.optimize(memory_budget=memory_budget, structure=structure)
    details = ", ".join(f"{k} {v}" for k, v in chosen.items() if k != "kind" and not isinstance(v, dict))
    typer.echo(f"vector index: {chosen['kind']} ({details})", err=True)


@app.command("export")
def export_(
    output: Annotated[Path, typer.Argument(metavar="OUT.npy", help="Embeddings file; paths go to OUT.jsonl beside it.", show_default=False)],
    index: IndexOpt = None,
) -> None:
    """Write the stored embeddings (.npy), what each row is (.jsonl, same order: path, shot or region, metadata) and the tag sets (.index.json)."""
    with _user_errors(), _open(index, create=False) as engine:
        n = engine.export_embeddings(output)
    typer.echo(f"wrote {n} embeddings to {output} and their paths to {output.with_suffix('.jsonl')}", err=True)


@app.command("import")
def import_(
    embeddings: Annotated[Path, typer.Argument(metavar="EMB.npy", help="float32 (n, d) embeddings from this index's model.", show_default=False)],
    paths: Annotated[Path, typer.Argument(metavar="PATHS", help='The n image paths: .jsonl of {"path": ...} or one per line.', show_default=False)],
    index: IndexOpt = None,
    model: Annotated[Optional[str], typer.Option(metavar="NAME|CONFIG.json", help="The model that made the embeddings (new index only).")] = None,
    pretrained: Annotated[Optional[str], typer.Option(metavar="TAG|hf-hub:ID|CHECKPOINT", help="Its weights (new index only).")] = None,
) -> None:
    """Load embeddings computed elsewhere (e.g. on a GPU cluster) or exported, without re-encoding; the tag sets of an EMB.index.json beside them too."""
    with _user_errors(), _open(index, model=model, pretrained=pretrained) as engine:
        imported, missing = engine.import_embeddings(embeddings, paths)
    note = f"; {missing} paths are not on this machine and were left out" if missing else ""
    typer.echo(f"imported {imported} embeddings{note}", err=True)


LabelsOpt = Annotated[str, typer.Option("--labels", metavar="A,B,C", help="Comma-separated labels.", show_default=False)]
TemplatesOpt = Annotated[
    Optional[str],
    typer.Option(metavar="single|imagenet|FILE", help='Prompt templates: "a photo of a {}.", the CLIP paper\'s 80 ImageNet templates, or a file of templates. [default: single]'),
]
ThresholdOpt = Annotated[
    float, typer.Option(min=0.0, max=1.0, help="Also tag an image with every label whose probability reaches this (its best label always).")
]


@app.command()
def classify(
    files: Annotated[list[Path], typer.Argument(metavar="IMAGE...", help="Image files (indexed or not).", show_default=False)],
    labels: LabelsOpt,
    templates: TemplatesOpt = None,
    top: Annotated[int, typer.Option(min=1, metavar="N", help="Labels listed per file.")] = 3,
    as_json: JsonOpt = False,
    index: IndexOpt = None,
    model: Annotated[
        Optional[str], typer.Option(metavar="NAME|CONFIG.json", help="Classify with this model instead of the index's (no index needed). [default: the index's, else ViT-B-32-256]")
    ] = None,
    pretrained: Annotated[Optional[str], typer.Option(metavar="TAG|hf-hub:ID|CHECKPOINT", help="Its weights (with or without --model).")] = None,
    device: DeviceOpt = None,
) -> None:
    """Zero-shot classify images: path<TAB>label<TAB>probability<TAB>runner-ups per file.
    Exits 1 when a file could not be read (the others are still classified)."""
    with _user_errors(), _open_for_model(index, model, pretrained, device) as engine:
        results = engine.classify(files, labels, templates)
    lines = []
    for r in results:
        if r.error:
            typer.echo(f"searchlite: error: {_printable(r.error)}", err=True)
        if as_json:
            ranking = [{"label": label, "score": round(p, 6)} for label, p in r.ranking[:top]]
            obj = {"path": r.path, "label": r.label, "score": None if r.score is None else round(r.score, 6), "labels": ranking}
            lines.append(_json_line(obj | ({"error": r.error} if r.error else {})))
        elif not r.error:
            others = ", ".join(f"{label} {p:.3f}" for label, p in r.ranking[1:top])
            lines.append(os.fsencode(r.path) + f"\t{r.label}\t{r.score:.4f}\t{others}\n".encode())
    _write(lines)
    if any(r.error for r in results):
        raise typer.Exit(1)


@app.command()
def explain(
    image: Annotated[Path, typer.Argument(metavar="IMAGE", help="An image file (indexed or not).", show_default=False)],
    text: Annotated[str, typer.Argument(metavar="TEXT", help="What to look for in it.", show_default=False)],
    output: Annotated[Optional[Path], typer.Option("--output", "-o", metavar="PNG", help="Write the image overlaid with the heat map here.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the grid of scores and the peak as JSON.")] = False,
    index: IndexOpt = None,
    model: Annotated[
        Optional[str], typer.Option(metavar="NAME|CONFIG.json", help="Use this model instead of the index's (no index needed). [default: the index's, else ViT-B-32-256]")
    ] = None,
    pretrained: Annotated[Optional[str], typer.Option(metavar="TAG|hf-hub:ID|CHECKPOINT", help="Its weights (with or without --model).")] = None,
    device: DeviceOpt = None,
) -> None:
    """Where TEXT matches in IMAGE: prints the peak as x<TAB>y (pixels of the oriented image),
    the grid of scores with --json, and writes a heat map with --output."""
    with _user_errors(), _open_for_model(index, model, pretrained, device) as engine:
        result = engine.explain(image, text, output=output)
    if as_json:
        _write([_json_line({"path": str(image), "text": text} | result.to_json())])
    else:
        _write([f"{result.peak[0]:.0f}\t{result.peak[1]:.0f}\n".encode()])


def _open_for_model(index: Path | None, model: str | None, pretrained: str | None, device: str | None) -> SearchEngine:
    """The index, for its model and cached class weights, when one is named (--index or
    SEARCHLITE_INDEX: it must exist) or ./index exists and no model is named; otherwise an engine
    without an index (nothing written to disk) for the model named, or the default one."""
    from .engine import SearchEngine
    from .errors import IndexNotFoundError

    if not (model or pretrained):
        try:
            return SearchEngine.open(index, device=device, create=False)
        except IndexNotFoundError:
            if index is not None:  # the user named that index
                raise
    return SearchEngine.without_index(model=model, pretrained=pretrained, device=device)


@app.command()
def tag(
    labels: LabelsOpt,
    templates: TemplatesOpt = None,
    name: Annotated[str, typer.Option(help="Tag set name: a new label set under the same name replaces the old.")] = "tags",
    threshold: ThresholdOpt = 0.3,
    index: IndexOpt = None,
    device: DeviceOpt = None,
) -> None:
    """Tag the indexed images by zero-shot classification; later index runs tag new images too."""
    with _user_errors(), _open(index, device=device, create=False) as engine:
        tagged = engine.tag(labels, templates, name=name, threshold=threshold)
        counts = engine.info()["tags"]
    _say_tagged(tagged, counts)


probe_app = typer.Typer(help="Few-shot linear probes: train on labelled examples, tag the index.", no_args_is_help=True)
app.add_typer(probe_app, name="probe")


@probe_app.command("train")
def probe_train(
    folder: Annotated[Path, typer.Argument(metavar="DIR", help="One subfolder of example images per label.", show_default=False)],
    output: Annotated[Path, typer.Option("--output", "-o", metavar="FILE", help="Where to write the probe (.npz).", show_default=False)],
    index: IndexOpt = None,
    device: DeviceOpt = None,
) -> None:
    """Fit a logistic-regression probe on the index model's image embeddings."""
    with _user_errors(), _open(index, device=device, create=False) as engine:
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
    with _user_errors(), _open(index, create=False) as engine:
        tagged = engine.apply_probe(probe_file, name=name, threshold=threshold)
        counts = engine.info()["tags"]
    _say_tagged(tagged, counts)


@app.command("eval")
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
        Optional[str], typer.Option(metavar="NAME|CONFIG.json", help="Evaluate this model instead of the index's (no index needed). [default: the index's, else ViT-B-32-256]")
    ] = None,
    pretrained: Annotated[Optional[str], typer.Option(metavar="TAG|hf-hub:ID|CHECKPOINT", help="Its weights (with or without --model).")] = None,
    device: DeviceOpt = None,
) -> None:
    """Evaluate a model on your labelled photos as the CLIP paper does: zero-shot accuracy per
    template set, few-shot linear-probe curve, and caption retrieval recall. Tables on stdout."""
    if folder is None and captions is None:
        typer.echo("searchlite: error: give a LABELLED_DIR (one subfolder of images per class), --captions PAIRS.csv, or both", err=True)
        raise typer.Exit(2)
    with _user_errors(), _open_for_model(index, model, pretrained, device) as engine, _stage_progress() as progress:
        report = engine.evaluate(folder, captions=captions, templates=templates, shots=shots, draws=draws, seed=seed, plot=plot, progress=progress)
    typer.echo(f"evaluated {report.model}: {report.from_index} embeddings from the index, {report.encoded} images encoded", err=True)
    if plot is not None:
        typer.echo(f"wrote {_printable(str(plot))}", err=True)
    if as_json:
        _write([_json_line(report.to_json())])
    else:
        _write([report.tables().encode("utf-8", "backslashreplace")])


@contextmanager
def _stage_progress() -> Iterator[Any]:
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


@app.command()
def train(
    data: Annotated[Path, typer.Argument(metavar="DATA", help="Folder of images with same-name .txt captions, or a .csv/.jsonl of image,caption.", show_default=False)],
    output: Annotated[Path, typer.Option("--output", "-o", metavar="CKPT", help="Where to write the trained weights (.pt or .safetensors).", show_default=False)],
    model: Annotated[Optional[str], typer.Option(metavar="NAME|CONFIG.json", help="Architecture. [default: ViT-B-32-256]")] = None,
    pretrained: Annotated[
        Optional[str],
        typer.Option(
            metavar="TAG|hf-hub:ID|CHECKPOINT",
            help="Start from these weights (fine-tuning) [default: random weights; the bundled searchlite-shapes starts from its shipped weights]",
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
    from .errors import OutputExistsError
    from .train.training import TrainInterrupted, TrainSettings, train_from_flags

    if epochs and steps:
        typer.echo("searchlite: error: give --epochs or --steps, not both", err=True)
        raise typer.Exit(2)
    settings = TrainSettings(epochs=epochs, steps=steps, batch_size=batch_size, accumulate=accumulate, lr=lr)
    with _user_errors(), _progress("training", unit="step") as progress:
        try:
            report = train_from_flags(
                data, output, model=model, pretrained=pretrained, device=device, settings=settings, progress=progress, overwrite=overwrite
            )
        except OutputExistsError as e:  # the library speaks of overwrite=True; here it is a flag
            typer.echo(f"searchlite: error: output {e.path} already exists: give another --output, or pass --overwrite to replace it", err=True)
            raise typer.Exit(1) from None
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


@app.command()
def serve(
    index: IndexOpt = None,
    host: Annotated[str, typer.Option(metavar="HOST", help="Address to listen on; anything but loopback needs --token.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, metavar="PORT", help="Port (0: any free one).")] = 8765,
    token: Annotated[
        Optional[str],
        typer.Option(
            envvar="SEARCHLITE_TOKEN", metavar="SECRET",
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
    from .server.settings import ServerSettings

    _need_extra("fastapi", "uvicorn", "multipart")
    with _user_errors():
        from .server.run import Server, address, bind, check_settings, make_token, setting_warnings, warm, warm_image_tower

        settings = ServerSettings(
            host=host, port=port, token=make_token() if token == "auto" else token or None, max_upload_bytes=int(max_upload_mb * 1024 * 1024),
            cors_origins=tuple(cors or ()), max_file_bytes=int(max_file_mb * 1024 * 1024),
        )

        from .server.settings import is_loopback

        if not is_loopback(host) and not settings.token:
            typer.echo(f"searchlite: error: --host {host} makes the server reachable from other machines: add --token SECRET (or set SEARCHLITE_TOKEN)", err=True)
            raise typer.Exit(2)
        check_settings(settings)  # the library's own checks; the host one is answered above with its flag
        for warning in setting_warnings(settings):
            typer.echo(f"searchlite: warning: {warning}", err=True)
        with _open(index, device=device, create=False) as engine:
            from .server.app import create_app

            engine.remember_queries = False  # the server never writes to the index
            warm(engine)
            sock = bind(host, port)
            server = Server(create_app(engine, settings), sock, log_level="info" if verbose_http else "warning", settings=settings)
            url = address(settings, server.port)

            def ready() -> None:
                facts = engine.info()
                typer.echo(f"searchlite: serving {_printable(facts['index'])} ({facts['images']} images) at", err=True)
                typer.echo(url)
                sys.stdout.flush()
                if open_browser:
                    import webbrowser

                    webbrowser.open(url)
                warm_image_tower(engine)

            server.run(on_ready=ready)


@app.command()
def mcp(
    index: IndexOpt = None,
    device: DeviceOpt = None,
    folder: Annotated[
        Optional[list[str]], typer.Option("--folder", metavar="DIR", help="Let the tools read image files only inside this folder (repeatable): the folders you indexed.")
    ] = None,
    max_file_mb: Annotated[float, typer.Option(min=0.01, metavar="MB", help="Largest file the tools read.")] = 256.0,
) -> None:
    """A Model Context Protocol server on stdio, for AI agents: tools search, search_by_image, info, classify."""
    _need_extra("mcp")
    with _user_errors(), _open(index, device=device, create=False) as engine:
        from .server.mcp_tools import serve_stdio

        engine.remember_queries = False  # nor does the MCP server
        serve_stdio(engine, max_file_bytes=int(max_file_mb * 1024 * 1024), folders=folder or ())


def _need_extra(*modules: str) -> None:
    import importlib.util

    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        typer.echo(f"searchlite: error: this command needs {', '.join(missing)}: pip install 'searchlite[serve]'", err=True)
        raise typer.Exit(1)


def _say_tagged(tagged: int, counts: dict[str, int]) -> None:
    typer.echo(f"tagged {tagged} images; " + ", ".join(f"{label}: {n}" for label, n in counts.items()), err=True)


def _write(lines: Iterable[bytes]) -> None:
    """Results to stdout as bytes (paths are written exactly as the OS has them)."""
    out = sys.stdout.buffer
    try:
        for line in lines:
            out.write(line)
        out.flush()
    except BrokenPipeError:  # `searchlite query ... | head -1`: the reader has all it wants
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def _json_line(obj: dict[str, Any]) -> bytes:
    # File names that are not valid UTF-8 hold lone surrogates; backslashreplace turns each into a
    # JSON \udcXX escape, which json.loads + os.fsencode turn back into the original bytes.
    return (json.dumps(obj, ensure_ascii=False) + "\n").encode("utf-8", "backslashreplace")


def _printable(path: str) -> str:
    return os.fsencode(path).decode("utf-8", "backslashreplace")


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
