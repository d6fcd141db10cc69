"""Screenshot of `searchlite serve`'s results page for the README, taken in headless Chromium
(Playwright driving Debian's /usr/bin/chromium) on the bundled searchlite-shapes demo.

    python scripts/screenshot_serve.py docs/serve.png            # fresh scenes, a fresh index
    python scripts/screenshot_serve.py docs/serve.png --dark     # the dark theme
    python scripts/screenshot_serve.py docs/timeline.png --timeline   # every red circle by date

--timeline dates the scenes (by their files' times: --count of them spread over a year, 2023) and
shows the query's by-date view: month headings, the relevance cut-off's verdict and its slider.

Uses only the public API (and the server package). The PNG is quantised to stay small.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.util
import os
import sys
import tempfile
from pathlib import Path

CHROMIUM = "/usr/bin/chromium"
SCRIPTS = Path(__file__).resolve().parent


def _make_shapes():
    spec = importlib.util.spec_from_file_location("make_shapes", SCRIPTS / "make_shapes.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["make_shapes"] = module
    spec.loader.exec_module(module)
    return module


def build_demo(root: Path, count: int = 120, seed: int = 5, size: int = 160, dated: bool = False) -> Path:
    """count scenes (rendered at size pixels) indexed with searchlite-shapes, colours as tags;
    dated: scene i taken (its file's time, which stands in for a capture time) i/count of the way
    through 2023."""
    import numpy as np

    from searchlite import SearchEngine

    shapes = _make_shapes()
    photos = root / "shapes"
    photos.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    start = dt.datetime(2023, 1, 1, 9, tzinfo=dt.timezone.utc).timestamp()
    for i in range(count):
        scene = shapes.render(rng, size=size)
        path = photos / f"scene-{i:04d}-{scene.color}-{scene.shape}.png"
        scene.image.save(path)
        if dated:
            taken = start + 365 * 86400 * i / count
            os.utime(path, (taken, taken))
    index = root / "index"
    with SearchEngine.open(index, model="searchlite-shapes") as engine:
        engine.index(photos)
        engine.tag("red,green,blue,yellow", name="colour")
    return index


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("output", type=Path)
    parser.add_argument("--query", default="a red circle")
    parser.add_argument("--dark", action="store_true")
    parser.add_argument("--timeline", action="store_true", help="the by-date view of the query, on dated scenes")
    parser.add_argument("--count", type=int, help="scenes in the demo (120; 1,500 with --timeline)")
    parser.add_argument("--width", type=int, default=1200)
    parser.add_argument("--height", type=int, default=720)
    args = parser.parse_args()

    from PIL import Image
    from playwright.sync_api import sync_playwright

    from searchlite import SearchEngine
    from searchlite.server.app import create_app
    from searchlite.server.run import Server, bind
    from searchlite.server.settings import ServerSettings

    with tempfile.TemporaryDirectory() as tmp:
        index = build_demo(Path(tmp), count=args.count or (1500 if args.timeline else 120), dated=args.timeline)
        with SearchEngine.open(index, create=False) as engine:
            server = Server(create_app(engine, ServerSettings(port=0)), bind("127.0.0.1", 0))
            server.start()
            try:
                with sync_playwright() as p:
                    browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
                    page = browser.new_page(
                        viewport={"width": args.width, "height": args.height}, color_scheme="dark" if args.dark else "light"
                    )
                    page.goto(f"http://127.0.0.1:{server.port}/")
                    page.fill("#q", args.query)
                    if args.timeline:
                        page.select_option("#sort", "date")  # searches at once
                        page.locator("#timeline img.loaded").nth(23).wait_for()
                        page.locator("#verdict").wait_for()
                        page.click("#filters-toggle")  # the filter controls, open
                        page.locator("#q").blur()
                    else:
                        page.press("#q", "Enter")
                        page.locator("#grid img.loaded").nth(23).wait_for()  # locators: no eval, the CSP stays on
                        page.hover("#grid .tile:nth-child(3)")
                    page.wait_for_timeout(400)
                    shot = Path(tmp) / "shot.png"
                    page.screenshot(path=str(shot))
                    browser.close()
            finally:
                server.stop()
        args.output.parent.mkdir(parents=True, exist_ok=True)
        Image.open(shot).convert("RGB").quantize(colors=64, method=Image.Quantize.MEDIANCUT).save(args.output, optimize=True)
    print(f"wrote {args.output} ({args.output.stat().st_size // 1024} kB)")


if __name__ == "__main__":
    main()
