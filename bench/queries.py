"""Batch upsert and query latency at 10k and 100k entities, with a raw SQLite baseline.

Usage::

    .venv/bin/python bench/queries.py [--sizes 10000,100000] [--queries 200] [--keep DIR]

For each size N: starts ``renkei serve`` on a fresh temporary SQLite file, loads N
entities of three types (``AirQualityObserved``, ``ParkingSpot``, ``EvacuationSite``,
each with a GeoProperty ``location`` Point spread over Tokyo's 23 wards) with
``POST /ngsi-ld/v1/entityOperations/upsert`` in batches of 1000, a few batches in flight,
and times it. In the same run, the same rows (id, type, JSON document) go into a plain
SQLite table with one ``executemany`` in one transaction: the baseline.

Then three query kinds, each ``--queries`` requests sent one after the other (latency,
not throughput) with random parameters and ``limit=100``:

* range   ``type=AirQualityObserved&q=pm25>=X;pm25<=Y`` (a range holding ~10% of values)
* near    ``type=T&georel=near;maxDistance==500&geometry=Point`` around a random point
* within  ``georel=within&geometry=Polygon``, a random ~1 km x 1 km square "district"

Every response must be 200 and every returned entity must satisfy the query (checked
after the clock stops). Prints p50/p95 per size, then a table with the targets and the
p95 growth from the smallest to the largest size. Exit status 1 on a failure or, with
``--check``, when a target is missed.

With ``--keep DIR`` the store of each size stays in ``DIR/n<size>/``; a store already
loaded there with that many entities is reused (no load, no upsert figures), so that
query latency at 1M entities can be measured again without loading it again.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import random
import shutil
import sqlite3
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from harness import (
    BenchError,
    Server,
    beside,
    hub,
    machine,
    sqlite_store,
    stop_on_sigterm,
    warn_if_busy,
)

from broker.query.evaluate import haversine_m

ENTITIES = "/ngsi-ld/v1/entities"
UPSERT = "/ngsi-ld/v1/entityOperations/upsert"
JSON_HEADERS = {"Content-Type": "application/json"}

# Targets from the acceptance text (2-core machine).
TARGET_UPSERT_PER_S = 5000.0
TARGET_P95_MS = 50.0
LIMIT = 100

# Tokyo 23 wards, roughly: ~32 km x 28 km.
LON_MIN, LON_MAX = 139.55, 139.90
LAT_MIN, LAT_MAX = 35.55, 35.80
NEAR_M = 500.0
DISTRICT_M = 1000.0
EARTH_RADIUS_M = 6_371_008.8
M_PER_DEG_LAT = 111_320.0

TYPES = ("AirQualityObserved", "ParkingSpot", "EvacuationSite")
PM25_MAX = 100.0
RANGE_WIDTH = 10.0  # 10% of the pm25 span
KINDS = ("range", "near", "within")
CONNECT_ATTEMPTS = 5  # a refused connection is retried after a pause
MIN_MEASURED = 20  # measured per query kind even when the time budget has run out


# -- data ------------------------------------------------------------------------------------


def make_entity(i: int, rng: random.Random) -> dict[str, Any]:
    etype = TYPES[i % len(TYPES)]
    lon = round(rng.uniform(LON_MIN, LON_MAX), 6)
    lat = round(rng.uniform(LAT_MIN, LAT_MAX), 6)
    ent: dict[str, Any] = {
        "id": f"urn:ngsi-ld:{etype}:bench-{i:07d}",
        "type": etype,
        "location": {"type": "GeoProperty", "value": {"type": "Point", "coordinates": [lon, lat]}},
    }
    if etype == "AirQualityObserved":
        observed = f"2024-05-01T{rng.randrange(24):02d}:00:00Z"
        ent["pm25"] = {
            "type": "Property",
            "value": round(rng.uniform(0.0, PM25_MAX), 1),
            "unitCode": "GQ",
            "observedAt": observed,
        }
        ent["temperature"] = {
            "type": "Property",
            "value": round(rng.uniform(-5.0, 38.0), 1),
            "unitCode": "CEL",
            "observedAt": observed,
        }
    elif etype == "ParkingSpot":
        ent["status"] = {"type": "Property", "value": rng.choice(("free", "occupied"))}
        ent["category"] = {"type": "Property", "value": ["onStreet"]}
    else:
        ent["name"] = {"type": "Property", "value": f"避難所 {i}"}
        ent["capacity"] = {"type": "Property", "value": rng.randrange(50, 5000)}
    return ent


@dataclass
class Dataset:
    size: int
    bodies: list[bytes]  # one upsert request body per batch
    rows: list[tuple[str, str, str]]  # (id, type, JSON document) for the baseline


def make_dataset(size: int, batch: int, seed: int) -> Dataset:
    rng = random.Random(seed)
    bodies: list[bytes] = []
    rows: list[tuple[str, str, str]] = []
    for start in range(0, size, batch):
        ents = [make_entity(i, rng) for i in range(start, min(size, start + batch))]
        docs = [json.dumps(e, ensure_ascii=False, separators=(",", ":")) for e in ents]
        rows.extend((e["id"], e["type"], d) for e, d in zip(ents, docs, strict=True))
        bodies.append(("[" + ",".join(docs) + "]").encode())
    return Dataset(size, bodies, rows)


# -- load ------------------------------------------------------------------------------------


@dataclass
class LoadResult:
    entities: int
    seconds: float
    batch_ms: list[float]

    @property
    def per_s(self) -> float:
        return self.entities / self.seconds if self.seconds else 0.0


async def _upsert_all(broker: Server, bodies: list[bytes], concurrency: int) -> list[float]:
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    sem = asyncio.Semaphore(concurrency)
    times: list[float] = []

    async with httpx.AsyncClient(base_url=broker.url, limits=limits, timeout=120.0) as client:

        async def one(n: int, body: bytes) -> None:
            async with sem:
                for attempt in range(CONNECT_ATTEMPTS):
                    t0 = time.perf_counter()
                    try:
                        resp = await client.post(UPSERT, content=body, headers=JSON_HEADERS)
                        break
                    except httpx.ConnectError as exc:
                        # Refused before the body was sent: the batch can be sent again.
                        if attempt + 1 == CONNECT_ATTEMPTS or not broker.alive():
                            raise broker.gone(exc) from exc
                        print(f"  note: upsert: {exc}; retrying", file=sys.stderr, flush=True)
                        await asyncio.sleep(1.0)
                times.append((time.perf_counter() - t0) * 1000)
            if resp.status_code not in (201, 204):
                raise BenchError(
                    f"upsert batch {n}: status {resp.status_code} (want 201/204): {resp.text[:500]}"
                )

        tasks = [asyncio.create_task(one(n, b)) for n, b in enumerate(bodies)]
        try:
            await asyncio.gather(*tasks)
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
    return times


def load(broker: Server, data: Dataset, concurrency: int) -> LoadResult:
    t0 = time.perf_counter()
    times = asyncio.run(_upsert_all(broker, data.bodies, concurrency))
    elapsed = time.perf_counter() - t0
    return LoadResult(data.size, elapsed, times)


def stored_count(broker: Server) -> int:
    total = 0
    with httpx.Client(base_url=broker.url, timeout=120.0) as client:
        for etype in TYPES:
            resp = client.get(ENTITIES, params={"type": etype, "count": "true", "limit": "1"})
            if resp.status_code != 200:
                raise BenchError(f"count {etype}: status {resp.status_code}: {resp.text[:300]}")
            total += int(resp.headers["NGSILD-Results-Count"])
    return total


def sqlite_baseline(rows: list[tuple[str, str, str]], path: Path) -> LoadResult:
    """The same rows into a plain table, one ``executemany`` in one transaction.

    Same journal settings as the broker's store (WAL, synchronous=NORMAL).
    """
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("CREATE TABLE entities (id TEXT PRIMARY KEY, type TEXT NOT NULL, doc TEXT)")
        t0 = time.perf_counter()
        conn.execute("BEGIN")
        conn.executemany("INSERT INTO entities (id, type, doc) VALUES (?, ?, ?)", rows)
        conn.execute("COMMIT")
        elapsed = time.perf_counter() - t0
        (count,) = conn.execute("SELECT count(*) FROM entities").fetchone()
    finally:
        conn.close()
    if count != len(rows):
        raise BenchError(f"baseline table holds {count} rows, expected {len(rows)}")
    return LoadResult(len(rows), elapsed, [])


# -- queries ---------------------------------------------------------------------------------


def _value(ent: dict[str, Any], attr: str) -> Any:
    a = ent.get(attr)
    if isinstance(a, list):  # multi-instance; the bench never creates one
        a = a[0] if a else None
    return a.get("value") if isinstance(a, dict) else None


def _point(ent: dict[str, Any]) -> tuple[float, float]:
    coords = _value(ent, "location")["coordinates"]
    return float(coords[0]), float(coords[1])


@dataclass
class Query:
    params: dict[str, str]
    check: Any  # callable(entity) -> bool


def range_query(rng: random.Random) -> Query:
    lo = round(rng.uniform(0.0, PM25_MAX - RANGE_WIDTH), 1)
    hi = round(lo + RANGE_WIDTH, 1)
    return Query(
        {"type": "AirQualityObserved", "q": f"pm25>={lo};pm25<={hi}", "limit": str(LIMIT)},
        lambda e: e.get("type") == "AirQualityObserved" and lo <= _value(e, "pm25") <= hi,
    )


def near_query(rng: random.Random) -> Query:
    etype = rng.choice(TYPES)
    lon, lat = round(rng.uniform(LON_MIN, LON_MAX), 6), round(rng.uniform(LAT_MIN, LAT_MAX), 6)
    return Query(
        {
            "type": etype,
            "georel": f"near;maxDistance=={NEAR_M:g}",
            "geometry": "Point",
            "coordinates": f"[{lon},{lat}]",
            "limit": str(LIMIT),
        },
        lambda e: e.get("type") == etype and haversine_m(lon, lat, *_point(e)) <= NEAR_M + 1.0,
    )


def within_query(rng: random.Random) -> Query:
    dlat = DISTRICT_M / M_PER_DEG_LAT
    lat0 = rng.uniform(LAT_MIN, LAT_MAX - dlat)
    dlon = DISTRICT_M / (M_PER_DEG_LAT * math.cos(math.radians(lat0 + dlat / 2)))
    lon0 = rng.uniform(LON_MIN, LON_MAX - dlon)
    x0, y0, x1, y1 = (round(v, 6) for v in (lon0, lat0, lon0 + dlon, lat0 + dlat))
    ring = [[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]
    return Query(
        {
            "georel": "within",
            "geometry": "Polygon",
            "coordinates": json.dumps([ring], separators=(",", ":")),
            "limit": str(LIMIT),
        },
        lambda e: (lambda p: x0 <= p[0] <= x1 and y0 <= p[1] <= y1)(_point(e)),
    )


QUERY_MAKERS = {"range": range_query, "near": near_query, "within": within_query}


@dataclass
class QueryResult:
    latencies_ms: list[float] = field(default_factory=list)
    results: list[int] = field(default_factory=list)
    cut_short: bool = False
    reconnects: int = 0

    def pct(self, p: float) -> float:
        return percentile(self.latencies_ms, p)

    @property
    def mean_results(self) -> float:
        return sum(self.results) / len(self.results) if self.results else 0.0

    @property
    def empty_share(self) -> float:
        return sum(1 for r in self.results if r == 0) / len(self.results) if self.results else 0.0


def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile, ``p`` in 0..100."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[rank - 1]


def run_queries(
    broker: Server, kind: str, count: int, warmup: int, rng: random.Random, budget: float
) -> QueryResult:
    """``warmup`` + ``count`` queries; fewer (but >= ``MIN_MEASURED``) once ``budget`` s pass."""
    make = QUERY_MAKERS[kind]
    out = QueryResult()
    deadline = time.monotonic() + budget
    with httpx.Client(base_url=broker.url, timeout=30.0) as client:
        for n in range(warmup + count):
            if len(out.latencies_ms) >= min(count, MIN_MEASURED) and time.monotonic() > deadline:
                out.cut_short = True
                break
            query = make(rng)
            for attempt in range(CONNECT_ATTEMPTS):
                t0 = time.perf_counter()
                try:
                    resp = client.get(ENTITIES, params=query.params)
                    break
                except httpx.ConnectError as exc:
                    # Refused before anything was sent: retry the same query, time that one.
                    if attempt + 1 == CONNECT_ATTEMPTS or not broker.alive():
                        raise broker.gone(exc) from exc
                    out.reconnects += 1
                    print(f"  note: {kind}: {exc}; retrying", file=sys.stderr, flush=True)
                    time.sleep(1.0)
            elapsed = (time.perf_counter() - t0) * 1000
            if resp.status_code != 200:
                raise BenchError(
                    f"{kind} query {query.params}: status {resp.status_code}: {resp.text[:300]}"
                )
            body = resp.json()
            if not isinstance(body, list) or len(body) > LIMIT:
                raise BenchError(f"{kind} query {query.params}: not a list of <= {LIMIT}")
            bad = [e.get("id") for e in body if not query.check(e)]
            if bad:
                raise BenchError(
                    f"{kind} query {query.params}: {len(bad)} entities do not match, e.g. {bad[0]}"
                )
            if n >= warmup:
                out.latencies_ms.append(elapsed)
                out.results.append(len(body))
    return out


# -- one size --------------------------------------------------------------------------------


@dataclass
class SizeResult:
    size: int
    #: None when a kept store was reused (nothing loaded)
    upsert: LoadResult | None
    baseline: LoadResult | None
    queries: dict[str, QueryResult]


def stored_entities(db: Path) -> int:
    """Entities in a kept store (0 when there is none yet)."""
    if not db.exists():
        return 0
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return int(conn.execute("SELECT count(*) FROM entities").fetchone()[0])
    except sqlite3.Error:
        return 0
    finally:
        conn.close()


def run_size(size: int, args: argparse.Namespace, tmp: Path) -> SizeResult:
    workdir = (args.keep or tmp) / f"n{size}"
    workdir.mkdir(parents=True, exist_ok=True)
    db = workdir / "broker.db"
    found = stored_entities(db)
    if found == size:
        print(f"\n== {size:,} entities: reusing {db}", flush=True)
        with hub(workdir / "broker.log", sqlite_store(db, args.writer)) as broker:
            queries = measure_queries(broker, args)
        return SizeResult(size, None, None, queries)
    if found:
        raise BenchError(f"{db} holds {found:,} entities, not {size:,}: remove it")
    t0 = time.perf_counter()
    data = make_dataset(size, args.batch, args.seed)
    print(
        f"\n== {size:,} entities: {len(data.bodies)} batches of <= {args.batch} "
        f"(generated in {time.perf_counter() - t0:.1f} s)",
        flush=True,
    )
    with hub(workdir / "broker.log", sqlite_store(db, args.writer)) as broker:
        up = load(broker, data, args.concurrency)
        print(
            f"  upsert    {up.per_s:>9,.0f} entities/s  ({up.seconds:.1f} s, {args.concurrency} "
            f"batches in flight, batch p50 {percentile(up.batch_ms, 50):.0f} ms "
            f"p95 {percentile(up.batch_ms, 95):.0f} ms)",
            flush=True,
        )
        stored = stored_count(broker)
        if stored != size:
            raise BenchError(f"broker stores {stored} entities after the load, expected {size}")

        base = sqlite_baseline(data.rows, workdir / "baseline.db")
        print(
            f"  baseline  {base.per_s:>9,.0f} rows/s      ({base.seconds:.2f} s, sqlite3 "
            "executemany, one transaction)\n  "
            + beside("upsert", up.per_s, "SQLite", base.per_s, "entities/s"),
            flush=True,
        )
        del data
        (workdir / "baseline.db").unlink()
        queries = measure_queries(broker, args)
    if args.keep is None:
        shutil.rmtree(workdir, ignore_errors=True)
    return SizeResult(size, up, base, queries)


def measure_queries(broker: Server, args: argparse.Namespace) -> dict[str, QueryResult]:
    queries: dict[str, QueryResult] = {}
    for i, kind in enumerate(KINDS):
        rng = random.Random(args.seed * 1000 + i)  # same parameters at every size
        res = run_queries(broker, kind, args.queries, args.warmup, rng, args.budget)
        queries[kind] = res
        short = f", time budget: {len(res.latencies_ms)} measured" if res.cut_short else ""
        short += f", {res.reconnects} refused connections retried" if res.reconnects else ""
        print(
            f"  {kind:<8}  p50 {res.pct(50):7.2f} ms  p95 {res.pct(95):7.2f} ms  "
            f"max {max(res.latencies_ms):7.2f} ms  results/query {res.mean_results:5.1f} "
            f"(empty {res.empty_share:.0%}{short})",
            flush=True,
        )
        if res.mean_results == 0:
            raise BenchError(f"{kind}: every query returned nothing; the data or query is off")
    if not broker.alive():
        raise BenchError("the broker exited during the run")
    return queries


# -- report ----------------------------------------------------------------------------------


def yes(ok: bool) -> str:
    return "yes" if ok else "NO"


def print_report(results: list[SizeResult]) -> bool:
    """Prints the summary tables; returns True when a target is missed."""
    missed = False
    print()
    head = (
        f"{'entities':>9} {'upsert/s':>9} {'sqlite/s':>10} {'ratio':>6}  "
        f"{'>=' + format(TARGET_UPSERT_PER_S, ',.0f') + '/s':>9}"
    )
    print(head)
    print("-" * len(head))
    for r in results:
        if r.upsert is None or r.baseline is None:
            print(f"{r.size:>9,} {'(kept store reused: not loaded)':>38}")
            continue
        ok = r.upsert.per_s >= TARGET_UPSERT_PER_S
        missed |= not ok
        print(
            f"{r.size:>9,} {r.upsert.per_s:>9,.0f} {r.baseline.per_s:>10,.0f} "
            f"{r.upsert.per_s / r.baseline.per_s:>6.1%}  {yes(ok):>9}"
        )

    print()
    sizes = [r.size for r in results]
    cols = "".join(f" {f'p50@{n:,}':>11} {f'p95@{n:,}':>11}" for n in sizes)
    grow = len(results) > 1
    largest = max(results, key=lambda r: r.size)
    smallest = min(results, key=lambda r: r.size)
    size_ratio = largest.size / smallest.size
    head = f"{'query':<7}{cols}  {'p95<=' + format(TARGET_P95_MS, 'g') + 'ms':>10}"
    if grow:
        head += f"  {'p95 growth':>10} {'sub-linear':>10}"
    print(head)
    print("-" * len(head))
    for kind in KINDS:
        line = f"{kind:<7}"
        for r in results:
            q = r.queries[kind]
            line += f" {q.pct(50):>8.2f} ms {q.pct(95):>8.2f} ms"
        p95_ok = largest.queries[kind].pct(95) <= TARGET_P95_MS
        missed |= not p95_ok
        line += f"  {yes(p95_ok):>10}"
        if grow:
            g = largest.queries[kind].pct(95) / smallest.queries[kind].pct(95)
            sub = g < size_ratio
            missed |= not sub
            line += f"  {g:>9.2f}x {yes(sub):>10}"
        print(line)
    print(
        f"\np95 target checked at {largest.size:,} entities"
        + (
            f"; growth = p95@{largest.size:,} / p95@{smallest.size:,}, sub-linear when "
            f"< {size_ratio:g}x (the growth in entities)"
            if grow
            else ""
        )
    )
    print(f"targets: {'all met' if not missed else 'MISSED'}")
    return missed


# -- main ------------------------------------------------------------------------------------


def parse_sizes(text: str) -> list[int]:
    try:
        sizes = [int(s.replace("_", "")) for s in text.split(",") if s.strip()]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"bad --sizes {text!r}") from exc
    if not sizes or any(n < 1 for n in sizes):
        raise argparse.ArgumentTypeError("--sizes needs positive integers")
    return sorted(set(sizes))


def main() -> int:
    parser = argparse.ArgumentParser(
        description="Batch upsert vs raw SQLite, and query latency at several store sizes."
    )
    parser.add_argument(
        "--sizes",
        type=parse_sizes,
        default=[10_000, 100_000],
        help="entity counts, comma-separated (default 10000,100000)",
    )
    parser.add_argument(
        "--queries", type=int, default=200, help="measured requests per query kind (default 200)"
    )
    parser.add_argument(
        "--warmup", type=int, default=10, help="unmeasured requests per query kind (default 10)"
    )
    parser.add_argument(
        "--batch", type=int, default=1000, help="entities per upsert request (default 1000)"
    )
    parser.add_argument(
        "--concurrency", type=int, default=3, help="upsert requests in flight (default 3)"
    )
    parser.add_argument(
        "--budget",
        type=float,
        default=60.0,
        help="seconds per query kind and size; fewer queries are measured when it runs out "
        "(default 60)",
    )
    parser.add_argument("--seed", type=int, default=1, help="random seed (default 1)")
    parser.add_argument(
        "--writer",
        choices=("process", "thread"),
        default="process",
        help="the SQLite store's writer: its own process (default) or a thread",
    )
    parser.add_argument(
        "--keep",
        type=Path,
        help="keep each size's store in this folder; a store already loaded there is reused",
    )
    parser.add_argument("--check", action="store_true", help="exit 1 when a target is missed")
    args = parser.parse_args()
    if args.queries < 1 or args.warmup < 0 or args.batch < 1 or args.concurrency < 1:
        parser.error("--queries, --batch and --concurrency must be >= 1, --warmup >= 0")
    if args.budget <= 0:
        parser.error("--budget must be > 0")

    stop_on_sigterm()
    warn_if_busy()
    print(
        f"Renkei query benchmark: sizes {', '.join(f'{n:,}' for n in args.sizes)}; "
        f"{args.queries} queries per kind (+{args.warmup} warm-up), limit={LIMIT}; "
        f"{args.writer} writer; {machine()}, SQLite {sqlite3.sqlite_version}",
        flush=True,
    )
    tmp = Path(tempfile.mkdtemp(prefix="renkei-bench-q-"))
    results: list[SizeResult] = []
    try:
        for size in args.sizes:
            results.append(run_size(size, args, tmp))
    except KeyboardInterrupt:
        if results:
            print_report(results)
        print("\ninterrupted; broker stopped", file=sys.stderr)
        shutil.rmtree(tmp, ignore_errors=True)
        return 130
    except (BenchError, httpx.HTTPError, sqlite3.Error) as exc:
        if results:
            print_report(results)
        print(f"\nFAILED: {exc}", file=sys.stderr)
        for log in sorted(tmp.glob("*/broker.log")):
            tail = "\n".join(log.read_text(errors="replace").splitlines()[-30:])
            print(f"\n--- broker log, last lines ({log}) ---\n{tail}", file=sys.stderr)
        print(f"\nfiles kept in {tmp}", file=sys.stderr)
        return 1
    missed = print_report(results)
    shutil.rmtree(tmp, ignore_errors=True)
    return 1 if (missed and args.check) else 0


if __name__ == "__main__":
    sys.exit(main())
