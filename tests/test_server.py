"""The HTTP API: search (text, negatives, tags, uploaded images, more like this), files by id,
thumbnails, info, clip-retrieval compatibility, errors, and a real uvicorn server on 127.0.0.1."""

from __future__ import annotations

import base64
import io
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="the server's dependencies are not installed: pip install 'searchlite[serve]'")

from tests.server_fixtures import (  # noqa: E402
    LABELS,
    MEDIA,
    MEDIA_SIZE,
    SCENES,
    caption_of,
    clip_client_body,
    make_shapes,
    media_index,  # noqa: F401
    png_bytes,
    shapes_index,  # noqa: F401
)

BASE = "http://127.0.0.1:8765"


@pytest.fixture(scope="module")
def engine(shapes_index):
    from searchlite import SearchEngine

    with SearchEngine.open(shapes_index[1], create=False) as engine:
        yield engine


@pytest.fixture(scope="module")
def client(engine, tmp_path_factory):
    from fastapi.testclient import TestClient

    from searchlite.server.app import create_app
    from searchlite.server.settings import ServerSettings

    settings = ServerSettings(thumb_dir=tmp_path_factory.mktemp("thumbs"))
    with TestClient(create_app(engine, settings), base_url=BASE) as client:
        yield client


def search(client, **params):
    response = client.get("/api/search", params=params)
    assert response.status_code == 200, response.text
    return response.json()["hits"]


def test_text_search_finds_the_right_shapes(client) -> None:
    hits = search(client, q="a red circle", k=3)
    assert [h["score"] for h in hits] == sorted((h["score"] for h in hits), reverse=True)
    captions = [caption_of(h["path"]) for h in hits]
    assert "red circle" in captions[0] and all("red" in c for c in captions), captions
    hit = hits[0]
    assert set(hit) == {"id", "path", "score", "width", "height", "size", "tags", "taken_at", "thumb", "image", "view"}
    assert hit["thumb"] == f"{BASE}/api/thumbs/{hit['id']}" and hit["image"] == f"{BASE}/api/images/{hit['id']}"
    assert hit["view"] == f"{BASE}/api/view/{hit['id']}"
    assert (hit["width"], hit["height"]) == (64, 64) and hit["size"] == os.path.getsize(hit["path"])
    assert hit["tags"] == ["red"]


def test_pages_continue_where_the_last_one_ended(client) -> None:
    everything = search(client, q="a green square", k=20)
    pages = search(client, q="a green square", k=10) + search(client, q="a green square", k=10, offset=10)
    assert [h["id"] for h in pages] == [h["id"] for h in everything]


def test_negatives_and_tags_filter(client) -> None:
    plain = search(client, q="a circle", k=10)
    steered = client.get("/api/search", params=[("q", "a circle"), ("not", "red"), ("not", "yellow"), ("k", "10")]).json()["hits"]
    colours = lambda hits: sum(("red" in caption_of(h["path"])) + ("yellow" in caption_of(h["path"])) for h in hits)  # noqa: E731
    assert colours(plain) > 0  # the plain query finds red or yellow circles: the negatives have some to remove
    assert colours(steered) == 0 and all("circle" in caption_of(h["path"]) for h in steered), [caption_of(h["path"]) for h in steered]
    tagged = search(client, q="a shape", tag="blue", k=50)
    assert tagged and all(h["tags"] == ["blue"] for h in tagged)
    unknown = client.get("/api/search", params={"q": "a shape", "tag": "no such tag"})
    assert unknown.status_code == 404 and unknown.json() == {"error": "unknown tag 'no such tag': this index's tags are blue, green, red, yellow"}


def test_more_like_this_and_uploaded_images(client) -> None:
    first = search(client, q="a yellow triangle", k=1)[0]
    similar = search(client, like=first["id"], k=5)
    assert similar[0]["id"] == first["id"] and similar[0]["score"] > 0.999
    data = Path(first["path"]).read_bytes()
    response = client.post("/api/search", files={"image": ("mine.png", data, "image/png")}, data={"k": "3"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["hits"][0]["id"] == first["id"] and body["image_key"]
    # the key stands for the image in later pages and in the page's URL (back button, bookmarks)
    again = search(client, image=body["image_key"], k=3)
    assert [h["id"] for h in again] == [h["id"] for h in body["hits"]]
    mixed = client.post("/api/search", files={"image": ("mine.png", data, "image/png")}, data={"q": "blue", "k": "3"}).json()["hits"]
    assert mixed and mixed != body["hits"]
    missing = client.get("/api/search", params={"image": "0" * 24})
    assert missing.status_code == 404 and "drop it again" in missing.json()["error"]


def test_a_broken_upload_is_a_clean_422_naming_the_upload(client) -> None:
    response = client.post("/api/search", files={"image": ("x.png", b"\x89PNG\r\n\x1a\nnot really", "image/png")})
    assert response.status_code == 422
    message = response.json()["error"]
    assert "uploaded image" in message and "/tmp" not in message and "searchlite-upload" not in message


def test_files_are_served_by_id_with_their_type(client, engine) -> None:
    hit = search(client, q="a blue circle", k=1)[0]
    response = client.get(f"/api/images/{hit['id']}")
    assert response.status_code == 200
    assert response.headers["content-type"] == "image/png"
    assert response.content == Path(hit["path"]).read_bytes()
    assert client.get("/api/images/999999").status_code == 404
    assert client.get("/api/images/-3").json() == {"error": "no indexed image with id -3"}


def test_thumbnails_are_cached_webp_with_etags_and_remade_when_the_file_changes(client, tmp_path) -> None:
    from PIL import Image

    hit = search(client, q="a green circle", k=1)[0]
    first = client.get(f"/api/thumbs/{hit['id']}")
    assert first.status_code == 200 and first.headers["content-type"] == "image/webp"
    assert "max-age" in first.headers["cache-control"]
    etag = first.headers["etag"]
    assert client.get(f"/api/thumbs/{hit['id']}", headers={"If-None-Match": etag}).status_code == 304
    folder = client.app.state.thumbs.folder
    assert len(list(folder.glob(f"{hit['id']}-*.webp"))) == 1
    # the file changes (same size class, new pixels): not served until it is indexed again, then a
    # new thumbnail, the old one dropped
    path = Path(hit["path"])
    original, before = path.read_bytes(), path.stat()
    engine = client.app.state.engine
    try:
        Image.new("RGB", (64, 64), (0, 0, 0)).save(path)
        stale = client.get(f"/api/thumbs/{hit['id']}")
        assert stale.status_code == 404 and "changed" in stale.json()["error"] and "index the folder again" in stale.json()["error"]
        engine.index(path.parent)
        changed = client.get(f"/api/thumbs/{hit['id']}")
        assert changed.headers["etag"] != etag
        assert Image.open(io.BytesIO(changed.content)).getpixel((5, 5)) == (0, 0, 0)
        assert len(list(folder.glob(f"{hit['id']}-*.webp"))) == 1
    finally:
        path.write_bytes(original)
        os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
        engine.index(path.parent)


def test_thumbnails_apply_exif_orientation(engine_factory, photos, tmp_path) -> None:
    from fastapi.testclient import TestClient
    from PIL import Image

    from searchlite.server.app import create_app

    rotated = photos / "rotated.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to view: stored 80x40, shown 40x80
    Image.new("RGB", (80, 40), (10, 120, 200)).save(rotated, exif=exif)
    engine = engine_factory()
    engine.index(photos)
    with TestClient(create_app(engine), base_url=BASE) as client:
        hit = next(h for h in client.get("/api/search", params={"q": "x", "k": 50}).json()["hits"] if h["path"].endswith("rotated.jpg"))
        assert (hit["width"], hit["height"]) == (40, 80)
        thumb = Image.open(io.BytesIO(client.get(f"/api/thumbs/{hit['id']}").content))
        assert thumb.size == (40, 80)


def test_thumbnails_live_beside_the_index_or_in_the_user_cache(tmp_path, monkeypatch) -> None:
    from searchlite.server import settings

    index = tmp_path / "idx"
    index.mkdir()
    assert settings.thumbnail_dir(index) == tmp_path / ".idx-thumbs"  # hidden: indexing tmp_path skips it
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(settings.os, "access", lambda path, mode: False)  # a read-only index (root ignores chmod)
    assert settings.thumbnail_dir(index).parent == tmp_path / "cache" / "searchlite" / "thumbs"


def test_info_and_tags(client, shapes_index) -> None:
    info = client.get("/api/info").json()
    assert info["images"] == len(shapes_index[2]) and info["failed"] == 0 and info["failed_files"] == []
    assert "searchlite-shapes" in info["model"] and info["name"] == "index"
    assert info["model_name"] == "searchlite-shapes"  # what the page shows: not the checkpoint's path
    tags = client.get("/api/tags").json()["tags"]
    assert {t["label"] for t in tags} == set(LABELS.split(",")) and sum(t["count"] for t in tags) >= len(shapes_index[2])


def test_info_lists_failed_files_with_reasons(engine_factory, photos) -> None:
    from fastapi.testclient import TestClient

    from searchlite.server.app import create_app

    (photos / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not really a jpeg")
    engine = engine_factory()
    engine.index(photos)
    with TestClient(create_app(engine), base_url=BASE) as client:
        failed = client.get("/api/info").json()["failed_files"]
    assert [Path(f["path"]).name for f in failed] == ["broken.jpg"] and "cannot decode" in failed[0]["error"]


def test_openapi_schema_lists_the_api(client) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/api/search", "/api/images/{image_id}", "/api/thumbs/{image_id}", "/api/info", "/api/tags", "/knn-service", "/indices-list"} <= set(paths)
    assert client.get("/docs").status_code == 404  # Swagger UI would load scripts from a CDN


# --- clip-retrieval -------------------------------------------------------------------------------


def test_clip_retrieval_requests_are_answered_in_its_shape(client, engine) -> None:
    assert client.get("/indices-list").json() == ["index"]
    # ClipClient posts json.dumps(...) with no content type
    text = client.post("/knn-service", content=clip_client_body(text="a blue square", num_images=5))
    assert text.status_code == 200, text.text
    results = text.json()
    assert len(results) == 5 and all(set(r) == {"id", "similarity", "url", "caption"} for r in results)
    assert "blue square" in caption_of(engine.files([results[0]["id"]])[results[0]["id"]].path)
    assert results[0]["url"] == f"{BASE}/api/images/{results[0]['id']}"
    path = engine.files([results[0]["id"]])[results[0]["id"]].path
    encoded = base64.b64encode(Path(path).read_bytes()).decode("utf-8")
    by_image = client.post("/knn-service", content=clip_client_body(image=encoded, num_images=3)).json()
    assert by_image[0]["id"] == results[0]["id"] and by_image[0]["similarity"] > 0.999
    vector = engine.stored_vector(results[0]["id"]).tolist()
    by_embedding = client.post("/knn-service", content=clip_client_body(embedding_input=vector, num_images=2, modality="text")).json()
    assert by_embedding[0]["id"] == results[0]["id"]


def test_clip_retrieval_mistakes_are_clean_errors(client) -> None:
    cases = [
        (clip_client_body(text="a cat", indice_name="laion5B"), 404, "no index named 'laion5B'"),
        (clip_client_body(image_url="http://example.com/x.jpg"), 400, "image_url is not supported"),
        (clip_client_body(), 400, "give one of text"),
        (clip_client_body(text="a", image="AAAA"), 400, "only one of"),
        (clip_client_body(image="not base64!!"), 400, "not valid base64"),
        (clip_client_body(embedding_input=[1.0, 2.0]), 400, "finite numbers"),
        (clip_client_body(text="a", num_images=0), 400, "num_images"),
        ("[1, 2]", 400, "JSON object"),
        ("{not json", 400, "JSON object"),
    ]
    for body, status, message in cases:
        response = client.post("/knn-service", content=body)
        assert response.status_code == status, (body[:80], response.text)
        assert message in response.json()["error"]


# --- safety ---------------------------------------------------------------------------------------


def test_security_headers_and_no_cors_by_default(client) -> None:
    response = client.get("/")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/html")
    csp = response.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["referrer-policy"] == "no-referrer"
    preflight = client.options("/api/search", headers={"Origin": "http://evil.example", "Access-Control-Request-Method": "GET"})
    assert "access-control-allow-origin" not in preflight.headers
    assert "access-control-allow-origin" not in client.get("/api/tags", headers={"Origin": "http://evil.example"}).headers


def test_cors_only_for_the_origins_asked_for(engine) -> None:
    from fastapi.testclient import TestClient

    from searchlite.server.app import create_app
    from searchlite.server.settings import ServerSettings

    app = create_app(engine, ServerSettings(cors_origins=("http://app.example",)))
    with TestClient(app, base_url=BASE) as client:
        assert client.get("/api/tags", headers={"Origin": "http://app.example"}).headers["access-control-allow-origin"] == "http://app.example"
        assert "access-control-allow-origin" not in client.get("/api/tags", headers={"Origin": "http://evil.example"}).headers


def test_the_page_has_no_inline_script_or_style() -> None:
    import re
    from importlib import resources

    html = resources.files("searchlite.server").joinpath("static/index.html").read_text()
    assert not re.search(r"<script(?![^>]*\bsrc=)", html), "inline <script>"
    assert not re.search(r"\sstyle=|<style|\son[a-z]+=", html), "inline style or event handler"


@pytest.mark.parametrize("host", ["localhost:8765", "127.0.0.1:8765", "[::1]:8765", "127.0.0.1"])
def test_loopback_host_headers_are_answered(client, host) -> None:
    assert client.get("/api/tags", headers={"Host": host}).status_code == 200


@pytest.mark.parametrize("host", ["evil.example", "evil.example:8765", "127.0.0.1.evil.example", "localhost.evil.example:8765", "192.168.1.9:8765", ""])
def test_other_host_headers_are_refused_against_dns_rebinding(client, host) -> None:
    response = client.get("/api/tags", headers={"Host": host})
    assert response.status_code == 421 and "host name" in response.json()["error"]


def test_a_token_is_required_once_set(engine) -> None:
    from fastapi.testclient import TestClient

    from searchlite.server.app import create_app
    from searchlite.server.settings import ServerSettings

    app = create_app(engine, ServerSettings(host="0.0.0.0", token="s3cret-token"))
    with TestClient(app, base_url="http://127.0.0.1:8765") as client:
        refused = client.get("/api/tags")
        assert refused.status_code == 401 and "token" in refused.json()["error"]
        assert client.get("/api/tags", headers={"Authorization": "Bearer wrong-token"}).status_code == 401
        assert client.get("/api/tags", headers={"Authorization": "Bearer s3cret-token"}).status_code == 200
        assert client.get("/?token=wrong", follow_redirects=False).status_code == 401
        opened = client.get("/?token=s3cret-token&q=red", follow_redirects=False)
        assert opened.status_code == 303 and opened.headers["location"] == "/?q=red"
        assert "HttpOnly" in opened.headers["set-cookie"] and "SameSite=Strict" in opened.headers["set-cookie"]
        assert client.get("/api/tags").status_code == 200  # the cookie now rides along
        sneaky = client.get("/%2F/evil.example/?token=s3cret-token", follow_redirects=False)
        assert sneaky.status_code == 303 and not sneaky.headers["location"].startswith("//")


def test_uploads_are_capped(engine) -> None:
    from fastapi.testclient import TestClient

    from searchlite.server.app import create_app
    from searchlite.server.settings import ServerSettings

    with TestClient(create_app(engine, ServerSettings(max_upload_bytes=100_000)), base_url=BASE) as client:
        big = client.post("/api/search", files={"image": ("big.png", b"\0" * 200_000, "image/png")})
        assert big.status_code == 413 and "limit" in big.json()["error"]

        def chunks():  # no content-length: counted as it arrives
            for _ in range(30):
                yield b"\0" * 10_000

        streamed = client.post("/knn-service", content=chunks())
        assert streamed.status_code == 413


def _bomb_png() -> bytes:
    """A 20000x20000 PNG (400 MP) that compresses to a few hundred kB."""
    import struct
    import zlib

    width = height = 20000
    row = b"\0" + b"\0" * width  # filter byte + one grey byte per pixel
    raw = zlib.compress(row * height, 9)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)) + chunk(b"IDAT", raw) + chunk(b"IEND", b"")


def hostile_requests() -> list[tuple[str, str, dict]]:
    """(method, url, request kwargs): traversal (plain, encoded, double-encoded), NUL bytes, bad
    ids, malformed and oversized bodies, a decompression bomb; each must be a clean 4xx."""
    cases: list[tuple[str, str, dict]] = []
    for target in ["../../../../etc/passwd", "..%2f..%2f..%2fetc%2fpasswd", "..%252f..%252fetc%252fpasswd", "%2e%2e/%2e%2e/etc/passwd",
                   "%252e%252e%252fetc%252fpasswd", "..\\..\\windows\\win.ini", "%00", "1%00", "1%00.png", "/etc/passwd", "%2fetc%2fpasswd",
                   "-1", "-9223372036854775809", "99999999999999999999999999", "1e3", "0x10", "1.5", " 1", "%20", "abc", "１", "123456789"]:
        cases.append(("GET", f"/api/images/{target}", {}))
        cases.append(("GET", f"/api/thumbs/{target}", {}))
    for target in ["../searchlite.db", "..%2fserver%2fapp.py", "%2e%2e%2f%2e%2e%2fengine.py", "index.html%00", "app.js%00.png", "nothere.js", "....//....//etc/passwd"]:
        cases.append(("GET", f"/static/{target}", {}))
    for params in ["k=0", "k=-1", "k=100000", "k=abc", "offset=-5", "offset=99999999", "like=-1", "like=abc", "like=99999999999", "q=", "q=%00",
                   "image=..%2f..%2fetc%2fpasswd", "image=%00", "q=" + "a" * 5000, "not=x", "tag=%00&q=a&k=0"]:
        cases.append(("GET", f"/api/search?{params}", {}))
    cases += [
        ("POST", "/api/search", {"content": b"garbage", "headers": {"content-type": "multipart/form-data; boundary=xyz"}}),
        ("POST", "/api/search", {"content": b"--xyz\r\nContent-Disposition: form-data; name=\"image\"; filename=\"a.png\"\r\n\r\nabc", "headers": {"content-type": "multipart/form-data; boundary=xyz"}}),
        ("POST", "/api/search", {"content": b"{}", "headers": {"content-type": "application/json"}}),
        ("POST", "/api/search", {"files": {"image": ("a.png", b"", "image/png")}}),
        ("POST", "/api/search", {"files": {"image": ("a.png", b"GIF89a\x01\x00\x01\x00", "image/gif")}}),
        ("POST", "/api/search", {"files": {"image": ("../../etc/passwd", b"\x00" * 100, "image/png")}}),
        ("POST", "/api/search", {"files": {"image": ("bomb.png", _bomb_png(), "image/png")}}),
        ("POST", "/api/search", {"files": {"image": ("a.png", png_bytes(), "image/png")}, "data": {"k": "0"}}),
        ("POST", "/api/search", {"content": b"x" * 10, "headers": {"content-length": "abc"}}),
        ("POST", "/knn-service", {"content": b"\xff\xfe\x00garbage"}),
        ("POST", "/knn-service", {"content": clip_client_body(image=base64.b64encode(_bomb_png()).decode())}),
        ("POST", "/knn-service", {"content": clip_client_body(embedding_input=["a"] * 16)}),
        ("POST", "/knn-service", {"content": clip_client_body(text=["a", "b"])}),
        ("POST", "/knn-service", {"content": clip_client_body(text="a", num_images="ten")}),
        ("POST", "/knn-service", {"content": clip_client_body(text="a", num_images=10**9)}),
        ("POST", "/knn-service", {"content": clip_client_body(embedding_input=[float("nan")] * 16).replace("NaN", "NaN")}),
        ("GET", "/api/nothing", {}),
        ("DELETE", "/api/images/1", {}),
        ("PUT", "/api/search", {"content": b"{}"}),
    ]
    return cases


def test_hostile_requests_each_get_a_clean_4xx(client) -> None:
    cases = hostile_requests()
    assert len(cases) >= 50
    for method, url, kwargs in cases:
        response = client.request(method, url, **kwargs)
        assert 400 <= response.status_code < 500, (method, url, response.status_code, response.text[:200])
        text = response.text
        assert "Traceback" not in text and "File \"" not in text, (method, url, text[:200])
        if response.headers.get("content-type", "").startswith("application/json"):
            assert set(response.json()) == {"error"}, (method, url, text[:200])
        else:
            pytest.fail(f"{method} {url}: {response.status_code} {response.headers.get('content-type')}")


def test_the_server_never_writes_to_the_index(client, shapes_index) -> None:
    index = shapes_index[1]
    before = {p.name: p.stat().st_mtime_ns for p in index.iterdir() if not p.name.endswith(("-wal", "-shm"))}
    for hit in search(client, q="a red square", k=10):
        client.get(hit["thumb"])
        client.get(hit["image"])
    client.post("/api/search", files={"image": ("a.png", png_bytes(), "image/png")})
    after = {p.name: p.stat().st_mtime_ns for p in index.iterdir() if not p.name.endswith(("-wal", "-shm"))}
    assert before == after


# --- a real server --------------------------------------------------------------------------------


def test_a_real_uvicorn_server_on_an_ephemeral_port(engine, tmp_path, monkeypatch) -> None:
    import threading
    from concurrent.futures import ThreadPoolExecutor

    import httpx

    from searchlite.server.app import create_app
    from searchlite.server.run import Server, bind
    from searchlite.server.settings import ServerSettings

    server = Server(create_app(engine, ServerSettings(port=0, thumb_dir=tmp_path / "thumbs")), bind("127.0.0.1", 0))
    server.start()
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{server.port}", timeout=30) as http:
            hits = http.get("/api/search", params={"q": "a yellow circle", "k": 61}).json()["hits"]
            assert len(hits) == 61
            hits, late = hits[:60], hits[60]
            assert hits[0]["thumb"].startswith(f"http://127.0.0.1:{server.port}/")
            assert http.get("/").text.startswith("<!doctype html>")
            for hit in hits:  # make the thumbnails once
                assert http.get(hit["thumb"]).status_code == 200
            # a browser fetches them over 6 connections at once, while a thumbnail not made yet is
            # being made: held here until the cached ones have come back (or 30 s, failing the test)
            making, release = threading.Event(), threading.Event()
            decoded: list[str] = []
            real_decode = engine.decode_image

            def held_decode(path, *args, **kwargs):
                decoded.append(str(path))
                making.set()
                release.wait(30)
                return real_decode(path, *args, **kwargs)

            monkeypatch.setattr(engine, "decode_image", held_decode)
            clients = [httpx.Client(timeout=60) for _ in range(6)]
            with ThreadPoolExecutor(7) as pool:
                slow = pool.submit(lambda: httpx.get(late["thumb"], timeout=60).status_code)
                assert making.wait(30), "the thumbnail not made yet was never made"
                codes = list(pool.map(lambda ih: clients[ih[0] % 6].get(ih[1]["thumb"]).status_code, enumerate(hits)))
                assert not slow.done()  # the cached ones were answered while it was still being made
                release.set()
                assert slow.result() == 200
            assert codes == [200] * len(hits)
            assert decoded == [late["path"]]  # no cached thumbnail was made again
    finally:
        server.stop()


def test_serve_command_prints_the_url_and_answers(shapes_index, tmp_path) -> None:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent), "HOME": str(tmp_path)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "searchlite", "serve", "--index", str(shapes_index[1]), "--port", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )
    try:
        url = proc.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:") and url.endswith("/"), url
        import httpx

        assert httpx.get(url + "api/tags", timeout=30).status_code == 200
    finally:
        proc.terminate()
        proc.wait(30)
    assert "serving" in proc.stderr.read()


def test_serve_refuses_a_lan_host_without_a_token(shapes_index) -> None:
    from typer.testing import CliRunner

    from searchlite.cli import app

    result = CliRunner().invoke(app, ["serve", "--index", str(shapes_index[1]), "--host", "0.0.0.0"])
    assert result.exit_code == 2
    assert "reachable from other machines" in result.output and "--token" in result.output


def test_serve_says_when_the_port_is_taken(shapes_index) -> None:
    import socket

    from typer.testing import CliRunner

    from searchlite.cli import app

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        result = CliRunner().invoke(app, ["serve", "--index", str(shapes_index[1]), "--port", str(port)])
    assert result.exit_code == 1 and f"port {port} on 127.0.0.1 is in use" in result.output


def test_serve_help_imports_neither_torch_nor_the_web_stack() -> None:
    code = (
        "import sys\nfrom searchlite.cli import app\n"
        "try:\n    app(['serve', '--help'])\nexcept SystemExit:\n    pass\n"
        "print(' '.join(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'open_clip', 'fastapi', 'uvicorn', 'mcp'))), file=sys.stderr)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert "--token" in result.stdout and result.stderr.strip() == ""


def test_type_keeps_images_or_videos(client) -> None:
    assert search(client, q="a circle", type="video") == []
    assert len(search(client, q="a circle", type="image", k=5)) == 5
    response = client.get("/api/search", params={"q": "a circle", "type": "movie"})
    assert response.status_code == 400 and response.json() == {"error": "type 'movie': use one of image, video"}


def test_explain_overlays_where_a_text_matches(client) -> None:
    hit = search(client, q="a red circle", k=1)[0]
    response = client.get(f"/api/explain/{hit['id']}", params={"q": "a red circle"})
    assert response.status_code == 200 and response.headers["content-type"] == "image/png"
    from io import BytesIO

    from PIL import Image

    assert Image.open(BytesIO(response.content)).size == (hit["width"], hit["height"])
    assert client.get("/api/explain/999999", params={"q": "x"}).status_code == 404


# --- every kind of file: originals, thumbnails, what the page shows ---------------------------------


@pytest.fixture(scope="module")
def media(media_index, tmp_path_factory):
    """(client, kind -> hit for "a red circle") on the index of one file of each kind."""
    from fastapi.testclient import TestClient

    from searchlite import SearchEngine
    from searchlite.server.app import create_app
    from searchlite.server.settings import ServerSettings

    paths, index = media_index
    with SearchEngine.open(index, create=False) as engine:
        with TestClient(create_app(engine, ServerSettings(thumb_dir=tmp_path_factory.mktemp("media_thumbs"))), base_url=BASE) as client:
            hits = {Path(h["path"]).name: h for h in search(client, q="a red circle", k=20)}
            yield client, {kind: hits[path.name] for kind, path in paths.items()}


def _centre(data: bytes) -> tuple[int, int, int]:
    from PIL import Image

    img = Image.open(io.BytesIO(data)).convert("RGB")
    return img.getpixel((img.width // 2, img.height // 2))


def _near(pixel: tuple[int, int, int], colour: str, tolerance: int = 40) -> bool:
    return all(abs(a - b) <= tolerance for a, b in zip(pixel, make_shapes.COLORS[colour]))


CONTENT_TYPES = {
    "jpeg": "image/jpeg", "png": "image/png", "tiff": "image/tiff", "bmp": "image/bmp", "gif": "image/gif", "webp": "image/webp",
    "heic": "image/heic", "avif": "image/avif", "dng": "image/x-adobe-dng", "mp4": "video/mp4",
}


@pytest.mark.parametrize("kind", list(MEDIA))
def test_originals_go_out_with_their_real_content_type(media, kind) -> None:
    client, hits = media
    response = client.get(hits[kind]["image"])
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == CONTENT_TYPES[kind]
    assert response.content == Path(hits[kind]["path"]).read_bytes()


def test_a_video_is_served_in_ranges_so_a_browser_can_seek(media) -> None:
    client, hits = media
    response = client.get(hits["mp4"]["image"], headers={"Range": "bytes=100-199"})
    assert response.status_code == 206 and response.content == Path(hits["mp4"]["path"]).read_bytes()[100:200]


@pytest.mark.parametrize("kind", list(MEDIA))
def test_every_kind_has_a_thumbnail_of_its_picture(media, kind) -> None:
    client, hits = media
    hit = hits[kind]
    response = client.get(hit["thumb"])
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/webp"
    colour = MEDIA[kind][1]  # a video's: the shot that matched "a red circle"
    assert _near(_centre(response.content), colour), (kind, _centre(response.content))


def test_a_video_hit_says_when_and_its_thumbnail_is_the_matching_shot(media) -> None:
    client, hits = media
    hit = hits["mp4"]
    assert hit["type"] == "video" and (hit["time"], hit["span"]) == (2.0, 2.0)  # the red circle's shot
    assert hit["thumb"].endswith(f"/api/thumbs/{hit['id']}?t=3.0")  # the middle of that shot
    assert hit["view"].endswith(f"/api/view/{hit['id']}#t=2.00")  # played from its start
    first = client.get(f"/api/thumbs/{hit['id']}")  # no time (a "more like this" chip): the first shot
    assert first.status_code == 200 and _near(_centre(first.content), "blue")
    assert first.headers["etag"] != client.get(hit["thumb"]).headers["etag"]
    late = client.get(f"/api/thumbs/{hit['id']}", params={"t": 60})
    assert late.status_code == 422 and late.json() == {"error": f"image {hit['id']} cannot be decoded any more: the video has no frame at 60s or later"}
    assert client.get(f"/api/thumbs/{hit['id']}", params={"t": "soon"}).status_code == 400


@pytest.mark.parametrize("kind", list(MEDIA))
def test_the_view_is_the_original_where_a_browser_shows_it_else_a_jpeg(media, kind) -> None:
    client, hits = media
    hit = hits[kind]
    response = client.get(hit["view"].split("#")[0])
    assert response.status_code == 200, response.text
    if kind in ("heic", "tiff", "dng"):
        assert response.headers["content-type"] == "image/jpeg" and "etag" in response.headers
        from PIL import Image

        assert Image.open(io.BytesIO(response.content)).size == MEDIA_SIZE
        assert _near(_centre(response.content), MEDIA[kind][1])
        assert client.get(hit["view"], headers={"If-None-Match": response.headers["etag"]}).status_code == 304
    else:
        assert response.headers["content-type"] == CONTENT_TYPES[kind]
        assert response.content == Path(hit["path"]).read_bytes()


def test_a_large_picture_is_viewed_at_most_2048_pixels_wide_and_the_model_by_its_name(engine_factory, tmp_path) -> None:
    from fastapi.testclient import TestClient
    from PIL import Image

    from searchlite.server.app import create_app
    from searchlite.server.settings import ServerSettings

    folder = tmp_path / "scans"
    folder.mkdir()
    Image.new("RGB", (3000, 1000), (200, 40, 40)).save(folder / "panorama.tif")
    engine = engine_factory()
    engine.index(folder)
    with TestClient(create_app(engine, ServerSettings(thumb_dir=tmp_path / "thumbs")), base_url=BASE) as client:
        hit = search(client, q="x")[0]
        view = client.get(hit["view"])
        assert view.headers["content-type"] == "image/jpeg" and Image.open(io.BytesIO(view.content)).size == (2048, 683)
        assert client.get("/api/info").json()["model_name"] == "custom model / tiny-clip.pt"


def test_models_are_named_as_people_name_them() -> None:
    from searchlite.models.spec import ModelSpec
    from searchlite.server.app import model_name

    assert model_name(ModelSpec(name="ViT-B-32", pretrained="laion2b_s34b_b79k")) == "ViT-B-32 / laion2b_s34b_b79k"
    assert model_name(ModelSpec(name="ViT-B-32", checkpoint="/data/models/mine.pt", checkpoint_sha256="ab" * 32)) == "ViT-B-32 / mine.pt"
    assert model_name(ModelSpec(hf_hub="timm/some-clip")) == "hf-hub:timm/some-clip"
