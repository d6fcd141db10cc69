"""Commands that build an index: index, optimize, export, import."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Optional

import typer

from .console import progress_bar
from .opening import open_index
from .options import DeviceOpt, IndexOpt, model_option, pretrained_option
from .user_errors import fail, printable, user_errors

LISTED = 10  # failures and links not followed named after a run; info lists them all


def index(
    folders: Annotated[list[Path], typer.Argument(metavar="FOLDER...", help="Folders (or files) of photos to index.", show_default=False)],
    index: IndexOpt = None,
    model: Annotated[Optional[str], model_option("open_clip model name or model-config JSON (new index only) [default: ViT-B-32-256]")] = None,
    pretrained: Annotated[
        Optional[str], pretrained_option("open_clip pretrained tag, hf-hub:ID, or checkpoint file [default: datacomp_s34b_b86k]")
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
    # checked by the library (its message carries the --precision hint), as library users get it
    precision: Annotated[
        Optional[str],
        typer.Option(
            metavar="auto|fp32|int8|bf16|fp16",
            help="Image tower precision; auto: on a CPU int8 once it has matched fp32 on a sample of your photos (an index keeps "
            "its precision), on a GPU fp16/bf16 where it matches fp32. [default: auto]",
        ),
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

    from ..config import IndexSettings

    flags = {"batch_size": batch_size, "workers": workers, "max_megapixels": max_megapixels, "follow_links": follow_links, "precision": precision,
             "regions": regions}
    settings = replace(IndexSettings(), **{k: v for k, v in flags.items() if v}, raw_siblings=raw_siblings)
    for folder in folders:  # every folder before any work: a typo must not cost a model load
        if not os.path.exists(folder):
            raise fail(f"folder {printable(str(folder))} not found")
    with user_errors(), open_index(index, model=model, pretrained=pretrained, device=device, settings=settings) as engine:
        for folder in folders:
            with progress_bar(f"indexing {printable(str(folder))}") as progress:
                report = engine.index(folder, progress=progress, ray=ray, shared_fs=shared_fs)
            typer.echo(f"{printable(str(folder))}: {report.summary()}", err=True)
            for path, reason in report.failures[:LISTED]:
                typer.echo(f"  failed: {printable(path)}: {reason}", err=True)
            if len(report.failures) > LISTED:
                typer.echo(f"  … and {len(report.failures) - LISTED} more: searchlite info --failed", err=True)
            for path in report.not_followed[:LISTED]:
                typer.echo(f"  link not followed (out of the collection; --follow-links follows it): {printable(path)}", err=True)
            if len(report.not_followed) > LISTED:
                typer.echo(f"  … and {len(report.not_followed) - LISTED} more: searchlite info --skipped", err=True)
            if report.raw_siblings:
                typer.echo(f"  {report.raw_siblings} camera raw file{'s' if report.raw_siblings != 1 else ''} not indexed: "
                           "the same-name JPEG beside each is (--raw-siblings indexes both)", err=True)


def optimize(
    index: IndexOpt = None,
    memory_budget: Annotated[
        Optional[int], typer.Option(min=1, metavar="BYTES", help="Memory for the vector index; past it, a compressed one (default: a quarter of this machine's).")
    ] = None,
    # checked by the library, whose one-line message names the choices (as library users get it)
    structure: Annotated[
        str, typer.Option(metavar="auto|exact|ivf|hnsw|ivfpq|hnswpq", help="Build this structure whatever the size; auto picks for the size and the memory budget.")
    ] = "auto",
) -> None:
    """Rebuild the vector index as an approximate one (IVF or HNSW; IVF-PQ re-ranked exactly past
    the memory budget), searching just enough for recall@10 >= 0.97 on text queries and your recent
    ones. Index runs do this by themselves past 100,000 images."""
    with user_errors(), open_index(index, create=False) as engine:
        chosen = engine.optimize(memory_budget=memory_budget, structure=structure)
    details = ", ".join(f"{k} {v}" for k, v in chosen.items() if k != "kind" and not isinstance(v, dict))
    typer.echo(f"vector index: {chosen['kind']} ({details})", err=True)


def export_(
    output: Annotated[Path, typer.Argument(metavar="OUT.npy", help="Embeddings file; paths go to OUT.jsonl beside it.", show_default=False)],
    index: IndexOpt = None,
) -> None:
    """Write the stored embeddings (.npy), what each row is (.jsonl, same order: path, shot or region, metadata) and the tag sets (.index.json)."""
    with user_errors(), open_index(index, create=False) as engine:
        n = engine.export_embeddings(output)
    typer.echo(f"wrote {n} embeddings to {output} and their paths to {output.with_suffix('.jsonl')}", err=True)


def import_(
    embeddings: Annotated[Path, typer.Argument(metavar="EMB.npy", help="float32 (n, d) embeddings from this index's model.", show_default=False)],
    paths: Annotated[Path, typer.Argument(metavar="PATHS", help='The n image paths: .jsonl of {"path": ...} or one per line.', show_default=False)],
    index: IndexOpt = None,
    model: Annotated[Optional[str], model_option("The model that made the embeddings (new index only).")] = None,
    pretrained: Annotated[Optional[str], pretrained_option("Its weights (new index only).")] = None,
) -> None:
    """Load embeddings computed elsewhere (e.g. on a GPU cluster) or exported, without re-encoding; the tag sets of an EMB.index.json beside them too."""
    with user_errors(), open_index(index, model=model, pretrained=pretrained) as engine:
        imported, missing = engine.import_embeddings(embeddings, paths)
    note = f"; {missing} paths are not on this machine and were left out" if missing else ""
    typer.echo(f"imported {imported} embeddings{note}", err=True)
