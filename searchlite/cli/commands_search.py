"""Commands that search an index: query, duplicates."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Annotated, Any, Optional

import typer

from ..output import hit_json, hit_tsv, json_line
from .console import write
from .opening import open_index
from .options import Choice, DeviceOpt, IndexOpt, JsonOpt, PathFilterOpt
from .user_errors import fail, user_errors

# the values the engine takes (query/search.py SORTS, query/searcher.py FILE_TYPES, query/duplicates.py TIERS),
# refused here before the index is opened
SORT = Choice(("date", "-date"), "give {flag} date (oldest first) or {flag} -date (newest first)")
FILE_TYPE = Choice(("video", "image"), "give {flag} video or image")
TIER = Choice(("exact", "near", "similar"), "give {flag} exact, near or similar")


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
    path: PathFilterOpt = None,
    near: Annotated[Optional[str], typer.Option(metavar="LAT,LON[,KM]", help="Only photos taken within KM (default 5) of this position.")] = None,
    place: Annotated[Optional[str], typer.Option(metavar="NAME", help='Only photos taken in this city ("Lisbon", "Paris, US"), resolved offline.')] = None,
    sort: Annotated[
        Optional[str],
        typer.Option(click_type=SORT, metavar="date|-date", help="Every relevant image, oldest (date) or newest (-date) first; with no query, every matching photo."),
    ] = None,
    min_score: Annotated[Optional[float], typer.Option(metavar="SCORE", help="Relevant means score >= SCORE (instead of the cut-off judged from the scores).")] = None,
    all_ranked: Annotated[bool, typer.Option("--all", help='Every image searched, with "relevant": true|false in --json.')] = False,
    explain_cutoff: Annotated[
        bool, typer.Option("--explain-cutoff", help="With --sort or --all: say on stderr how many stand out and how the relevance cut-off was chosen.")
    ] = False,
    type_: Annotated[Optional[str], typer.Option("--type", click_type=FILE_TYPE, metavar="video|image", help="Only videos, or only images.")] = None,
    index: IndexOpt = None,
    device: DeviceOpt = None,
) -> None:
    """Search the index: prints score<TAB>path per line, best first (by date with --sort); a third
    column says where a video or a region matched (t=SECONDS or box=x0,y0,x1,y1), when it did."""
    from ..query.terms import texts_from_words

    if as_json and null:
        raise fail("give --json or -0, not both (JSON lines already keep any file name intact)", 2)
    listing = sort is not None and not (text or image or negative)  # matching photos by date, no query
    with user_errors(), open_index(index, device=device, create=False) as engine:
        filters = engine.filters(after=after, before=before, camera=camera, path=path, near=near, place=place)
        chosen = filters.place_chosen if filters else None
        if chosen is not None:
            others = f"; also {len(chosen.others)} other place{'s' if len(chosen.others) != 1 else ''} of that name ({', '.join(chosen.others[:3])}{', ...' if len(chosen.others) > 3 else ''}): add a country, e.g. \"{chosen.name}, {chosen.country}\", or use --near" if chosen.others else ""
            typer.echo(f"searchlite: place {place!r} is {chosen.describe()}{others}", err=True)
        hits = engine.search(
            texts_from_words(text or []), image=image or [], negative=negative or [], tag=tag, type=type_, filters=filters, sort=sort,
            min_score=min_score, all_ranked=all_ranked,
            # -k caps what is otherwise every match: its k most relevant (the first k with no query), in the order shown
            **({} if k is None else {"limit": k} if sort is not None or all_ranked else {"k": k}),
        )

    verdict = hits.cutoff
    if verdict is not None and (explain_cutoff or verdict.kept == 0):  # an empty answer always says why
        typer.echo(f"searchlite: {verdict.describe() if explain_cutoff else verdict.summary()}", err=True)
    elif not hits and (filters or tag or type_):
        typer.echo("searchlite: no indexed file matches the filters", err=True)

    def record(h: Any) -> dict[str, Any]:
        out = hit_json(h)
        if listing:
            del out["score"]
        if h.relevant is not None and all_ranked:
            out["relevant"] = h.relevant
        return out

    def line(h: Any) -> bytes:
        lead = [(h.taken_at or "-") if listing else f"{h.score:.4f}"]
        if sort is not None and not listing:
            lead.append(h.taken_at or "-")
        if all_ranked and h.relevant is not None:
            lead.append("relevant" if h.relevant else "-")
        return hit_tsv(h, lead, b"\0" if null else b"\n")

    write(json_line(record(h)) if as_json else line(h) for h in hits)


def duplicates(
    tier: Annotated[
        str,
        typer.Option(
            click_type=TIER, metavar="exact|near|similar",
            help="exact: same bytes; near: the same picture re-encoded, resized, cropped a little, rotated or converted; similar: burst shots, the same scene.",
        ),
    ] = "near",
    path: PathFilterOpt = None,
    as_json: JsonOpt = False,
    index: IndexOpt = None,
) -> None:
    """Groups of duplicate images, each with a suggested keeper (largest, then earliest, then shortest path). Deletes nothing."""
    with user_errors(), open_index(index, create=False) as engine:
        groups = engine.duplicates(tier, path=path)
    spare = sum(len(g.files) - 1 for g in groups)
    typer.echo(f"{len(groups)} group{'s' if len(groups) != 1 else ''} of {tier} duplicates; {spare} file{'s' if spare != 1 else ''} beside the keepers (nothing was deleted)", err=True)
    if as_json:
        write(json_line(g.to_dict()) for g in groups)
        return

    def lines() -> Iterator[bytes]:
        for n, g in enumerate(groups, 1):
            yield f"group {n}: {len(g.files)} files, keep the first ({g.reason})\n".encode()
            for f in g.files:
                size = f"{f.width}x{f.height}" if f.width and f.height else "?"
                yield f"{'keep' if f.keeper else '    '}\t{size}\t{f.taken_at or '-'}\t".encode() + os.fsencode(f.path) + b"\n"

    write(lines())
