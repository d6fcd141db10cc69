"""The HTTP API's by-date listing and filters, as the web page's timeline uses them (no browser):
every filter as a query parameter, pages of a by-date listing, the relevance cut-off's verdict
(`cutoff`) and its override (`min_score`), and a bad value answered in one line naming it."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="the server's dependencies are not installed: pip install 'searchlite[serve]'")

from tests.timeline_photos import CAMERAS, SCENES, is_red_circle, timeline_index  # noqa: E402,F401

BASE = "http://127.0.0.1:8765"


@pytest.fixture(scope="module")
def served(timeline_index, tmp_path_factory):
    from fastapi.testclient import TestClient

    from searchlite import SearchEngine
    from searchlite.server.app import create_app
    from searchlite.server.settings import ServerSettings

    photos, video, index = timeline_index
    with SearchEngine.open(index, create=False) as engine:
        with TestClient(create_app(engine, ServerSettings(thumb_dir=tmp_path_factory.mktemp("thumbs"))), base_url=BASE) as client:
            yield client, engine, photos, video


def get(client, **params) -> dict:
    response = client.get("/api/search", params=params)
    assert response.status_code == 200, response.text
    return response.json()


def test_a_by_date_listing_comes_in_pages_with_the_cut_offs_verdict(served) -> None:
    client, engine, photos, _ = served
    expected = engine.search("a red circle", sort="date")
    assert expected.cutoff is not None and len(expected) > 5
    pages = [get(client, q="a red circle", sort="date", k=5, offset=offset) for offset in range(0, len(expected) + 5, 5)]
    assert [h["path"] for page in pages for h in page["hits"]] == [h.path for h in expected]
    assert all(page["total"] == len(expected) for page in pages)
    assert pages[0]["cutoff"] == expected.cutoff.as_dict()
    assert pages[0]["cutoff"]["summary"] == expected.cutoff.summary() and pages[0]["cutoff"]["kept"] >= len(expected)
    dates = [h["taken_at"] for page in pages for h in page["hits"]]
    dated = [d for d in dates if d is not None]
    assert dates == dated + [None] * (len(dates) - len(dated)) and dated == sorted(dated)  # undated ones last
    newest = get(client, q="a red circle", sort="-date", k=500)
    dated_paths = [h.path for h in expected if h.taken_at is not None]
    assert [h["path"] for h in newest["hits"]] == dated_paths[::-1] + [h.path for h in expected if h.taken_at is None]


def test_a_by_date_listing_is_searched_once_and_pages_on_past_the_top_k_cap(served, monkeypatch) -> None:
    from searchlite.server import queries

    client, engine, _, video = served
    search = engine.search
    calls: list[dict] = []
    monkeypatch.setattr(engine, "search", lambda *args, **options: calls.append(options) or search(*args, **options))
    monkeypatch.setattr(queries, "MAX_OFFSET", 20)  # the top-k's cap on offset, lowered: the listing's pages go past it
    expected = [h.path for h in search("a yellow triangle", sort="-date", min_score=-1)]
    pages = [get(client, q="a yellow triangle", sort="-date", min_score=-1, k=7, offset=offset) for offset in range(0, len(expected) + 7, 7)]
    assert [h["path"] for page in pages for h in page["hits"]] == expected
    assert len(calls) == 1  # the later pages are slices of the listing made for the first
    beyond = get(client, q="a yellow triangle", sort="-date", min_score=-1, offset=10_001)  # past the old cap of 10,000
    assert beyond["hits"] == [] and beyond["total"] == len(expected) and len(calls) == 1
    response = client.get("/api/search", params={"q": "a yellow triangle", "k": 7, "offset": 21})
    assert response.status_code == 400 and response.json()["error"].startswith("offset must be between 0 and 20"), response.text
    # a change to the index (here its tags, as another process might change them) makes the listing stale
    engine.tag("red,green,blue,yellow", name="colour", threshold=0.9)
    try:
        calls.clear()
        second = get(client, q="a yellow triangle", sort="-date", min_score=-1, k=7, offset=7)["hits"]
        assert [h["path"] for h in second] == expected[7:14]
        assert len(calls) == 1
    finally:
        engine.tag("red,green,blue,yellow", name="colour")  # the tags as the other tests know them


def test_listings_are_kept_within_their_bounds(tmp_path) -> None:
    from searchlite.config import DB_FILENAME
    from searchlite.server.queries import Listings

    (tmp_path / DB_FILENAME).write_bytes(b"database")
    listings = Listings(tmp_path, keep=2, hits_kept=10)
    made: list[str] = []

    def get(name: str, size: int) -> list[int]:
        return listings.get((name,), lambda: made.append(name) or list(range(size)))

    assert get("a", 3) == get("a", 3) == [0, 1, 2] and made == ["a"]
    (tmp_path / (DB_FILENAME + "-wal")).write_bytes(b"a commit")
    get("a", 3)
    assert made == ["a", "a"]  # the index changed
    get("b", 3), get("c", 3), get("a", 3)
    assert made == ["a", "a", "b", "c", "a"]  # two listings kept: a went first
    get("d", 50), get("d", 50), get("c", 3)
    assert made == ["a", "a", "b", "c", "a", "d", "c"]  # d alone is over the hits kept, yet kept while newest


def test_requests_for_a_listing_being_made_wait_for_it_and_a_failed_one_is_made_again(tmp_path) -> None:
    import threading

    from searchlite.config import DB_FILENAME
    from searchlite.server.queries import Listings

    (tmp_path / DB_FILENAME).write_bytes(b"database")
    listings = Listings(tmp_path)
    waiting = threading.Condition()
    waiters: list[None] = []

    class Counted:  # a listing's "being made" event, as the requests that wait for it see it
        def __init__(self, event: threading.Event) -> None:
            self.event = event

        def wait(self, timeout: float | None = None) -> bool:
            with waiting:
                waiters.append(None)
                waiting.notify_all()
            return self.event.wait(timeout)

    class Observed(dict):
        def __setitem__(self, key, event) -> None:
            super().__setitem__(key, Counted(event))

    listings._making = Observed()
    started, release, made = threading.Event(), threading.Event(), []

    def slow() -> list[int]:
        made.append("slow")
        started.set()
        release.wait(10)
        return [1, 2, 3]

    answers: list[list[int]] = []
    first = threading.Thread(target=lambda: answers.append(listings.get(("q",), slow)), daemon=True)  # daemon: a broken wait cannot hang pytest
    first.start()
    assert started.wait(10)
    others = [threading.Thread(target=lambda: answers.append(listings.get(("q",), lambda: made.append("again") or [9])), daemon=True)
              for _ in range(3)]
    for thread in others:
        thread.start()
    with waiting:  # each waits for the listing being made
        assert waiting.wait_for(lambda: len(waiters) == len(others), timeout=10), "the other requests did not wait for the listing being made"
    release.set()
    for thread in (first, *others):
        thread.join(10)
    assert answers == [[1, 2, 3]] * 4 and made == ["slow"]  # one search for the four requests

    def failing() -> list[int]:
        raise RuntimeError("the search failed")

    with pytest.raises(RuntimeError):
        listings.get(("r",), failing)
    assert listings.get(("r",), lambda: [4]) == [4]  # nothing was left waiting or held for it


def test_min_score_widens_or_narrows_what_is_relevant(served) -> None:
    client, engine, photos, video = served
    every = get(client, q="a red circle", sort="date", min_score=-1, k=500)
    assert every["total"] == SCENES + (video is not None) == len(every["hits"])
    assert every["cutoff"]["method"] == "min-score" and every["cutoff"]["kept"] == every["total"]
    narrow = get(client, q="a red circle", sort="date", min_score=0.7, k=500)
    assert narrow["total"] == len(narrow["hits"]) and all(h["score"] >= 0.7 for h in narrow["hits"])
    assert narrow["cutoff"]["threshold"] == 0.7 and narrow["cutoff"]["kept"] == narrow["total"]
    assert narrow["cutoff"] == engine.search("a red circle", sort="date", min_score=0.7).cutoff.as_dict()
    # without sort, a top-k: hits under min_score are dropped, and there is no verdict
    top = get(client, q="a red circle", k=40, min_score=0.7)
    assert "cutoff" not in top and "total" not in top
    assert [h["path"] for h in top["hits"]] == [h.path for h in engine.search("a red circle", k=40, min_score=0.7)]


def test_when_nothing_passes_the_answer_says_so(served) -> None:
    client, engine, _, _ = served
    nothing = get(client, q="a red circle", sort="date", min_score=0.99)
    assert nothing["hits"] == [] and nothing["total"] == 0
    assert nothing["cutoff"]["kept"] == 0 and nothing["cutoff"]["summary"]  # the words say why
    # no red circle carries the tag blue: whatever the cut-off decides, the answer has its words
    absent = get(client, q="a red circle", sort="date", tag="blue")
    verdict = engine.search("a red circle", sort="date", tag="blue").cutoff
    assert absent["cutoff"] == verdict.as_dict() and absent["total"] == len(absent["hits"])


def test_every_filter_is_a_query_parameter(served) -> None:
    client, engine, photos, video = served
    cases = [
        ({"after": "2023-03", "before": "2023-05"}, [p for p in photos if "2023-03" <= p.taken < "2023-05"]),
        ({"camera": "iphone"}, [p for p in photos if p.camera == CAMERAS[1][1]]),
        ({"place": "Lisbon"}, [p for p in photos if p.place == 0]),
        ({"near": "41.15,-8.61,10"}, [p for p in photos if p.place == 1]),
        ({"path": str(photos[0].path.parent.parent / "trip")}, [p for p in photos if p.folder == "trip"]),
        ({"type": "image"}, photos),
    ]
    for params, truth in cases:
        listed = get(client, sort="date", k=500, **params)["hits"]  # no query: every matching photo by date
        assert [h["path"] for h in listed] == [str(p.path) for p in truth], params
        ranked = get(client, q="a red circle", sort="date", min_score=-1, k=500, **params)
        assert {h["path"] for h in ranked["hits"]} == {str(p.path) for p in truth}, params
        assert ranked["cutoff"]["judged"] == len(truth), params
    if video is not None:
        assert [h["path"] for h in get(client, q="a red circle", type="video")["hits"]] == [str(video)]
    tagged = get(client, q="a shape", sort="date", min_score=-1, tag="red", k=500)["hits"]
    assert tagged and all("red" in h["tags"] for h in tagged)
    red_circles = [str(p.path) for i, p in enumerate(photos) if is_red_circle(i) and p.place == 1 and "2023-02" <= p.taken]
    found = get(client, q="a red circle", k=len(red_circles), place="Porto", after="2023-02")["hits"]
    assert sorted(h["path"] for h in found) == sorted(red_circles)


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"min_score": "high"}, "invalid request: min_score: input should be a valid number"),
        ({"min_score": "2"}, "invalid request: min_score: input should be less than or equal to 1"),
        ({"sort": "sideways"}, "invalid request: sort: input should be 'date' or '-date'"),
        ({"after": "2023-13"}, "after: cannot read the date '2023-13'"),
        ({"before": "yesterday"}, "before: cannot read the date 'yesterday'"),
        ({"near": "91,0"}, "near: the position '91,0' is off the globe"),
        ({"place": "Qwxzborough"}, "place: unknown place 'Qwxzborough'"),
        ({"type": "movie"}, "type 'movie': use one of image, video"),
        ({"offset": "-1"}, "invalid request: offset: input should be greater than or equal to 0"),
    ],
)
def test_a_bad_value_is_named_in_one_line(served, params, message) -> None:
    client = served[0]
    response = client.get("/api/search", params={"q": "a red circle", "sort": "date", **params})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error.startswith(message) and "\n" not in error, error


def test_the_schema_documents_the_parameters(served) -> None:
    client = served[0]
    schema = client.get("/openapi.json").json()
    documented = {p["name"]: p.get("description", "") for p in schema["paths"]["/api/search"]["get"]["parameters"]}
    for name in ("after", "before", "camera", "path", "near", "place", "type", "tag", "sort", "min_score", "offset"):
        assert name in documented, name
    assert "cut-off" in documented["min_score"] and "cutoff" in documented["sort"]
    assert Path(schema["paths"]["/api/search"]["get"]["summary"])  # still there
