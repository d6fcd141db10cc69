"""clip-retrieval compatibility: its ClipClient (and its front end's requests) work unchanged.

POST /knn-service takes clip-retrieval's body — `text`, or `image` as base64, or `embedding_input`
(a query embedding from this index's model); `num_images`, `modality`, `indice_name`; every other
field (deduplicate, use_safety_model, aesthetic_*, use_mclip, ...) is accepted and ignored — and
answers its list of {"id", "similarity", "url", "caption"}. GET /indices-list answers the index."""

from __future__ import annotations

import base64
import binascii
import json
import os
from typing import Any

import numpy as np
from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool

from .. import InvalidInputError, InvalidQueryError, NotFoundError
from ..output import rounded_score
from .queries import MAX_K, UploadedImages
from .responses import JSON

DEFAULT_NUM_IMAGES = 40  # ClipClient's default


def knn_router(engine: Any, uploads: UploadedImages, index_name: str) -> APIRouter:
    router = APIRouter(tags=["clip-retrieval"])

    @router.get("/indices-list", summary="clip-retrieval: the indices this server holds")
    def indices_list() -> JSON:
        return JSON([index_name])

    @router.post("/knn-service", summary="clip-retrieval: the k nearest images to a text, an image or an embedding")
    async def knn_service(request: Request) -> JSON:
        # parsed in a thread with the rest: a large body would hold every other request on the event loop
        return JSON(await run_in_threadpool(_answer, engine, uploads, index_name, await request.body(), str(request.base_url)))

    return router


def _parse(data: bytes) -> dict[str, Any]:
    """The request body as a JSON object (ClipClient posts json.dumps(...) without a content type:
    the body is read whatever it says)."""
    try:
        body = json.loads(data)
    except (ValueError, UnicodeDecodeError, RecursionError):  # RecursionError: thousands of nested [
        raise InvalidInputError("the body must be a JSON object (clip-retrieval's knn-service request)") from None
    if not isinstance(body, dict):
        raise InvalidInputError("the body must be a JSON object (clip-retrieval's knn-service request)")
    return body


def _answer(engine: Any, uploads: UploadedImages, index_name: str, data: bytes, base: str) -> list[dict[str, Any]]:
    body = _parse(data)
    name = body.get("indice_name")
    if name not in (None, "", index_name):
        raise NotFoundError(f"no index named {str(name)[:100]!r} here; this server holds {index_name!r} (see /indices-list)")
    modality = body.get("modality") or "image"
    if modality not in ("image", "text"):
        raise InvalidQueryError(f"modality must be image or text, got {str(modality)[:40]!r}")
    num = body.get("num_images")
    num = DEFAULT_NUM_IMAGES if num is None else num
    if isinstance(num, bool) or not isinstance(num, int) or not 1 <= num <= MAX_K:
        raise InvalidQueryError(f"num_images must be a whole number from 1 to {MAX_K}")
    text, image, embedding = body.get("text"), body.get("image"), body.get("embedding_input")
    given = [x for x in (text, image, embedding) if x not in (None, "", [])]
    if not given:
        if body.get("image_url"):
            raise InvalidQueryError("image_url is not supported (this server fetches nothing): send the image itself as base64 in image")
        raise InvalidQueryError("give one of text, image (base64) or embedding_input")
    if len(given) > 1:
        raise InvalidQueryError("give only one of text, image and embedding_input")
    if text not in (None, ""):
        if not isinstance(text, str) or "\0" in text:
            raise InvalidQueryError("text must be a string without NUL characters")
        hits = engine.search(text, k=num)
    elif image not in (None, ""):
        if not isinstance(image, str):
            raise InvalidQueryError("image must be a base64 string")
        try:
            data = base64.b64decode(image.partition(",")[2] if image.startswith("data:") else image, validate=True)
        except (binascii.Error, ValueError):
            raise InvalidInputError("image is not valid base64") from None
        key = uploads.add(data)
        hits = engine.search_vector(uploads.get(key), k=num)
    else:
        if not isinstance(embedding, list) or not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in embedding):
            raise InvalidQueryError("embedding_input must be a list of numbers")
        try:
            vector = np.array(embedding, dtype=np.float64)  # a whole number too large for a float overflows here
        except OverflowError:
            vector = np.array([np.inf])
        if not np.all(np.isfinite(vector)) or np.any(np.abs(vector) > np.finfo(np.float32).max):
            raise InvalidQueryError("embedding_input must be finite numbers (1e400 and NaN are not)")
        hits = engine.search_vector(vector, k=num)
    return [
        {"id": h.id, "similarity": rounded_score(h.score), "url": f"{base}api/images/{h.id}", "caption": os.path.basename(h.path)}
        for h in hits
    ]
