"""The web page's timeline and filters in a real browser (headless Chromium driven by Playwright,
as tests/test_server_browser.py does): every relevant photo by date under month headings that
stay in view, more loaded on scrolling, the cut-off's verdict in words with a min-score slider,
each filter control, and the URL round trip (a shared link, back and forward)."""

from __future__ import annotations

import math

import pytest

from tests.test_server_browser import CHROMIUM, browser, csp_checked_page, sync_api  # noqa: F401  (its skip logic too)
from tests.timeline_photos import MONTHS, SCENES, timeline_index  # noqa: F401


@pytest.fixture(scope="module")
def server(timeline_index, tmp_path_factory):
    from searchlite import SearchEngine
    from searchlite.server.app import create_app
    from searchlite.server.run import Server, bind
    from searchlite.server.settings import ServerSettings

    photos, video, index = timeline_index
    with SearchEngine.open(index, create=False) as engine:
        settings = ServerSettings(port=0, thumb_dir=tmp_path_factory.mktemp("timeline_thumbs"))
        server = Server(create_app(engine, settings), bind("127.0.0.1", 0))
        server.start()
        try:
            yield f"http://127.0.0.1:{server.port}", engine, photos, video
        finally:
            server.stop()


@pytest.fixture
def page(browser, server):  # noqa: F811
    yield from csp_checked_page(browser, locale="en-US")


IDS = "(where) => [...document.querySelectorAll(where + ' .tile')].map((t) => Number(t.dataset.id))"


def shown(page, where: str = "#timeline") -> list[int]:
    return page.evaluate(IDS, where)


def wait_for_ids(page, ids: list[int], where: str = "#timeline") -> None:
    """Until the page shows exactly these tiles, in this order."""
    page.wait_for_function(f"([where, ids]) => ({IDS})(where).join() === ids.join()", arg=[where, ids])


def first_page(hits) -> list[int]:
    return [h.id for h in hits][:60]


def test_the_timeline_is_in_date_order_under_month_headings_and_loads_more_on_scrolling(page, server) -> None:
    base, engine, photos, video = server
    expected = engine.search("a shape", sort="date", min_score=-1)
    assert len(expected) == SCENES + (video is not None)
    page.goto(base + "/?q=a+shape&sort=date&min_score=-1")
    page.locator("#timeline .tile").nth(59).wait_for()
    assert len(shown(page)) < len(expected)  # one page of 60 first
    # scrolling loads the rest: to the bottom until every photo is there (or the wait times out)
    scroll_to_end = "(n) => { window.scrollTo(0, document.body.scrollHeight); return document.querySelectorAll('#timeline .tile').length >= n; }"
    page.wait_for_function(scroll_to_end, arg=len(expected), polling=100, timeout=20_000)
    wait_for_ids(page, [h.id for h in expected])
    groups = page.locator("#timeline .month")
    months = [groups.nth(i).get_attribute("data-month") for i in range(groups.count())]
    assert months == list(MONTHS) + ([""] if video is not None else [])  # each month once, in order; the undated last
    heads = page.locator("#timeline .month-head > span:first-child").all_inner_texts()
    assert heads[:3] == ["January 2023", "February 2023", "March 2023"] and heads[-1] == ("No date" if video else "June 2023")
    taken = {h.id: (h.taken_at or "")[:7] for h in expected}
    for i, month in enumerate(months):
        ids = [int(t) for t in groups.nth(i).locator(".tile").evaluate_all("(ts) => ts.map((t) => t.dataset.id)")]
        assert ids and all(taken[t] == month for t in ids), month
        assert groups.nth(i).locator(".count").inner_text() == str(len(ids))
    # a heading stays in view below the bar while its month scrolls by
    march = page.locator('#timeline .month[data-month="2023-03"]')
    march.evaluate("(m) => window.scrollTo(0, m.getBoundingClientRect().top + window.scrollY + 300)")
    stuck = """() => { const bar = document.querySelector('.bar').getBoundingClientRect().bottom;
                       const march = document.querySelector('#timeline .month[data-month="2023-03"]');
                       return Math.abs(march.querySelector('.month-head').getBoundingClientRect().top - bar) <= 2
                              && march.getBoundingClientRect().top < bar - 200; }"""
    page.wait_for_function(stuck, timeout=5_000)
    bar = page.evaluate("document.querySelector('.bar').getBoundingClientRect().bottom")
    head = march.locator(".month-head").bounding_box()
    assert abs(head["y"] - bar) <= 2, (head, bar)
    assert march.bounding_box()["y"] < bar - 200  # its photos went on under it
    # newest first: the same photos, the months the other way round
    page.locator("#sort").select_option("-date")
    page.wait_for_url("**sort=-date**")
    page.locator('#timeline .month[data-month="2023-06"]').first.wait_for()
    assert page.locator("#timeline .month").first.get_attribute("data-month") == "2023-06"


def test_the_verdict_in_words_and_the_min_score_slider(page, server) -> None:
    base, engine, _, _ = server
    auto = engine.search("a red circle", sort="date")
    assert auto and math.isfinite(auto.cutoff.threshold), auto.cutoff.describe()  # the red circles stand out
    page.goto(base + "/?q=a+red+circle&sort=date")
    wait_for_ids(page, first_page(auto))
    assert page.locator("#verdict-text").inner_text() == auto.cutoff.summary()
    assert page.locator("#auto").is_hidden()
    slider = page.locator("#min-score")
    assert abs(float(slider.input_value()) - auto.cutoff.threshold) < 0.003  # the slider sits at the cut-off's threshold
    # widen: a lower min score keeps more, in the URL
    slider.evaluate("(s) => { s.value = '0.5'; s.dispatchEvent(new Event('input')); s.dispatchEvent(new Event('change')); }")
    page.wait_for_url("**min_score=0.500**")
    wider = engine.search("a red circle", sort="date", min_score=0.5)
    wait_for_ids(page, first_page(wider))
    assert page.locator("#verdict-text").inner_text() == wider.cutoff.summary()
    assert page.locator("#min-score-value").inner_text() == "0.500" and page.locator("#auto").is_visible()
    # back: the cut-off's own verdict again; forward: the slider's
    page.go_back()
    wait_for_ids(page, first_page(auto))
    assert page.locator("#auto").is_hidden()
    page.go_forward()
    wait_for_ids(page, first_page(wider))
    assert slider.input_value() == "0.5"
    page.locator("#auto").click()
    wait_for_ids(page, first_page(auto))
    assert "min_score" not in page.url


@pytest.mark.parametrize(
    ("url", "query", "threshold", "end"),
    [
        ("q=a+purple+hexagon", {"text": "a purple hexagon"}, math.inf, "max"),  # a thing the model does not know: nothing stands out
        ("q=a+red+circle&after=2023-06-24", {"text": "a red circle", "after": "2023-06-24"}, -math.inf, "min"),  # one photo: too few to judge
    ],
)
def test_a_verdict_with_no_threshold_puts_the_slider_at_an_end(page, server, url, query, threshold, end) -> None:
    base, engine, _, _ = server
    verdict = engine.search(sort="date", **query).cutoff
    assert verdict.threshold == threshold, verdict.describe()
    page.goto(base + "/?sort=date&" + url)
    page.locator("#verdict").wait_for()
    assert page.locator("#verdict-text").inner_text() == verdict.summary()
    slider = page.locator("#min-score")
    # nothing passes: the slider at the best score, to be moved down; all kept: at its lowest
    assert float(slider.input_value()) == pytest.approx(float(slider.get_attribute(end)), abs=1e-9), (slider.input_value(), end)
    assert page.locator("#auto").is_hidden()


def test_when_nothing_passes_the_page_says_so(page, server) -> None:
    base, engine, _, _ = server
    page.goto(base + "/?q=a+red+circle&sort=date&min_score=0.99")
    nothing = engine.search("a red circle", sort="date", min_score=0.99)
    assert len(nothing) == 0
    page.locator("#verdict").wait_for()
    assert page.locator("#verdict-text").inner_text() == nothing.cutoff.summary()
    assert page.locator("#status").inner_text().endswith("0 photos") and shown(page) == []
    widen = page.locator("#widen")
    best = f"{int(nothing.cutoff.best * 100) / 100:.2f}"
    assert widen.inner_text() == f"Show the best (score ≥ {best})"
    widen.click()
    page.wait_for_url(f"**min_score={best}**")
    wait_for_ids(page, first_page(engine.search("a red circle", sort="date", min_score=float(best))))
    assert shown(page)
    # a query for something absent among what is searched: the verdict's words, never a blank page
    page.goto(base + "/?q=a+red+circle&sort=date&tag=blue")
    absent = engine.search("a red circle", sort="date", tag="blue")
    page.locator("#verdict").wait_for()
    assert page.locator("#verdict-text").inner_text() == absent.cutoff.summary()
    wait_for_ids(page, first_page(absent))


def test_each_filter_control_narrows_the_results_and_goes_into_the_url(page, server) -> None:
    base, engine, photos, video = server
    page.goto(base + "/?q=a+shape&sort=date&min_score=-1")
    wait_for_ids(page, first_page(engine.search("a shape", sort="date", min_score=-1)))
    assert page.locator("#filters").is_hidden()
    page.locator("#filters-toggle").click()
    trip = str(photos[0].path.parent.parent / "trip")
    cases = [
        ("#after", "2023-03", {"after": "2023-03"}),
        ("#before", "2023-02", {"before": "2023-02"}),
        ("#camera", "iphone", {"camera": "iphone"}),
        ("#place", "Lisbon", {"place": "Lisbon"}),
        ("#place", "41.15, -8.61, 10", {"near": "41.15,-8.61,10"}),
        ("#path", trip, {"path": trip}),
    ]
    for control, value, params in cases:
        page.locator(control).fill(value)
        page.locator(control).press("Enter")
        (name, sent), = params.items()
        page.wait_for_url(lambda url: f"{name}=" in url)
        expected = engine.search("a shape", sort="date", min_score=-1, **params)
        wait_for_ids(page, first_page(expected))
        assert expected and len(expected) < SCENES, params
        page.locator(control).fill("")
        page.locator(control).press("Enter")
        page.wait_for_url(lambda url: f"{name}=" not in url)
    page.locator("#type").select_option("video")  # a select applies at once
    page.wait_for_url("**type=video**")
    wait_for_ids(page, first_page(engine.search("a shape", sort="date", min_score=-1, type="video")))
    assert len(shown(page)) == (video is not None)
    page.locator("#filters-clear").click()
    page.wait_for_url(lambda url: "type=" not in url)
    page.locator('.chip[data-tag="yellow"]').click()
    page.wait_for_url("**tag=yellow**")
    wait_for_ids(page, first_page(engine.search("a shape", sort="date", min_score=-1, tag="yellow")))
    # best matches: the grid again, the filters kept
    page.locator("#sort").select_option("")
    page.wait_for_url(lambda url: "sort=" not in url and "tag=yellow" in url)
    wait_for_ids(page, [h.id for h in engine.search("a shape", k=60, tag="yellow", min_score=-1)], "#grid")
    assert page.locator("#timeline").is_hidden()
    # filters with no query: every photo they keep, by date
    page.goto(base + "/")
    page.locator("#filters-toggle").click()
    page.locator("#after").fill("2023-06")
    page.locator("#after").press("Enter")
    page.wait_for_url("**sort=date**")
    wait_for_ids(page, first_page(engine.search(sort="date", after="2023-06")))
    assert "after=2023-06" in page.url and len(shown(page)) == 24


def test_a_shared_url_shows_its_filters_and_results_and_back_and_forward_restore_them(page, server) -> None:
    base, engine, _, _ = server
    query = {"camera": "iPhone", "after": "2023-02", "type": "image"}
    page.goto(base + "/?q=a+red+circle&sort=-date&after=2023-02&camera=iPhone&type=image&near=41.15,-8.61,30&min_score=0.3")
    newest = engine.search("a red circle", sort="-date", near="41.15,-8.61,30", min_score=0.3, **query)
    wait_for_ids(page, first_page(newest))
    assert len(newest) >= 3
    assert page.locator("#filters").is_visible()
    controls = {c: page.locator(c).input_value() for c in ("#q", "#sort", "#after", "#before", "#camera", "#place", "#type")}
    assert controls == {"#q": "a red circle", "#sort": "-date", "#after": "2023-02", "#before": "", "#camera": "iPhone",
                        "#place": "41.15,-8.61,30", "#type": "image"}
    assert page.locator("#min-score-value").inner_text() == "0.300"
    page.locator("#sort").select_option("date")
    page.wait_for_url("**sort=date&**")
    wait_for_ids(page, first_page(engine.search("a red circle", sort="date", near="41.15,-8.61,30", min_score=0.3, **query)))
    page.locator("#after").fill("2023-05")
    page.locator("#after").press("Enter")
    page.wait_for_url("**after=2023-05**")
    latest = engine.search("a red circle", sort="date", near="41.15,-8.61,30", min_score=0.3, **(query | {"after": "2023-05"}))
    wait_for_ids(page, first_page(latest))
    page.go_back()
    page.wait_for_url("**after=2023-02**")
    assert page.locator("#after").input_value() == "2023-02" and page.locator("#sort").input_value() == "date"
    page.go_back()
    wait_for_ids(page, first_page(newest))
    assert page.locator("#sort").input_value() == "-date"
    page.go_forward()
    page.go_forward()
    wait_for_ids(page, first_page(latest))
    assert page.locator("#after").input_value() == "2023-05"
    page.reload()
    wait_for_ids(page, first_page(latest))
    # every photo by date, then best matches with no query: the welcome page
    page.goto(base + "/?sort=-date")
    wait_for_ids(page, first_page(engine.search(sort="-date")))
    page.locator("#sort").select_option("")
    page.wait_for_url(base + "/")
    page.locator("#welcome").wait_for()
    assert shown(page) == []


def test_a_phone_width_timeline_has_no_sideways_scrolling(browser, server) -> None:  # noqa: F811
    base, _, _, _ = server
    context = browser.new_context(viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True, locale="en-US")
    page = context.new_page()
    page.goto(base + "/?q=a+shape&sort=date&min_score=-1&camera=canon")
    page.locator("#timeline .tile img.loaded").nth(5).wait_for()
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    assert page.locator("#filters").is_visible() and page.locator("#verdict").is_visible()
    context.close()


def test_an_image_dropped_in_the_by_date_view_keeps_its_order_and_filters(page, server) -> None:
    base, engine, photos, _ = server
    red_circle = next(p.path for p in photos if (p.colour, p.shape) == ("red", "circle") and p.camera == "Canon EOS R5")
    page.goto(base + "/?sort=date&camera=canon")
    page.locator("#timeline .tile").first.wait_for()
    page.set_input_files("#file", str(red_circle))
    page.wait_for_url("**image=**")
    assert "sort=date" in page.url and "camera=canon" in page.url
    expected = engine.search(image=str(red_circle), sort="date", camera="canon")
    wait_for_ids(page, first_page(expected))
    assert page.locator("#verdict-text").inner_text() == expected.cutoff.summary()
