"""Issue 26: `serve` and `mcp` trust nothing that is at an indexed path now. Each test replays one
finding of the security review (numbered as in the issue) against a small index whose files are
swapped for links, FIFOs and devices after indexing; caps are lowered instead of using huge files."""

from __future__ import annotations

import base64
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="the server's dependencies are not installed: pip install 'searchlite[serve]'")

from tests.server_fixtures import build_shapes_index, clip_client_body, png_bytes  # noqa: E402

BASE = "http://127.0.0.1:8765"
TOKEN = "a-token-of-twenty-chars"
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def collection(tmp_path_factory):
    """(photos, index, {name: id}): 10 scenes and a link to one of them, indexed; each test spoils
    its own files (and puts them back)."""
    from searchlite import SearchEngine

    root = tmp_path_factory.mktemp("hardening")
    photos = root / "shapes"
    photos.mkdir()
    (photos / "link.png").symlink_to("00001.png")  # a link inside the collection is indexed like its file
    photos, index, _ = build_shapes_index(root, count=10)
    with SearchEngine.open(index, create=False) as engine:
        ids = {Path(r.path).name: r.id for r in engine.files(range(1, 100)).values()}
    return photos, index, ids


@pytest.fixture(scope="module")
def engine(collection):
    from searchlite import SearchEngine

    with SearchEngine.open(collection[1], create=False) as engine:
        yield engine


def make_client(engine, tmp_path, **settings):
    from fastapi.testclient import TestClient

    from searchlite.server.app import create_app
    from searchlite.server.settings import ServerSettings

    return TestClient(create_app(engine, ServerSettings(thumb_dir=tmp_path / "thumbs", **settings)), base_url=BASE)


@pytest.fixture()
def client(engine, tmp_path):
    with make_client(engine, tmp_path) as client:
        yield client


class Swapped:
    """A file of the collection moved aside and something else put at its path, then put back (its
    time kept) on leaving."""

    def __init__(self, path: Path, tmp_path: Path) -> None:
        self.path, self.aside = path, tmp_path / f"aside-{path.name}"

    def __enter__(self) -> Path:
        shutil.move(self.path, self.aside)
        return self.path

    def __exit__(self, *exc: object) -> None:
        if self.path.is_symlink() or self.path.exists():
            self.path.unlink()
        shutil.move(self.aside, self.path)


def soon(call, seconds: float = 10.0):
    """call() from another thread: its result, failing the test if it takes longer than seconds."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(call).result(timeout=seconds)


# --- 1. a file swapped for a link is not served --------------------------------------------------


def test_1_a_file_swapped_for_a_link_out_of_the_collection_is_not_served(collection, client, tmp_path) -> None:
    photos, _, ids = collection
    secret = tmp_path / "secret.txt"
    secret.write_text("root:x:0:0:the secret\n")
    for target in (secret, Path("/etc/passwd")):
        with Swapped(photos / "00002.png", tmp_path) as path:
            path.symlink_to(target)
            for url in (f"/api/images/{ids['00002.png']}", f"/api/view/{ids['00002.png']}", f"/api/thumbs/{ids['00002.png']}"):
                response = client.get(url)
                assert response.status_code == 404, (url, response.status_code)
                assert "changed" in response.json()["error"] and "index the folder again" in response.json()["error"]
                assert b"root:" not in response.content


def test_1_a_link_with_the_indexed_size_and_time_is_still_refused(collection, client, tmp_path) -> None:
    """The attacker pads the secret to the indexed file's size and copies its time: the link is
    followed only to the file whose content hash was indexed."""
    photos, _, ids = collection
    original = photos / "00003.png"
    st = original.stat()
    secret = tmp_path / "secret.bin"
    secret.write_bytes(b"root:x:0:0:" + b"s" * (st.st_size - 11))
    os.utime(secret, ns=(st.st_atime_ns, st.st_mtime_ns))
    with Swapped(original, tmp_path) as path:
        path.symlink_to(secret)
        assert client.get(f"/api/images/{ids['00003.png']}").status_code == 404
    # the same bytes in place of the file itself (as through a folder swapped for a link): its hash differs
    with Swapped(original, tmp_path) as path:
        shutil.copyfile(secret, path)
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
        assert client.get(f"/api/images/{ids['00003.png']}").status_code == 404


def test_1_a_link_that_was_indexed_inside_the_collection_is_still_served(collection, client) -> None:
    photos, _, ids = collection
    response = client.get(f"/api/images/{ids['link.png']}")
    assert response.status_code == 200 and response.content == (photos / "00001.png").read_bytes()
    assert client.get(f"/api/thumbs/{ids['link.png']}").status_code == 200


# --- 2. a FIFO blocks nothing ---------------------------------------------------------------------


def test_2_a_fifo_at_an_indexed_path_is_refused_at_once_and_searches_go_on(collection, engine, client, tmp_path) -> None:
    photos, _, ids = collection
    number = ids["00004.png"]
    with Swapped(photos / "00004.png", tmp_path) as path:
        os.mkfifo(path)
        started = time.monotonic()
        for url in (f"/api/images/{number}", f"/api/view/{number}", f"/api/thumbs/{number}", f"/api/explain/{number}?q=red"):
            response = soon(lambda url=url: client.get(url))
            assert response.status_code == 404, (url, response.text)
        assert soon(lambda: client.get("/api/search", params={"q": "a red circle"})).status_code == 200
        # the library's own path for callers' files: a FIFO is not read (MCP's search_by_image)
        from searchlite.errors import ImageDecodeError

        with pytest.raises(ImageDecodeError, match="not a regular file"):
            soon(lambda: engine.search(image=str(path), k=1))
        assert time.monotonic() - started < 10


# --- 3. files are read in the decoder process, capped; explains are bounded ----------------------


def test_3_files_for_pictures_are_read_by_the_decoder_process_not_the_server(collection, client, monkeypatch) -> None:
    from searchlite.media import embed_files

    def read_here(*args, **kwargs):
        raise AssertionError("the server read a file into its own memory")

    monkeypatch.setattr(embed_files, "read_image_file", read_here)
    _, _, ids = collection
    assert client.get(f"/api/thumbs/{ids['00005.png']}").status_code == 200
    assert client.get(f"/api/explain/{ids['00005.png']}", params={"q": "a red circle"}).status_code == 200


def test_3_files_over_the_cap_are_not_decoded_but_originals_still_stream(collection, engine, tmp_path) -> None:
    photos, _, ids = collection
    size = (photos / "00006.png").stat().st_size
    with make_client(engine, tmp_path, max_file_bytes=size - 1) as client:
        for url in (f"/api/thumbs/{ids['00006.png']}", f"/api/explain/{ids['00006.png']}?q=red"):
            response = client.get(url)
            assert response.status_code == 422 and "limit" in response.json()["error"], (url, response.text)
        original = client.get(f"/api/images/{ids['00006.png']}")
        assert original.status_code == 200 and original.content == (photos / "00006.png").read_bytes()


def test_3_devices_are_never_read(engine) -> None:
    from searchlite.errors import InvalidInputError

    with pytest.raises(InvalidInputError, match="system folder"):
        soon(lambda: engine.search(image="/dev/zero", k=1))


def test_3_explains_are_bounded_the_rest_get_503(collection, engine, tmp_path, monkeypatch) -> None:
    from searchlite.errors import ImageDecodeError
    from searchlite.server import app as app_module

    _, _, ids = collection
    started, release = threading.Event(), threading.Event()

    def slow_explain(*args, **kwargs):
        started.set()
        release.wait(20)
        raise ImageDecodeError("held by the test")

    monkeypatch.setattr(app_module, "EXPLAIN_WAIT_S", 0.2)
    monkeypatch.setattr(engine, "explain", slow_explain)
    with make_client(engine, tmp_path, max_explains=1) as client, ThreadPoolExecutor(2) as pool:
        first = pool.submit(client.get, f"/api/explain/{ids['00007.png']}", params={"q": "red"})
        assert started.wait(10)
        second = client.get(f"/api/explain/{ids['00008.png']}", params={"q": "red"})
        assert second.status_code == 503 and "busy" in second.json()["error"] and second.headers["retry-after"]
        release.set()
        assert first.result(20).status_code == 422


# --- 4. MCP tools read only regular files, capped, optionally inside the indexed folders ----------


def run_mcp(index: Path, args: list[str], calls: list[tuple[str, dict]]) -> list[tuple[bool, str]]:
    """(is_error, text) of each tool call, in one session of `searchlite mcp --index index *args`."""
    import anyio
    from mcp import ClientSession, StdioServerParameters
    from mcp.client.stdio import stdio_client

    params = StdioServerParameters(
        command=sys.executable, args=["-m", "searchlite", "mcp", "--index", str(index), *args], env={**os.environ, "PYTHONPATH": str(ROOT)}
    )

    async def main():
        answers = []
        with anyio.fail_after(90):
            async with stdio_client(params) as (read, write), ClientSession(read, write) as session:
                await session.initialize()
                for name, arguments in calls:
                    result = await session.call_tool(name, arguments)
                    error = getattr(result, "is_error", getattr(result, "isError", False))
                    answers.append((bool(error), " ".join(c.text for c in result.content)))
        return answers

    return anyio.run(main)


def test_4_mcp_tools_refuse_pipes_devices_and_large_files_and_the_session_goes_on(collection, tmp_path) -> None:
    pytest.importorskip("mcp")
    photos, index, _ = collection
    fifo = tmp_path / "fifo.png"
    os.mkfifo(fifo)
    big = tmp_path / "big.png"
    big.write_bytes(png_bytes(size=(400, 400)) + b"\0" * 20_000)
    answers = run_mcp(index, ["--max-file-mb", "0.01"], [
        ("search_by_image", {"path": "/proc/self/fd/0"}),  # the server's own protocol pipe
        ("search_by_image", {"path": str(fifo)}),
        ("search_by_image", {"path": "/dev/zero"}),
        ("search_by_image", {"path": str(big)}),
        ("classify", {"paths": [str(fifo)], "labels": ["red", "blue"]}),
        ("search_by_image", {"path": str(photos / "00001.png"), "k": 1}),
    ])
    assert answers[0][0] and "system folder" in answers[0][1]
    assert answers[1][0] and "not a regular file" in answers[1][1]
    assert answers[2][0] and "system folder" in answers[2][1]
    assert answers[3][0] and "limit" in answers[3][1]
    assert "not a regular file" in answers[4][1]
    assert not answers[5][0] and "00001.png" in answers[5][1]  # still answering


def test_4_mcp_folder_keeps_tools_inside_the_indexed_folders_and_tells_nothing_of_others(collection, tmp_path) -> None:
    pytest.importorskip("mcp")
    photos, index, _ = collection
    outside = tmp_path / "outside.png"
    outside.write_bytes(png_bytes())
    answers = run_mcp(index, ["--folder", str(photos)], [
        ("search_by_image", {"path": str(outside)}),
        ("search_by_image", {"path": str(tmp_path / "missing.png")}),
        ("classify", {"paths": [str(outside)], "labels": ["red", "blue"]}),
        ("search_by_image", {"path": str(photos / "00001.png"), "k": 1}),
    ])
    for error, text in answers[:3]:
        assert error and "outside the folders" in text and "not found" not in text
    assert not answers[3][0]


# --- 5. CORS preflights with a token ---------------------------------------------------------------


def test_5_preflights_are_answered_for_allowed_origins_with_a_token(engine, tmp_path) -> None:
    with make_client(engine, tmp_path, token=TOKEN, cors_origins=("http://app.example",)) as client:
        asked = {"Origin": "http://app.example", "Access-Control-Request-Method": "GET", "Access-Control-Request-Headers": "authorization"}
        preflight = client.options("/api/search", headers=asked)
        assert preflight.status_code == 200 and preflight.headers["access-control-allow-origin"] == "http://app.example"
        other = client.options("/api/search", headers={**asked, "Origin": "http://evil.example"})
        assert "access-control-allow-origin" not in other.headers
        refused = client.get("/api/tags", headers={"Origin": "http://app.example"})  # its page can read why
        assert refused.status_code == 401 and refused.headers["access-control-allow-origin"] == "http://app.example"
        allowed = client.get("/api/tags", headers={"Origin": "http://app.example", "Authorization": f"Bearer {TOKEN}"})
        assert allowed.status_code == 200 and allowed.headers["access-control-allow-origin"] == "http://app.example"


def test_5_cors_star_without_a_token_is_warned_about() -> None:
    from searchlite.server.run import setting_warnings
    from searchlite.server.settings import ServerSettings

    assert any("--token" in w for w in setting_warnings(ServerSettings(cors_origins=("*",))))
    assert setting_warnings(ServerSettings(cors_origins=("*",), token=TOKEN)) == []


# --- 6. the token redirect stays on this origin ------------------------------------------------------


@pytest.mark.parametrize(
    "path, location",
    [("/%5Clocalhost:9/", "/localhost:9/"), ("/%5C%5Cevil.example/", "/evil.example/"), ("/%2F%2Fevil.example/", "/evil.example/"),
     ("/%09/evil.example/", "/%09/evil.example/"), ("/%E2%82%AC", "/%E2%82%AC")],
)
def test_6_the_token_redirect_goes_to_a_same_origin_path(engine, tmp_path, path, location) -> None:
    with make_client(engine, tmp_path, token=TOKEN) as client:
        response = client.get(f"{path}?token={TOKEN}&q=red", follow_redirects=False)
        assert response.status_code == 303 and response.headers["location"] == f"{location}?q=red"


# --- 7. the access log: stderr, no token --------------------------------------------------------------


def test_7_the_access_log_goes_to_stderr_without_the_token_and_token_auto_makes_one(collection, tmp_path) -> None:
    import httpx

    env = {**os.environ, "PYTHONPATH": str(ROOT), "HOME": str(tmp_path)}
    env.pop("SEARCHLITE_TOKEN", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "searchlite", "serve", "--index", str(collection[1]), "--port", "0", "--token", "auto", "--access-log"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )
    try:
        url = proc.stdout.readline().strip()
        token = url.partition("?token=")[2]
        assert len(token) >= 16, url
        with httpx.Client(timeout=30) as http:
            assert http.get(url, follow_redirects=True).status_code == 200  # redirected to / with the cookie
            assert http.get(url.split("?")[0] + "api/tags").status_code == 200
    finally:
        proc.terminate()
        out, err = proc.communicate(timeout=30)
    assert out.strip() == ""  # stdout: the URL alone (read above)
    assert "GET /?token=<hidden>" in err and "GET /api/tags" in err
    assert token not in err


# --- 8. no unhandled 500s ---------------------------------------------------------------------------


def test_8_what_raised_500s_is_now_a_clean_4xx(collection, client, tmp_path) -> None:
    photos, _, ids = collection
    cases = [
        ("GET", "/api/search?like=9223372036854775808", {}),
        ("GET", "/api/search?like=99999999999999999999", {}),
        ("POST", "/knn-service", {"content": clip_client_body(image="data:abc")}),
        ("POST", "/knn-service", {"content": clip_client_body(image="data:")}),
        ("POST", "/knn-service", {"content": clip_client_body(embedding_input=[0.5] * 16).replace("0.5", "1e400", 1)}),
        ("POST", "/knn-service", {"content": clip_client_body(embedding_input=[1] * 16).replace("[1,", "[" + "9" * 400 + ",", 1).replace("[1, ", "[" + "9" * 400 + ", ", 1)}),
        ("POST", "/knn-service", {"content": "[" * 10_000}),
        ("POST", "/knn-service", {"content": '{"text": ' + "[" * 10_000}),
    ]
    for method, url, kwargs in cases:
        response = client.request(method, url, **kwargs)
        assert 400 <= response.status_code < 500, (url, kwargs.get("content", "")[:80], response.status_code, response.text[:200])
        assert set(response.json()) == {"error"}
    with Swapped(photos / "00009.png", tmp_path) as path:
        path.symlink_to("/dev/zero")
        for url in (f"/api/images/{ids['00009.png']}", f"/api/thumbs/{ids['00009.png']}"):
            assert soon(lambda url=url: client.get(url)).status_code == 404


# --- 9. time-outs for incomplete requests; a cap on connections ------------------------------------


@pytest.fixture()
def real_server(engine, tmp_path):
    from searchlite.server.app import create_app
    from searchlite.server.run import Server, bind
    from searchlite.server.settings import ServerSettings

    def start(**values):
        settings = ServerSettings(port=0, thumb_dir=tmp_path / "thumbs", **values)
        server = Server(create_app(engine, settings), bind("127.0.0.1", 0), settings=settings)
        server.start()
        started.append(server)
        return server.port

    started: list = []
    yield start
    for server in started:
        server.stop()


def _wait_until(done, seconds: float, what: str) -> None:
    """Poll done() until it holds, failing after seconds."""
    deadline, pause = time.monotonic() + seconds, threading.Event()
    while not done():
        assert time.monotonic() < deadline, what
        pause.wait(0.005)


def _first_response(sock: socket.socket, seconds: float) -> bytes:
    """One whole HTTP response with a Content-Length, read from sock."""
    sock.settimeout(seconds)
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(4096)
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:"))
    while len(body) < length:
        body += sock.recv(4096)
    return head + b"\r\n\r\n" + body


def _closed_within(sock: socket.socket, seconds: float) -> bytes | None:
    """What the server sent before closing the connection, or None if it kept it open that long."""
    sock.settimeout(seconds)
    data = b""
    try:
        while chunk := sock.recv(4096):
            data += chunk
    except socket.timeout:
        return None
    return data


def test_9_idle_and_trickling_connections_are_closed_and_stalled_bodies_get_408(real_server) -> None:
    port = real_server(token=TOKEN, header_timeout_s=0.5, body_timeout_s=0.5)
    idle = socket.create_connection(("127.0.0.1", port))
    partial = socket.create_connection(("127.0.0.1", port))
    partial.sendall(b"GET /api/tags HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # never ends its headers
    body = socket.create_connection(("127.0.0.1", port))
    body.sendall(f"POST /knn-service HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {TOKEN}\r\nContent-Length: 100\r\n\r\n".encode() + b"{" * 10)
    started = time.monotonic()
    assert _closed_within(idle, 5) == b""
    assert _closed_within(partial, 5) == b""
    answer = _closed_within(body, 5)
    assert answer is not None and answer.startswith(b"HTTP/1.1 408") and b"stalled" in answer
    assert time.monotonic() - started < 5
    # after a response, a connection that starts another request and stalls is closed too
    again = socket.create_connection(("127.0.0.1", port))
    again.sendall(f"GET /api/tags HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {TOKEN}\r\n\r\n".encode())
    first = _first_response(again, 5)  # answered: the next request starts after a response
    again.sendall(b"GET /api/tags HTTP/1.1\r\n")
    rest = _closed_within(again, 5)
    assert rest is not None
    answer = first + rest
    assert answer.startswith(b"HTTP/1.1 200")
    for sock in (idle, partial, body, again):
        sock.close()


def test_9_connections_past_the_cap_get_503(real_server) -> None:
    import httpx

    port = real_server(max_connections=2, header_timeout_s=10)
    held = [socket.create_connection(("127.0.0.1", port)) for _ in range(2)]
    try:
        # the held connections count once the server has accepted them
        def refused() -> bool:
            return httpx.get(f"http://127.0.0.1:{port}/api/tags", timeout=10).status_code == 503

        _wait_until(refused, 10, "a request past the cap was never refused with 503")
    finally:
        for sock in held:
            sock.close()


# --- 10. token guesses are throttled; short tokens refused ------------------------------------------


def test_10_wrong_tokens_are_throttled_per_client(engine, tmp_path) -> None:
    with make_client(engine, tmp_path, token=TOKEN, token_failures=5) as client:
        codes = [client.get("/api/tags", headers={"Authorization": f"Bearer guess-{i:016d}"}).status_code for i in range(12)]
        assert codes == [401] * 5 + [429] * 7
        blocked = client.get("/api/tags", headers={"Authorization": f"Bearer {TOKEN}"})  # the right one too, or guessing goes on
        assert blocked.status_code == 429 and int(blocked.headers["retry-after"]) >= 1
        assert client.get(f"/?token=guess-{0:016d}", follow_redirects=False).status_code == 429


def test_10_short_tokens_are_refused_and_auto_makes_a_long_one() -> None:
    from searchlite import InvalidInputError
    from searchlite.server.run import check_settings, make_token
    from searchlite.server.settings import ServerSettings

    with pytest.raises(InvalidInputError, match="at least 16"):
        check_settings(ServerSettings(token="12345678"))
    token = make_token()
    assert len(token) >= 16 and token != make_token()
    check_settings(ServerSettings(token=token, host="0.0.0.0"))


# --- 11. JSON parsed off the event loop; CORP; HEAD ---------------------------------------------------


def test_11_knn_bodies_are_parsed_off_the_event_loop(client, monkeypatch) -> None:
    import asyncio

    from searchlite.server import knn

    where = []
    real_loads = json.loads

    def loads(data, *args, **kwargs):
        try:
            asyncio.get_running_loop()
            where.append("event loop")
        except RuntimeError:
            where.append("thread")
        return real_loads(data, *args, **kwargs)

    monkeypatch.setattr(knn.json, "loads", loads)
    assert client.post("/knn-service", content=clip_client_body(text="a red circle", num_images=2)).status_code == 200
    assert where == ["thread"]


def test_11_pictures_carry_corp_and_head_is_answered(collection, client) -> None:
    photos, _, ids = collection
    number = ids["00001.png"]
    for url in (f"/api/images/{number}", f"/api/thumbs/{number}", f"/api/view/{number}", "/"):
        got = client.get(url)
        assert got.headers["cross-origin-resource-policy"] == "same-origin", url
        head = client.head(url)
        assert head.status_code == 200 and head.content == b"", url
        assert head.headers["content-length"] == str(len(got.content)), url
    ranged = client.get(f"/api/images/{number}", headers={"Range": "bytes=-10"})
    assert ranged.status_code == 206 and ranged.content == (photos / "00001.png").read_bytes()[-10:]
    assert client.get(f"/api/images/{number}", headers={"Range": "bytes=999999-"}).status_code == 416


def test_11_an_uploaded_image_still_searches(client) -> None:
    """Uploads are files the server writes itself: read under the same policy, they still work."""
    response = client.post("/knn-service", content=clip_client_body(image=base64.b64encode(png_bytes()).decode(), num_images=1))
    assert response.status_code == 200 and len(response.json()) == 1


def test_picture_locks_are_dropped_once_no_request_holds_or_waits_for_them(tmp_path) -> None:
    from searchlite.server.thumbs import PictureCache

    asked = [1, 1, 1, 1, 2, 2, 3, 3]
    started = threading.Barrier(len(asked))
    request = threading.local()
    changed = threading.Condition()

    class Observed(dict):  # the picture locks' table, which says when a request joins or leaves one
        def __setitem__(self, name, entry) -> None:
            with changed:
                super().__setitem__(name, entry)
                changed.notify_all()

    class Slow(PictureCache):
        suffix = ".webp"

        def render(self, engine, path, at, dims, read) -> bytes:
            # made only once every other request for this picture waits on its lock (which this one
            # holds, so none of them can leave meanwhile)
            def all_wait() -> bool:
                return sum(users for name, (_, users) in list(self._locks.items()) if name.startswith(f"{request.id}-")) == asked.count(request.id)

            with changed:
                assert changed.wait_for(all_wait, timeout=10), self._locks
            return b"picture"

    picture = tmp_path / "a.png"
    picture.write_bytes(b"x")
    cache = Slow(None, tmp_path / "thumbs", 64)
    cache._locks = Observed()

    def get(image_id: int):
        request.id = image_id
        started.wait()
        return cache.get(image_id, str(picture))

    with ThreadPoolExecutor(len(asked)) as pool:
        results = list(pool.map(get, asked))
    assert {Path(found).name.split("-")[0] for found, _ in results} == {"1", "2", "3"}
    assert cache._locks == {}


# --- descriptors are closed on every failure; a link swapped in after the check is caught ---------


def open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="counts descriptors in /proc")
def test_a_failure_after_opening_a_file_closes_it(tmp_path, monkeypatch) -> None:
    from searchlite.errors import ImageDecodeError
    from searchlite.media import embed_files, safe_read
    from searchlite.server import files

    picture = tmp_path / "a.png"
    picture.write_bytes(png_bytes())

    def fail(*args, **kwargs):
        raise OSError(5, "Input/output error")

    before = open_fds()
    with monkeypatch.context() as patch:
        patch.setattr(os, "fstat", fail)
        with pytest.raises(ImageDecodeError, match="Input/output error"):
            safe_read.open_checked(str(picture), safe_read.ReadPolicy())
    assert open_fds() == before
    with monkeypatch.context() as patch:
        patch.setattr(safe_read.OpenedFile, "header", fail)
        with pytest.raises(OSError):
            embed_files.decode_path(str(picture), None, None, read=safe_read.ReadPolicy())
    assert open_fds() == before
    opened = safe_read.open_checked(str(picture), safe_read.ReadPolicy())
    with monkeypatch.context() as patch:
        patch.setattr(files, "formatdate", fail)
        with pytest.raises(OSError):
            files.OpenedFileResponse(opened, "image/png")
    assert opened.fd == -1 and open_fds() == before


@pytest.mark.parametrize("proc", [True, False], ids=["proc", "no-proc"])
def test_a_link_swapped_in_between_the_check_and_the_open_is_refused(tmp_path, monkeypatch, proc) -> None:
    from searchlite.errors import InvalidInputError
    from searchlite.media import safe_read

    root, secret = tmp_path / "photos", tmp_path / "secret.png"
    root.mkdir()
    picture = root / "a.png"
    picture.write_bytes(png_bytes())
    secret.write_bytes(b"secret")
    real_open, swaps = os.open, [1]

    def swapped_open(path, *args, **kwargs):  # the race, once: after the check, before the open
        if path == str(picture) and swaps:
            swaps.pop()
            picture.unlink()
            picture.symlink_to(secret)
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", swapped_open)
    if not proc:
        monkeypatch.setattr(safe_read, "PROC_FD", str(tmp_path / "no-proc"))  # a system without /proc
    before = open_fds() if os.path.isdir("/proc/self/fd") else set()
    with pytest.raises(InvalidInputError, match="outside the folders this server reads"):
        safe_read.open_checked(str(picture), safe_read.ReadPolicy(roots=(str(root),)))
    if before:
        assert open_fds() == before
    picture.unlink()
    picture.write_bytes(png_bytes())
    with safe_read.open_checked(str(picture), safe_read.ReadPolicy(roots=(str(root),))) as opened:
        assert opened.header(4) == b"\x89PNG"
