"""A federated query's latency beside the same query on one hub holding all the data.

Usage::

    .venv/bin/python bench/federation.py [--size 2000] [--queries 200]

Starts four ``renkei serve`` processes on fresh temporary SQLite files: two city hubs
(Komae and Chofu), each holding half of ``--size`` AED entities; a prefecture hub holding
none, with one inclusive registration per city; and a single hub holding all of them.
Then, for ``--queries`` queries (a random ``q`` range on a numeric attribute, ``limit``
100, ``count=true``), one after the other and alternating between the two:

* federated ``GET /ngsi-ld/v1/entities?type=AEDLocation&q=...`` on the prefecture hub
  (it asks both cities and merges their answers);
* single    the same request on the hub holding everything (the baseline).

After the clock stops, both answers to each query must hold the same entities and the
same count. Prints p50/p95 of each and their ratio.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from harness import BenchError, beside, hub, machine, sqlite_store, warn_if_busy

TYPE = "AEDLocation"
BATCH = 500


def aed(n: int, city: str, rng: random.Random) -> dict[str, Any]:
    return {
        "id": f"urn:ngsi-ld:AEDLocation:{city}-{n:06d}",
        "type": TYPE,
        "name": {"type": "Property", "value": f"{city} AED {n}"},
        "battery": {"type": "Property", "value": rng.randint(0, 100)},
        "location": {
            "type": "GeoProperty",
            "value": {
                "type": "Point",
                "coordinates": [139.5 + rng.random() * 0.1, 35.6 + rng.random() * 0.1],
            },
        },
    }


def load(client: httpx.Client, url: str, entities: list[dict[str, Any]]) -> None:
    for i in range(0, len(entities), BATCH):
        r = client.post(
            f"{url}/ngsi-ld/v1/entityOperations/create",
            json=entities[i : i + BATCH],
            headers={"Content-Type": "application/json"},
        )
        if r.status_code != 201:
            raise BenchError(f"loading {url}: {r.status_code} {r.text[:300]}")


def register(client: httpx.Client, prefecture: str, city: str, url: str) -> None:
    body = {
        "id": f"urn:ngsi-ld:ContextSourceRegistration:{city}",
        "type": "ContextSourceRegistration",
        "information": [{"entities": [{"type": TYPE}]}],
        "endpoint": url,
    }
    r = client.post(
        f"{prefecture}/ngsi-ld/v1/csourceRegistrations",
        json=body,
        headers={"Content-Type": "application/json"},
    )
    if r.status_code != 201:
        raise BenchError(f"registering {city}: {r.status_code} {r.text[:300]}")


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p * len(ordered)))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=2000)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--seed", type=int, default=27)
    args = parser.parse_args()
    warn_if_busy()
    rng = random.Random(args.seed)
    half = args.size // 2
    komae_data = [aed(n, "komae", rng) for n in range(half)]
    chofu_data = [aed(n, "chofu", rng) for n in range(args.size - half)]
    with tempfile.TemporaryDirectory(prefix="renkei-bench-fed-") as tmp:
        work = Path(tmp)
        with (
            hub(work / "komae.log", sqlite_store(work / "komae.db")) as komae,
            hub(work / "chofu.log", sqlite_store(work / "chofu.db")) as chofu,
            hub(work / "tokyo.log", sqlite_store(work / "tokyo.db")) as tokyo,
            hub(work / "single.log", sqlite_store(work / "single.db")) as single,
            httpx.Client(timeout=30) as client,
        ):
            load(client, komae.url, komae_data)
            load(client, chofu.url, chofu_data)
            load(client, single.url, komae_data + chofu_data)
            register(client, tokyo.url, "komae", komae.url)
            register(client, tokyo.url, "chofu", chofu.url)
            times: dict[str, list[float]] = {"federated": [], "single": []}
            answers: list[tuple[Any, Any]] = []
            for i in range(args.queries):
                low = rng.randint(0, 90)
                params = {
                    "type": TYPE,
                    "q": f"battery=={low}..{low + 10}",
                    "limit": "100",
                    "count": "true",
                }
                pair: dict[str, Any] = {}
                order = [("federated", tokyo.url), ("single", single.url)]
                if i % 2:
                    order.reverse()
                for name, url in order:
                    start = time.perf_counter()
                    r = client.get(f"{url}/ngsi-ld/v1/entities", params=params)
                    times[name].append(time.perf_counter() - start)
                    if r.status_code != 200 or "NGSILD-Warning" in r.headers:
                        raise BenchError(f"{name}: {r.status_code} {r.text[:300]}")
                    pair[name] = ([e["id"] for e in r.json()], r.headers["NGSILD-Results-Count"])
                answers.append((pair["federated"], pair["single"]))
        for n, (fed, one) in enumerate(answers):
            if fed != one:
                raise BenchError(f"query {n}: the federated answer differs from the single hub's")
    print(f"federation: {args.size} AEDs in two cities, {args.queries} queries ({machine()})")
    for name, values in times.items():
        print(
            f"  {name:9s} p50 {statistics.median(values) * 1000:6.1f} ms   "
            f"p95 {pct(values, 0.95) * 1000:6.1f} ms"
        )
    fed95, one95 = pct(times["federated"], 0.95) * 1000, pct(times["single"], 0.95) * 1000
    print("  " + beside("federated p95", fed95, "one hub p95", one95, "ms", ".1f"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
