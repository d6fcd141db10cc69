"""The page in a real browser: headless Chromium (Debian's /usr/bin/chromium) driven by Playwright.
Type a query and see thumbnails load, open the detail view and step through it, "more like this",
drop an image, the back button, `/`, the index page, a phone's width, the detail view of every kind
of file (HEIC, RAW and video included) — with the CSP on."""

from __future__ import annotations

import base64
import os
import shutil
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="the server's dependencies are not installed: pip install 'searchlite[serve]'")
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed: pip install playwright")

from tests.server_fixtures import MEDIA, VIDEO_SHOTS, caption_of, make_shapes, media_index, shapes_index  # noqa: F401,E402

CHROMIUM = os.environ.get("SEARCHLITE_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
if not Path(CHROMIUM).exists():
    pytest.skip(f"no Chromium at {CHROMIUM}: apt-get install chromium (or set SEARCHLITE_CHROMIUM)", allow_module_level=True)


@pytest.fixture(scope="module")
def server(shapes_index, tmp_path_factory):
    from searchlite import SearchEngine
    from searchlite.server.app import create_app
    from searchlite.server.run import Server, bind
    from searchlite.server.settings import ServerSettings

    with SearchEngine.open(shapes_index[1], create=False) as engine:
        settings = ServerSettings(port=0, thumb_dir=tmp_path_factory.mktemp("browser_thumbs"))
        server = Server(create_app(engine, settings), bind("127.0.0.1", 0))
        server.start()
        try:
            yield f"http://127.0.0.1:{server.port}", engine
        finally:
            server.stop()


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield browser
        browser.close()


def csp_checked_page(browser, **context_options):
    """A page in a new context (1200x800 unless told), failing the test on any Content Security
    Policy violation it logs."""
    context = browser.new_context(**{"viewport": {"width": 1200, "height": 800}, **context_options})
    page = context.new_page()
    page.set_default_timeout(30_000)
    page.csp_violations = []
    page.on("console", lambda m: "Content Security Policy" in m.text and page.csp_violations.append(m.text))
    yield page
    assert page.csp_violations == [], page.csp_violations
    context.close()


@pytest.fixture
def page(browser, server):
    yield from csp_checked_page(browser)


def loaded_tiles(page, at_least: int):
    page.locator("#grid .tile img.loaded").nth(at_least - 1).wait_for()
    return page.locator("#grid .tile")


def test_typing_a_query_loads_thumbnails_and_puts_it_in_the_url(page, server) -> None:
    base, engine = server
    page.goto(base + "/")
    page.locator("#q").wait_for()
    page.evaluate("document.activeElement.blur()")
    page.keyboard.press("/")  # focuses the search box
    assert page.evaluate("document.activeElement.id") == "q"
    page.keyboard.type("a blue square")
    page.keyboard.press("Enter")
    tiles = loaded_tiles(page, 12)
    assert "q=a+blue+square" in page.url
    first_id = int(tiles.first.get_attribute("data-id"))
    assert "blue square" in caption_of(engine.files([first_id])[first_id].path)
    assert "score" in tiles.first.get_attribute("title")
    assert page.locator("#status").inner_text().startswith("“a blue square”")
    # scrolling loads more: 64 scenes, pages of 60
    page.mouse.wheel(0, 20_000)
    page.locator("#grid .tile").nth(60).wait_for()


def test_detail_view_steps_with_arrows_and_closes_with_escape(page, server) -> None:
    base, engine = server
    page.goto(base + "/?q=a+green+circle")
    tiles = loaded_tiles(page, 5)
    ids = [int(tiles.nth(i).get_attribute("data-id")) for i in range(3)]
    tiles.first.click()
    dialog = page.locator("#detail")
    dialog.wait_for(state="visible")
    assert page.locator("#d-path").inner_text() == engine.files([ids[0]])[ids[0]].path
    assert page.locator("#d-dims").inner_text() == "64 × 64 px"
    page.keyboard.press("ArrowRight")
    assert page.locator("#d-path").inner_text() == engine.files([ids[1]])[ids[1]].path
    page.keyboard.press("ArrowLeft")
    assert page.locator("#d-path").inner_text() == engine.files([ids[0]])[ids[0]].path
    page.locator("#detail-img").wait_for()
    page.keyboard.press("Escape")
    dialog.wait_for(state="hidden")


def test_more_like_this_and_the_back_button(page, server) -> None:
    base, _ = server
    page.goto(base + "/?q=a+yellow+triangle")
    tiles = loaded_tiles(page, 5)
    text_first = tiles.first.get_attribute("data-id")
    tiles.nth(2).click()
    chosen = tiles.nth(2).get_attribute("data-id")
    page.locator("#more").click()
    page.wait_for_url(f"**/?like={chosen}")
    page.locator(f'#grid .tile[data-index="0"][data-id="{chosen}"]').wait_for()
    assert not page.locator("#query-chip").is_hidden()
    page.go_back()
    page.wait_for_url("**/?q=a+yellow+triangle")
    page.locator(f'#grid .tile[data-index="0"][data-id="{text_first}"]').wait_for()
    assert page.locator("#q").input_value() == "a yellow triangle"
    page.go_forward()
    page.locator(f'#grid .tile[data-index="0"][data-id="{chosen}"]').wait_for()


def test_dropping_an_image_searches_by_it(page, server) -> None:
    base, engine = server
    page.goto(base + "/")
    hit = engine.search("a red square", k=1)[0]
    data = base64.b64encode(Path(hit.path).read_bytes()).decode()
    transfer = page.evaluate_handle(
        """(b64) => {
            const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
            const dt = new DataTransfer();
            dt.items.add(new File([bytes], "query.png", { type: "image/png" }));
            return dt;
        }""",
        data,
    )
    page.dispatch_event("body", "dragenter", {"dataTransfer": transfer})
    assert page.locator("#drop").is_visible()
    page.dispatch_event("body", "drop", {"dataTransfer": transfer})
    page.locator(f'#grid .tile[data-index="0"][data-id="{hit.id}"]').wait_for()
    assert "image=" in page.url and page.locator("#drop").is_hidden()
    # the URL holds the uploaded image's key: reloading gives the same results
    page.reload()
    page.locator(f'#grid .tile[data-index="0"][data-id="{hit.id}"]').wait_for()


def test_picking_a_file_searches_by_it(page, server) -> None:
    base, engine = server
    page.goto(base + "/")
    hit = engine.search("a green triangle", k=1)[0]
    page.set_input_files("#file", hit.path)
    page.locator(f'#grid .tile[data-index="0"][data-id="{hit.id}"]').wait_for()


def test_tag_chips_filter_and_the_index_page(page, server) -> None:
    base, engine = server
    page.goto(base + "/?q=a+shape")
    loaded_tiles(page, 3)
    page.locator('.chip[data-tag="red"]').click()
    page.wait_for_url("**tag=red**")
    page.locator('.chip[data-tag="red"][aria-pressed="true"]').wait_for()
    tiles = loaded_tiles(page, 3)
    ids = [int(tiles.nth(i).get_attribute("data-id")) for i in range(tiles.count())]
    assert all("red" in caption_of(p.path) for p in engine.files(ids).values())
    page.locator("#info-link").click()
    page.locator("#info table").first.wait_for()
    assert f"Images indexed{engine.info()['images']}" in page.locator("#info table").first.inner_text().replace("\t", "").replace("\n", "")


def test_a_phone_width_has_no_sideways_scrolling(browser, server) -> None:
    base, _ = server
    context = browser.new_context(viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True, color_scheme="dark")
    page = context.new_page()
    page.goto(base + "/?q=a+red+circle")
    loaded_tiles(page, 6)
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    background = page.evaluate("getComputedStyle(document.body).backgroundColor")
    assert background != "rgb(247, 247, 249)"  # the dark theme follows the system setting
    context.close()


def test_a_red_circle_drawn_on_the_sketch_pad_finds_red_circles(page, server) -> None:
    import math

    base, engine = server
    page.goto(base + "/")
    page.locator("#sketch-open").click()
    pad = page.locator("#pad")
    pad.wait_for()
    page.locator('#sketch .swatch[title="red"]').click()
    box = pad.bounding_box()
    cx, cy = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    scale = box["width"] / 256
    for radius in range(6, 64, 12):  # a filled circle: rings of a thick brush
        r = radius * scale
        page.mouse.move(cx + r, cy)
        page.mouse.down()
        for step in range(1, 41):
            a = 2 * math.pi * step / 40
            page.mouse.move(cx + r * math.cos(a), cy + r * math.sin(a))
        page.mouse.up()
    red = page.evaluate("(() => { const d = document.getElementById('pad').getContext('2d').getImageData(128, 128, 1, 1).data; return [d[0], d[1], d[2]]; })()")
    assert red[0] > 150 and red[1] < 80 and red[2] < 80, red
    page.locator("#sketch-search").click()
    tiles = loaded_tiles(page, 5)
    assert "image=" in page.url and page.locator("#sketch").is_hidden()
    ids = [int(tiles.nth(i).get_attribute("data-id")) for i in range(5)]
    captions = [caption_of(engine.files([i])[i].path) for i in ids]
    red_circles = sum("red circle" in caption_of(p) for p in map(str, Path(engine.files(ids)[ids[0]].path).parent.glob("*.png")))
    assert all("red circle" in c for c in captions[: min(3, red_circles)]), (captions, red_circles)


# --- every kind of file in the detail view ---------------------------------------------------------


@pytest.fixture(scope="module")
def media_server(media_index, tmp_path_factory):
    from searchlite import SearchEngine
    from searchlite.server.app import create_app
    from searchlite.server.run import Server, bind
    from searchlite.server.settings import ServerSettings

    paths, index = media_index
    with SearchEngine.open(index, create=False) as engine:
        settings = ServerSettings(port=0, thumb_dir=tmp_path_factory.mktemp("browser_media_thumbs"))
        server = Server(create_app(engine, settings), bind("127.0.0.1", 0))
        server.start()
        try:
            ids = {kind: next(h.id for h in engine.search("a red circle", k=20) if h.path == str(path)) for kind, path in paths.items()}
            yield f"http://127.0.0.1:{server.port}", ids
        finally:
            server.stop()


# the centre pixel of what an <img> or <video> shows, drawn on a canvas: [r, g, b]
CENTRE = """(el) => {
    const w = el.naturalWidth || el.videoWidth, h = el.naturalHeight || el.videoHeight;
    const c = document.createElement("canvas"); c.width = w; c.height = h;
    const ctx = c.getContext("2d"); ctx.drawImage(el, 0, 0);
    return Array.from(ctx.getImageData(Math.floor(w / 2), Math.floor(h / 2), 1, 1).data.slice(0, 3));
}"""


def _near(pixel: list[int], colour: str, tolerance: int = 40) -> bool:
    return all(abs(a - b) <= tolerance for a, b in zip(pixel, make_shapes.COLORS[colour]))


@pytest.mark.parametrize("kind", list(MEDIA))
def test_the_detail_view_shows_every_kind_of_file(page, media_server, kind) -> None:
    base, ids = media_server
    page.goto(base + "/?q=a+red+circle")
    tile = page.locator(f'#grid .tile[data-id="{ids[kind]}"]')
    thumb = tile.locator("img.loaded")
    thumb.wait_for()
    assert thumb.evaluate("(img) => img.naturalWidth") > 0  # the tile is not blank
    tile.click()
    page.locator("#detail").wait_for(state="visible")
    if kind == "mp4":
        video = page.locator("#detail-video")
        video.wait_for()
        page.wait_for_function("() => document.getElementById('detail-video').readyState >= 2")  # a frame decoded
        start = VIDEO_SHOTS[0][2]  # played from the shot that matched "a red circle"
        assert abs(video.evaluate("(v) => v.currentTime") - start) < 0.2
        page.wait_for_function("() => !document.getElementById('detail-video').seeking")
        assert _near(video.evaluate(CENTRE), "red"), video.evaluate(CENTRE)
        assert page.locator("#d-at").inner_text() == "0:02 – 0:04"
        stage, box = page.locator(".stage").bounding_box(), video.bounding_box()  # its controls are on screen
        assert box["y"] + box["height"] <= stage["y"] + stage["height"] + 1, (box, stage)
    else:
        img = page.locator("#detail-img")
        img.wait_for()
        page.wait_for_function("() => { const i = document.getElementById('detail-img'); return i.complete && i.naturalWidth > 0; }")
        assert _near(img.evaluate(CENTRE), MEDIA[kind][1]), img.evaluate(CENTRE)
        assert page.locator("#d-dims").inner_text() == "240 × 160 px"
