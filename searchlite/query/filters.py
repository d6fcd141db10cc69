"""Filters on what a photo's header says (capture time, camera, place) and where the file lives.
They are exact: they become the set of ids the search runs among (as a tag does), so a rare match
is found however large the index.

Dates are the photo's own wall clock (what its camera showed; see media/metadata.py). A bound is
`2023`, `2023-06`, `2023-06-14` or an ISO time (`2023-06-14T18:30`, with an optional UTC offset,
which then compares instants for photos whose offset is known). `after` keeps photos from the
start of its bound on (the bound included); `before` keeps photos taken before its bound starts
(so after=2023, before=2024 is the year 2023).
"""

from __future__ import annotations

import datetime as dt
import fnmatch
import math
import os
import re
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from sqlalchemy import ColumnElement, and_, func, or_

from ..errors import InvalidInputError
from ..storage.store import Store, path_under
from ..storage.tables import images
from .places import Place, distance_km, resolve_place

DEFAULT_NEAR_KM = 5.0
_DATE_FORMS = "2023, 2023-06, 2023-06-14 or an ISO time such as 2023-06-14T18:30"
_GLOB = re.compile(r"[*?\[]")


@dataclass(frozen=True)
class TimeBound:
    """The start of a date or time: the wall clock, and the instant when an offset was given."""

    local: str  # "YYYY-MM-DDTHH:MM:SS"
    utc: float | None = None


@dataclass(frozen=True)
class Near:
    latitude: float
    longitude: float
    km: float


@dataclass(frozen=True)
class Filters:
    """Which images a search may return. Every field is optional; given ones must all hold.

    after, before: dates or times (see the module doc); camera: a case-insensitive part of the
    camera's make or model ("iphone", "canon eos"); path: a folder (images under it) or a glob
    ("~/Pictures/*/2022*"); near: "LAT,LON[,KM]" or a (lat, lon[, km]) tuple (KM defaults to 5);
    place: a city's name, resolved offline to its position and a radius by its size.
    """

    after: str | dt.date | None = None
    before: str | dt.date | None = None
    camera: str | None = None
    path: str | os.PathLike[str] | None = None
    near: str | tuple[float, ...] | None = None
    place: str | None = None
    _resolved: Place | None = field(default=None, repr=False, compare=False)

    def __bool__(self) -> bool:
        return any(v is not None for v in (self.after, self.before, self.camera, self.path, self.near, self.place))

    def checked(self) -> Filters:
        """These filters with every value parsed (InvalidInputError naming a bad one) and the
        place resolved (see .place_chosen)."""
        after, before = (parse_time(bound) if bound is not None else None for bound in (self.after, self.before))
        if after is not None and before is not None and not _earlier(after, before):
            # the filters would keep nothing, and an empty result would not say why
            raise InvalidInputError(
                f"the dates contradict each other: nothing is from {self.after} on and before {self.before}; "
                "give the earlier date as after and the later one as before"
            )
        if self.near is not None:
            parse_near(self.near)
        if self.camera is not None and not str(self.camera).strip():
            raise InvalidInputError("a camera filter must not be empty: give part of a make or model, e.g. iphone")
        if self.path is not None and not os.fspath(self.path).strip():
            raise InvalidInputError("a path filter must not be empty: give a folder or a glob")
        if self.place is not None and self._resolved is None:
            return replace(self, _resolved=resolve_place(self.place))
        return self

    @property
    def place_chosen(self) -> Place | None:
        """The city a place filter was resolved to (after checked())."""
        return self._resolved

    def matching_ids(self, store: Store) -> np.ndarray:
        """Ids of the indexed images these filters keep, int64 ascending."""
        f = self.checked()
        conditions: list[ColumnElement[bool]] = []
        if f.after is not None:
            conditions.append(_time_condition(parse_time(f.after), after=True))
        if f.before is not None:
            conditions.append(_time_condition(parse_time(f.before), after=False))
        if f.camera is not None:
            needle = " ".join(str(f.camera).split()).casefold()
            make, model = (func.lower(func.coalesce(column, "")) for column in (images.c.make, images.c.model))
            conditions.append(or_(*(func.instr(text, needle) > 0 for text in (make, model, make + " " + model))))
        circles = [parse_near(f.near)] if f.near is not None else []
        if f._resolved is not None:
            circles.append(Near(f._resolved.latitude, f._resolved.longitude, f._resolved.radius_km))
        for circle in circles:
            conditions.append(_box(circle))
        pattern = None
        if f.path is not None:
            folder, pattern = _path_parts(os.fspath(f.path))
            conditions.append(path_under(folder))
        if not circles and pattern is None:
            return store.ids_where(*conditions)
        rows = store.select_where(("path", "latitude", "longitude"), *conditions)
        kept = [
            r.id
            for r in rows
            if all(distance_km(c.latitude, c.longitude, r.latitude, r.longitude) <= c.km for c in circles)
            and (pattern is None or fnmatch.fnmatchcase(os.fsdecode(r.path), pattern))
        ]
        return np.array(sorted(kept), dtype=np.int64)


def parse_time(value: str | dt.date) -> TimeBound:
    """The start of a date or time given as 2023, 2023-06, 2023-06-14 or an ISO time (or a
    date/datetime). Raises InvalidInputError naming the value and the forms expected."""
    if isinstance(value, dt.datetime):
        return _bound(value)
    if isinstance(value, dt.date):
        return TimeBound(f"{value.isoformat()}T00:00:00")
    text = str(value).strip()
    try:
        if re.fullmatch(r"\d{4}", text):
            return TimeBound(f"{int(text):04d}-01-01T00:00:00")
        if re.fullmatch(r"\d{4}-\d{2}", text):
            return TimeBound(dt.datetime.strptime(text, "%Y-%m").strftime("%Y-%m-%dT%H:%M:%S"))
        if re.fullmatch(r"\d{4}-\d{2}-\d{2}", text):
            return TimeBound(dt.datetime.strptime(text, "%Y-%m-%d").strftime("%Y-%m-%dT%H:%M:%S"))
        if re.fullmatch(r"\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(:\d{2}(\.\d+)?)?(Z|[+-]\d{2}:?\d{2})?", text):
            return _bound(dt.datetime.fromisoformat(text.replace("Z", "+00:00")))
    except ValueError:
        pass
    raise InvalidInputError(f"cannot read the date {text!r}: give {_DATE_FORMS}")


def _earlier(first: TimeBound, second: TimeBound) -> bool:
    """Whether first starts before second: as instants when both have an offset, else as wall clocks."""
    if first.utc is not None and second.utc is not None:
        return first.utc < second.utc
    return first.local < second.local


def _bound(moment: dt.datetime) -> TimeBound:
    local = moment.replace(microsecond=0).strftime("%Y-%m-%dT%H:%M:%S")
    return TimeBound(local, moment.timestamp() if moment.tzinfo is not None else None)


def parse_near(value: str | tuple[float, ...] | list[float]) -> Near:
    """"LAT,LON[,KM]" (or a tuple) as a circle. Raises InvalidInputError naming the value."""
    expected = "LAT,LON or LAT,LON,KM in decimal degrees and kilometres, e.g. 46.55,7.98,20"
    parts = [p.strip() for p in value.split(",")] if isinstance(value, str) else list(value)
    try:
        numbers = [float(p) for p in parts]
    except (TypeError, ValueError):
        numbers = []
    if len(numbers) not in (2, 3) or not all(math.isfinite(n) for n in numbers):
        raise InvalidInputError(f"cannot read the position {value!r}: give {expected}")
    lat, lon = numbers[0], numbers[1]
    km = numbers[2] if len(numbers) == 3 else DEFAULT_NEAR_KM
    if not (-90 <= lat <= 90 and -180 <= lon <= 180):
        raise InvalidInputError(f"the position {value!r} is off the globe: latitude is -90..90 and longitude -180..180 ({expected})")
    if km <= 0:
        raise InvalidInputError(f"the radius in {value!r} must be more than 0 km ({expected})")
    return Near(lat, lon, km)


def _time_condition(bound: TimeBound, *, after: bool) -> ColumnElement[bool]:
    def holds(column: ColumnElement[Any], value: Any) -> ColumnElement[bool]:
        return column >= value if after else column < value

    if bound.utc is None:
        return holds(images.c.taken_at, bound.local)
    # an instant: compared as instants where the photo's offset is known, else by wall clock
    return or_(
        and_(images.c.taken_utc.is_not(None), holds(images.c.taken_utc, bound.utc)),
        and_(images.c.taken_utc.is_(None), holds(images.c.taken_at, bound.local)),
    )


def _box(circle: Near) -> ColumnElement[bool]:
    """A latitude/longitude box around the circle, for SQLite to narrow by (the circle is exact)."""
    dlat = circle.km / 110.574
    conditions = [images.c.latitude.between(circle.latitude - dlat, circle.latitude + dlat), images.c.longitude.is_not(None)]
    cos = math.cos(math.radians(circle.latitude))
    if cos > 1e-6:
        dlon = circle.km / (111.320 * cos)
        if circle.longitude - dlon >= -180 and circle.longitude + dlon <= 180:  # no wrap at the antimeridian
            conditions.append(images.c.longitude.between(circle.longitude - dlon, circle.longitude + dlon))
    return and_(*conditions)


def _path_parts(value: str) -> tuple[str, str | None]:
    """(the folder to narrow by, the glob to match or None) for a path filter."""
    path = os.path.abspath(os.path.expanduser(value))
    if not _GLOB.search(path):
        return path, None
    static = _GLOB.split(path, maxsplit=1)[0]
    folder = static if static.endswith("/") else os.path.dirname(static)
    return folder.rstrip("/") or "/", path
