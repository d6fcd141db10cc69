"""The FastAPI app: the JSON API, the page, errors as {"error": "..."} with the library's
http_status, never a stack trace. One engine is shared by every request (search is thread-safe)."""

from __future__ import annotations

import os
import tempfile
import logging
import re
import threading
from dataclasses import replace
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal, Optional

from fastapi import FastAPI, File, Form, Query as Q, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from .. import InvalidInputError, NotFoundError, SearchliteError
from ..media.safe_read import OpenedFile, open_checked
from ..output import hit_json
from .files import OpenedFileResponse
from .knn import knn_router
from .queries import MAX_OFFSET, Answer, Listings, Query, UploadedImages, run_query
from .responses import JSON, error
from .security import Guard
from .settings import ServerSettings, thumbnail_dir
from .thumbs import DisplayCache, ThumbnailCache

log = logging.getLogger(__name__)

STATIC_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8", ".svg": "image/svg+xml"}
MAX_ID = 2**63 - 1
FAILED_LISTED = 1000

# a format (as media/images.py and media/video.py recognise files, by content) -> its content type
_TYPES = {
    "JPEG": "image/jpeg", "MPO": "image/jpeg", "PNG": "image/png", "GIF": "image/gif", "WEBP": "image/webp", "BMP": "image/bmp",
    "TIFF": "image/tiff", "HEIF": "image/heif", "AVIF": "image/avif", "DNG": "image/x-adobe-dng", "CR2": "image/x-canon-cr2",
    "CR3": "image/x-canon-cr3", "NEF": "image/x-nikon-nef", "ARW": "image/x-sony-arw", "RAF": "image/x-fuji-raf",
    "ORF": "image/x-olympus-orf", "RW2": "image/x-panasonic-rw2", "PEF": "image/x-pentax-pef", "SRW": "image/x-samsung-srw",
    "MP4": "video/mp4", "MOV": "video/quicktime", "MKV": "video/x-matroska", "AVI": "video/x-msvideo",
}
# what browsers show as they are; other pictures get a display rendition (thumbs.DisplayCache)
BROWSER_IMAGES = frozenset({"image/jpeg", "image/png", "image/gif", "image/webp", "image/bmp", "image/avif"})
HEADER_BYTES = 65536  # as indexing reads them: a TIFF-based RAW is told by its first directory
EXPLAIN_WAIT_S = 10.0  # an explain request waits this long for one running to finish, then gets 503
SORT_HELP = ("date (oldest first) or -date (newest first): every image the query is relevant to, by capture time, a page of k at a time; "
             "the answer then holds total (every page together) and, with a query, cutoff: the relevance cut-off's verdict")
OFFSET_HELP = f"skip the first results (next pages): at most {MAX_OFFSET} without sort, any with sort"
MIN_SCORE_HELP = ("relevant means a score of at least this (-1..1): with sort, instead of the cut-off's own verdict; "
                  "without, top-k hits scoring less are dropped")


def media_type(header: bytes, name: str | None = None) -> str:
    """The content type of a file from its first bytes (and its name, for a TIFF-based RAW)."""
    from ..media.images import detect_format
    from ..media.video import detect_video

    fmt = detect_video(header) or detect_format(header, name)
    if fmt == "HEIF" and header[8:12] in (b"heic", b"heix"):
        return "image/heic"
    if fmt == "MKV" and b"webm" in header[:64]:
        return "video/webm"
    return _TYPES.get(fmt or "", "application/octet-stream")


def parse_id(raw: str) -> int:
    """An image id from a URL: a whole number; negative or unknown ones are simply not found."""
    if not re.fullmatch(r"-?[0-9]{1,30}", raw):
        raise InvalidInputError("an image id is a whole number")
    value = int(raw)
    if value < 0 or value > MAX_ID:
        raise NotFoundError(f"no indexed image with id {value}")
    return value


def create_app(engine: Any, settings: ServerSettings | None = None) -> FastAPI:
    """The app for one open engine. The caller owns the engine (and closes it)."""
    settings = settings or ServerSettings()
    index_name = Path(engine.index_dir).resolve().name or "index"
    cache_dir = settings.thumb_dir or thumbnail_dir(Path(engine.index_dir))
    thumbs = ThumbnailCache(engine, cache_dir, settings.thumb_size)
    displays = DisplayCache(engine, cache_dir)
    uploads = UploadedImages(engine)
    listings = Listings(engine.index_dir)
    static = _load_static()
    # every file the server decodes (uploads included) is a regular file, read by the decoder
    # process, at most max_file_bytes; an indexed one must also still be the file indexed
    reading = settings.read_policy()
    engine.read_policy = reading
    explaining = threading.BoundedSemaphore(settings.max_explains)

    app = FastAPI(
        title="searchlite",
        summary="Semantic image search over your photos, built on CLIP",
        version="1",
        docs_url=None,  # Swagger UI loads scripts from a CDN: the schema is at /openapi.json
        redoc_url=None,
        default_response_class=JSON,
    )
    app.state.engine = engine
    app.state.index_name = index_name
    app.state.uploads = uploads
    app.state.thumbs = thumbs
    app.state.settings = settings

    @app.exception_handler(SearchliteError)
    async def _library_error(request: Request, e: SearchliteError) -> JSON:
        return error(e.http_status, str(e))

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, e: RequestValidationError) -> JSON:
        first = e.errors()[0] if e.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p not in ("query", "body", "path"))
        return error(400, f"invalid request: {where + ': ' if where else ''}{str(first.get('msg', 'malformed')).lower()}")

    @app.exception_handler(HTTPException)
    async def _http(request: Request, e: HTTPException) -> JSON:
        return error(e.status_code, str(e.detail).lower())

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, e: Exception) -> JSON:
        log.error("unexpected error on %s %s", request.method, request.url.path, exc_info=e)
        return error(500, "internal error: see the server's log")

    # --- the page --------------------------------------------------------------------------------

    @app.get("/", include_in_schema=False)
    async def page() -> Response:
        return _static_response(static, "index.html")

    @app.get("/static/{name}", include_in_schema=False)
    async def static_file(name: str, request: Request) -> Response:
        if name not in static:
            return error(404, "not found")
        return _static_response(static, name, request.headers.get("if-none-match"))

    # --- search ----------------------------------------------------------------------------------

    # id -> path of recent hits: a page's thumbnails are then served without a database query
    recent = RecentPaths()

    def hit_record(request: Request, hit: Any) -> dict[str, Any]:
        """A hit as the CLI's --json has it, with the URLs of its thumbnail, file and view."""
        base = str(request.base_url)
        recent.put(hit.id, hit.path)
        record = hit_json(hit) | {
            "thumb": f"{base}api/thumbs/{hit.id}",
            "image": f"{base}api/images/{hit.id}",
            "view": f"{base}api/view/{hit.id}",
        }
        if hit.time is not None:  # a video: its thumbnail from the shot that matched, played from its start
            record["thumb"] += f"?t={hit.time + (hit.span or 0) / 2:.1f}"
            record["view"] += f"#t={hit.time:.2f}"
        return record

    def answer_record(request: Request, answer: Answer) -> dict[str, Any]:
        """A page of hits; with sort, how many there are in all, and the cut-off's verdict in cutoff."""
        record: dict[str, Any] = {"hits": [hit_record(request, h) for h in answer.hits]}
        if answer.total is not None:
            record["total"] = answer.total
        if answer.cutoff is not None:
            record["cutoff"] = answer.cutoff.as_dict()
        return record

    @app.get("/api/search", summary="Search by text, an uploaded image's key, or an indexed image (like)")
    def search_get(
        request: Request,
        q: Annotated[Optional[str], Q(max_length=2000, description="text query")] = None,
        k: Annotated[int, Q(ge=1, le=500)] = 60,
        offset: Annotated[int, Q(ge=0, description=OFFSET_HELP)] = 0,
        tag: Annotated[Optional[str], Q(max_length=200)] = None,
        not_: Annotated[list[str], Q(alias="not", description="texts to steer away from")] = [],  # noqa: B006
        like: Annotated[Optional[int], Q(description="more like this indexed image")] = None,
        image: Annotated[Optional[str], Q(max_length=64, description="key of an image uploaded with POST")] = None,
        after: Annotated[Optional[str], Q(max_length=64, description="taken from this date on: 2023, 2023-06, 2023-06-14 or an ISO time")] = None,
        before: Annotated[Optional[str], Q(max_length=64, description="taken before this date (same forms)")] = None,
        camera: Annotated[Optional[str], Q(max_length=200, description="part of the camera's make or model")] = None,
        path: Annotated[Optional[str], Q(max_length=4096, description="under this folder, or matching this glob")] = None,
        near: Annotated[Optional[str], Q(max_length=100, description="LAT,LON[,KM]")] = None,
        place: Annotated[Optional[str], Q(max_length=200, description="a city's name, resolved offline")] = None,
        sort: Annotated[Optional[Literal["date", "-date"]], Q(description=SORT_HELP)] = None,
        type_: Annotated[Optional[str], Q(alias="type", max_length=10, description="image or video: only files of that kind")] = None,
        min_score: Annotated[Optional[float], Q(ge=-1, le=1, description=MIN_SCORE_HELP)] = None,
    ) -> JSON:
        filters = {"after": after, "before": before, "camera": camera, "path": path, "near": near, "place": place}
        query = Query(text=q, negatives=not_, tag=tag or None, like=like, image=image, k=k, offset=offset, filters=filters, sort=sort, type=type_ or None,
                      min_score=min_score)
        return JSON(answer_record(request, run_query(engine, uploads, listings, query)))

    @app.post("/api/search", summary="Search by an uploaded image (multipart), with the same fields")
    async def search_post(
        request: Request,
        image: Annotated[Optional[UploadFile], File(description="the query image")] = None,
        q: Annotated[Optional[str], Form(max_length=2000)] = None,
        k: Annotated[int, Form(ge=1, le=500)] = 60,
        offset: Annotated[int, Form(ge=0)] = 0,
        tag: Annotated[Optional[str], Form(max_length=200)] = None,
        not_: Annotated[list[str], Form(alias="not")] = [],  # noqa: B006
        like: Annotated[Optional[int], Form()] = None,
        after: Annotated[Optional[str], Form(max_length=64)] = None,
        before: Annotated[Optional[str], Form(max_length=64)] = None,
        camera: Annotated[Optional[str], Form(max_length=200)] = None,
        path: Annotated[Optional[str], Form(max_length=4096)] = None,
        near: Annotated[Optional[str], Form(max_length=100)] = None,
        place: Annotated[Optional[str], Form(max_length=200)] = None,
        sort: Annotated[Optional[Literal["date", "-date"]], Form()] = None,
        type_: Annotated[Optional[str], Form(alias="type", max_length=10)] = None,
        min_score: Annotated[Optional[float], Form(ge=-1, le=1)] = None,
    ) -> JSON:
        key = None
        if image is not None:
            data = await image.read()
            key = await run_in_threadpool(uploads.add, data)
        filters = {"after": after, "before": before, "camera": camera, "path": path, "near": near, "place": place}
        query = Query(text=q, negatives=not_, tag=tag or None, like=like, image=key, k=k, offset=offset, filters=filters, sort=sort, type=type_ or None,
                      min_score=min_score)
        answer = await run_in_threadpool(run_query, engine, uploads, listings, query)
        return JSON(answer_record(request, answer) | {"image_key": key})

    # --- files, by indexed id only ----------------------------------------------------------------

    def row_of(raw_id: str) -> Any:
        image_id = parse_id(raw_id)
        row = engine.files([image_id]).get(image_id)
        if row is None:
            raise NotFoundError(f"no indexed image with id {image_id}")
        return row

    def open_row(row: Any, capped: bool = True) -> OpenedFile:
        """An indexed file opened for reading, checked to be the file indexed (not a link swapped in,
        a FIFO, a device; the same size, time and, for small files, content); capped: at most
        max_file_bytes (for decoding; originals are streamed whatever their size)."""
        policy = reading.for_row(row) if capped else replace(reading, max_bytes=None).for_row(row)
        try:
            return open_checked(row.path, policy, "indexed file")
        except NotFoundError:
            raise NotFoundError(f"image {row.id} is indexed but its file has changed or is gone: index the folder again") from None

    def send_row(row: Any, request: Request) -> Response:
        """The original file of a row, with its content type (from its first bytes), or a display
        rendition (HEIC, TIFF, RAW) when view is asked and a browser cannot show the original."""
        opened = open_row(row, capped=False)
        try:
            kind = media_type(opened.header(HEADER_BYTES), os.path.basename(row.path))
        except BaseException:
            opened.close()
            raise
        if request.url.path.startswith("/api/view/") and kind not in BROWSER_IMAGES and not kind.startswith("video/"):
            opened.close()
            found, key = displays.get(row.id, row.path, dims=(row.width, row.height), read=reading.for_row(row))
            return picture_response(found, key, displays.media_type, request)
        return OpenedFileResponse(opened, kind, {"Cache-Control": "private, max-age=600"})

    @app.get("/api/images/{image_id}", summary="The original file of an indexed image or video, with its content type", response_class=Response)
    def original(image_id: str, request: Request) -> Response:
        return send_row(row_of(image_id), request)

    @app.get("/api/view/{image_id}", summary="What a browser shows of an indexed file: the original where a browser can show it, "
             "else a JPEG rendition (HEIC, TIFF, RAW) at most 2048 pixels on its longer side", response_class=Response)
    def view(image_id: str, request: Request) -> Response:
        return send_row(row_of(image_id), request)

    def picture_response(found: Path | bytes, key: str, kind: str, request: Request) -> Response:
        etag = f'"{key}"'
        headers = {"ETag": etag, "Cache-Control": "private, max-age=600"}
        if etag in request.headers.get("if-none-match", ""):
            return Response(status_code=304, headers=headers)
        data = found if isinstance(found, bytes) else found.read_bytes()
        return Response(data, media_type=kind, headers=headers)

    @app.get("/api/explain/{image_id}", summary="An indexed image overlaid with where a text matches (PNG)", response_class=Response)
    def explain_image(image_id: str, q: Annotated[str, Q(min_length=1, max_length=2000, description="the text")]) -> Response:
        row = row_of(image_id)
        # each explain runs the image model on a large picture: a few at a time, the rest refused
        if not explaining.acquire(timeout=EXPLAIN_WAIT_S):
            return JSON({"error": "the server is busy explaining other images: try again in a moment"}, status_code=503, headers={"Retry-After": "5"})
        try:
            with tempfile.TemporaryDirectory(prefix="searchlite-explain-") as folder:
                out = os.path.join(folder, "heat.png")
                engine.explain(row.path, q, output=out, read=reading.for_row(row))
                with open(out, "rb") as f:
                    data = f.read()
        except NotFoundError:
            raise NotFoundError(f"image {row.id} is indexed but its file has changed or is gone: index the folder again") from None
        finally:
            explaining.release()
        return Response(data, media_type="image/png", headers={"Cache-Control": "private, max-age=600"})

    @app.get("/api/thumbs/{image_id}", summary="A WebP thumbnail of an indexed image (of a video: its frame at t seconds)", response_class=Response)
    async def thumbnail(
        image_id: str, request: Request, t: Annotated[Optional[float], Q(ge=0, le=1e7, description="a video's time, in seconds")] = None
    ) -> Response:
        # a cached thumbnail of a recent hit is answered on the event loop (a stat and a small
        # read); anything slower (a database query, making the thumbnail) runs in a thread
        # (a cached one was made from the file as indexed: its name holds the file's size and time)
        number = parse_id(image_id)
        at = None if t is None else round(t, 1)
        path = recent.get(number)
        found = None
        if path is not None:
            found, _, key = thumbs.cached(number, path, at)
        if found is None:
            row = await run_in_threadpool(row_of, image_id)
            found, key = await run_in_threadpool(thumbs.get, number, row.path, at, (row.width, row.height), reading.for_row(row))
        return picture_response(found, key, thumbs.media_type, request)

    # --- about the index ----------------------------------------------------------------------------

    @app.get("/api/info", summary="Counts, model, sizes on disk, and the files that failed with reasons")
    def info() -> JSON:
        facts = engine.info()
        failed = engine.failures()
        facts["name"] = index_name
        facts["model_name"] = model_name(engine.spec) if facts["model"] else None
        facts["failed_files"] = [{"path": r.path, "error": r.error} for r in failed[:FAILED_LISTED]]
        facts["thumbnails"] = str(thumbs.folder)
        return JSON(facts)

    @app.get("/api/tags", summary="Tags and how many images carry each")
    def tags() -> JSON:
        counts = engine.info()["tags"]
        return JSON({"tags": [{"label": label, "count": n} for label, n in counts.items()]})

    app.include_router(knn_router(engine, uploads, index_name))

    # the guard runs first, then CORS (only when asked for)
    if settings.cors_origins:
        from starlette.middleware.cors import CORSMiddleware

        app.add_middleware(
            CORSMiddleware, allow_origins=list(settings.cors_origins), allow_methods=["GET", "HEAD", "POST"], allow_headers=["authorization", "content-type"]
        )
    app.add_middleware(
        Guard, allowed_hosts=settings.allowed_hosts(), token=settings.token, max_body=settings.max_upload_bytes, cors_origins=settings.cors_origins,
        body_timeout_s=settings.body_timeout_s, token_failures=settings.token_failures, token_window_s=settings.token_window_s,
    )
    return app


class RecentPaths:
    """A bounded map of image id -> path, newest kept (thread-safe enough: dict operations are atomic)."""

    def __init__(self, keep: int = 20_000) -> None:
        self.keep = keep
        self._paths: dict[int, str] = {}

    def put(self, image_id: int, path: str) -> None:
        self._paths[image_id] = path
        if len(self._paths) > self.keep:
            for old in list(self._paths)[: len(self._paths) - self.keep]:
                self._paths.pop(old, None)

    def get(self, image_id: int) -> str | None:
        return self._paths.get(image_id)


def model_name(spec: Any) -> str:
    """The model as people name it: the bundled or open_clip name with its pretrained tag or its
    checkpoint's file name (not the checkpoint's full path and hash, as info's "model" has)."""
    from ..models.spec import BUNDLED_MODELS, HF_HUB_PREFIX, bundled_model

    if spec.hf_hub:
        return HF_HUB_PREFIX + spec.hf_hub
    if spec.name in BUNDLED_MODELS and spec.checkpoint and Path(spec.checkpoint).name == bundled_model(spec.name)[1].name:
        return spec.name
    weights = spec.pretrained or (spec.checkpoint and Path(spec.checkpoint).name)
    name = spec.name or "custom model"
    return f"{name} / {weights}" if weights else name


def _load_static() -> dict[str, tuple[bytes, str, str]]:
    """The page's files (package data), read once: name -> (bytes, content type, ETag)."""
    import hashlib

    files = {}
    for entry in resources.files("searchlite.server").joinpath("static").iterdir():
        suffix = Path(entry.name).suffix
        if suffix in STATIC_TYPES:
            data = entry.read_bytes()
            files[entry.name] = (data, STATIC_TYPES[suffix], '"' + hashlib.sha1(data).hexdigest()[:16] + '"')
    return files


def _static_response(static: dict[str, tuple[bytes, str, str]], name: str, if_none_match: str | None = None) -> Response:
    data, content_type, etag = static[name]
    headers = {"ETag": etag, "Cache-Control": "no-cache"}
    if if_none_match and etag in if_none_match:
        return Response(status_code=304, headers=headers)
    return Response(data, media_type=content_type, headers=headers)
