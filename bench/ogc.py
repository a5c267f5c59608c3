"""OGC API - Features items with bbox at 100k entities, beside the same NGSI-LD GeoJSON query.

Usage::

    .venv/bin/python bench/ogc.py [--size 100000] [--queries 100]

Starts ``renkei serve`` on a fresh temporary SQLite file and loads ``--size`` entities
of three types (the data of ``bench/queries.py``: Points spread over Tokyo's 23 wards).
Then, for ``--queries`` random boxes (each ~1/10 of the area, so that a box holds more
than one page of ``EvacuationSite`` entities), one after the other and alternating:

* ogc     ``GET /ogc/collections/EvacuationSite/items?bbox=...&limit=1000``
* ngsi-ld ``GET /ngsi-ld/v1/entities?type=EvacuationSite&georel=intersects&geometry=Polygon
  &coordinates=...&limit=1000&count=true`` with ``Accept: application/geo+json``
  (``count=true`` because the OGC response carries ``numberMatched``)

After the clock stops, both answers to each box must hold the same features in the same
order. Prints p50/p95/max per kind and the OGC/NGSI-LD p95 ratio, and the time of the
first ``/ogc/collections/EvacuationSite`` (extent computed by a scan of the type).
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from harness import BenchError, hub, sqlite_store, warn_if_busy
from queries import LAT_MAX, LAT_MIN, LON_MAX, LON_MIN, load, make_dataset

TYPE = "EvacuationSite"
LIMIT = 1000
BOX_SHARE = 0.1  # of the whole area, per query


def random_box(rng: random.Random) -> tuple[float, float, float, float]:
    side = BOX_SHARE**0.5
    w, h = (LON_MAX - LON_MIN) * side, (LAT_MAX - LAT_MIN) * side
    x = rng.uniform(LON_MIN, LON_MAX - w)
    y = rng.uniform(LAT_MIN, LAT_MAX - h)
    return round(x, 6), round(y, 6), round(x + w, 6), round(y + h, 6)


def ogc_request(
    box: tuple[float, float, float, float],
) -> tuple[str, dict[str, str], dict[str, str]]:
    bbox = ",".join(str(v) for v in box)
    return f"/ogc/collections/{TYPE}/items", {"bbox": bbox, "limit": str(LIMIT)}, {}


def ngsi_request(
    box: tuple[float, float, float, float],
) -> tuple[str, dict[str, str], dict[str, str]]:
    x1, y1, x2, y2 = box
    ring = [[x1, y1], [x2, y1], [x2, y2], [x1, y2], [x1, y1]]
    params = {
        "type": TYPE,
        "georel": "intersects",
        "geometry": "Polygon",
        "coordinates": json.dumps([ring], separators=(",", ":")),
        "limit": str(LIMIT),
        "count": "true",
    }
    return "/ngsi-ld/v1/entities", params, {"Accept": "application/geo+json"}


def timed(
    client: httpx.Client, req: tuple[str, dict[str, str], dict[str, str]]
) -> tuple[float, Any]:
    path, params, headers = req
    t0 = time.perf_counter()
    resp = client.get(path, params=params, headers=headers)
    body = resp.content
    ms = (time.perf_counter() - t0) * 1000
    if resp.status_code != 200:
        raise BenchError(f"{path}: status {resp.status_code}: {body[:300]!r}")
    return ms, json.loads(body)


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    warn_if_busy(0.25)
    rng = random.Random(args.seed)
    data = make_dataset(args.size, 1000, args.seed)
    with (
        tempfile.TemporaryDirectory(prefix="renkei-bench-ogc-") as tmp,
        hub(Path(tmp) / "broker.log", sqlite_store(Path(tmp) / "broker.db")) as broker,
    ):
        loaded = load(broker, data, concurrency=4)
        print(f"loaded {args.size} entities in {loaded.seconds:.1f} s ({loaded.per_s:.0f}/s)")
        with httpx.Client(base_url=broker.url, timeout=120.0) as client:
            t0 = time.perf_counter()
            col = client.get(f"/ogc/collections/{TYPE}")
            cold = (time.perf_counter() - t0) * 1000
            if col.status_code != 200:
                raise BenchError(f"collection: {col.status_code} {col.text[:300]}")
            t0 = time.perf_counter()
            client.get(f"/ogc/collections/{TYPE}")
            warm = (time.perf_counter() - t0) * 1000
            bbox = col.json()["extent"]["spatial"]["bbox"][0]
            # warm-up: connections, caches, the term maps
            for _ in range(5):
                box = random_box(rng)
                timed(client, ogc_request(box))
                timed(client, ngsi_request(box))
            times: dict[str, list[float]] = {"ogc": [], "ngsi-ld": []}
            answers: list[tuple[Any, Any]] = []
            returned: list[int] = []
            for i in range(args.queries):
                box = random_box(rng)
                pair: list[Any] = [None, None]
                # alternate which goes first so neither always meets a warmer cache
                order = [("ogc", ogc_request, 0), ("ngsi-ld", ngsi_request, 1)]
                for kind, make, slot in order if i % 2 == 0 else order[::-1]:
                    ms, body = timed(client, make(box))
                    times[kind].append(ms)
                    pair[slot] = body
                answers.append((pair[0], pair[1]))
                returned.append(len(pair[0]["features"]))
    for ogc_body, ngsi_body in answers:
        a = [f["id"] for f in ogc_body["features"]]
        b = [f["id"] for f in ngsi_body["features"]]
        if a != b:
            raise BenchError("the OGC and NGSI-LD answers to one box differ")
        if ogc_body["numberReturned"] != len(a) or len(a) > LIMIT:
            raise BenchError("numberReturned does not match the features returned")
    print(
        f"collection {TYPE}: extent {bbox}; first request {cold:.0f} ms (scan), then {warm:.1f} ms"
    )
    print(
        f"{args.queries} boxes, features per answer: mean {statistics.mean(returned):.0f}, max {max(returned)}"
    )
    print(f"{'query':<10} {'p50 ms':>8} {'p95 ms':>8} {'max ms':>8}")
    for kind, values in times.items():
        print(f"{kind:<10} {pct(values, 50):8.1f} {pct(values, 95):8.1f} {max(values):8.1f}")
    ratio = pct(times["ogc"], 95) / pct(times["ngsi-ld"], 95)
    print(f"p95 ratio ogc / ngsi-ld: {ratio:.2f}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)
