"""Temporal API at scale: a year of 10-minute readings for 200 sensors, then two EBPM queries.

Usage::

    .venv/bin/python bench/temporal.py [--sensors 200] [--days 365] [--queries 100]

Starts ``renkei serve`` on a fresh temporary SQLite file and loads ``sensors x days x 144``
``AirQualityObserved`` NO2 readings (about 10.5 M at the defaults) through
``POST /ngsi-ld/v1/temporal/entities``, one week of one sensor (1,008 instances) per
request, a few requests in flight. Then, one request after the other (latency):

* (a) raw     one sensor, one random week, raw instances (``timerel=between``)
* (b) aggr    the whole type, one random month, ``aggrMethods=avg,max`` with
              ``aggrPeriodDuration=P1D`` (200 sensors x 30 daily periods)

Every response is checked (instance count for (a), one entity per sensor with 30 periods
for (b)). The baseline, measured in the same run on the same file: the same selections as
plain SQL on the history table with Python's sqlite3, each instance decoded from its row
(no HTTP, no JSON-LD, no rendering).
Prints the load rate, store size per million instances, p50/p95 of both queries beside the
baseline, and the targets ((a) <= 50 ms, (b) <= 500 ms p95). Exit 1 on a failed check, or
with ``--check`` when a target is missed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import random
import sqlite3
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import orjson
from harness import BenchError, hub, sqlite_store, stop_on_sigterm, warn_if_busy

from broker.store.sqlhistory import instance_of

TEMPORAL = "/ngsi-ld/v1/temporal/entities"
JSON_HEADERS = {"Content-Type": "application/json"}
TYPE = "AirQualityObserved"
TYPE_IRI = f"https://uri.etsi.org/ngsi-ld/default-context/{TYPE}"
NO2 = "https://uri.etsi.org/ngsi-ld/default-context/NO2"
START = datetime(2025, 1, 1, tzinfo=UTC)
STEP = timedelta(minutes=10)
PER_WEEK = 7 * 144
TARGET_RAW_MS = 50.0
TARGET_AGGR_MS = 500.0


def iso(t: datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


def sensor_id(n: int) -> str:
    return f"urn:ngsi-ld:{TYPE}:bench-{n:04d}"


def week_body(n: int, first: int, count: int) -> bytes:
    rng = random.Random(n * 100_003 + first)
    instances = [
        {
            "type": "Property",
            "value": round(20 + 15 * rng.random(), 2),
            "observedAt": iso(START + STEP * i),
        }
        for i in range(first, first + count)
    ]
    return orjson.dumps({"id": sensor_id(n), "type": TYPE, "NO2": instances})


async def load(url: str, sensors: int, total: int, inflight: int) -> float:
    jobs = [(n, first) for first in range(0, total, PER_WEEK) for n in range(sensors)]
    queue: asyncio.Queue[tuple[int, int]] = asyncio.Queue()
    for job in jobs:
        queue.put_nowait(job)
    done = 0
    t0 = time.perf_counter()

    async def worker(client: httpx.AsyncClient) -> None:
        nonlocal done
        while not queue.empty():
            n, first = queue.get_nowait()
            count = min(PER_WEEK, total - first)
            r = await client.post(
                TEMPORAL, content=week_body(n, first, count), headers=JSON_HEADERS
            )
            if r.status_code not in (201, 204):
                raise BenchError(f"load: {r.status_code} {r.text[:300]}")
            done += count
            if done % 500_000 < count:
                rate = done / (time.perf_counter() - t0)
                print(f"  loaded {done:>10,} instances ({rate:,.0f}/s)", flush=True)

    async with httpx.AsyncClient(base_url=url, timeout=300) as client:
        await asyncio.gather(*(worker(client) for _ in range(inflight)))
    return time.perf_counter() - t0


def pct(samples: list[float], p: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


#: (a) a sensor and the start of its week; (b) the start of a month
Selections = tuple[list[tuple[int, datetime]], list[datetime]]
#: milliseconds per query kind ("raw", "aggr")
Timings = dict[str, list[float]]


def selections(sensors: int, days: int, queries: int) -> Selections:
    """The queries' random selections, the same for the API and its baseline."""
    rng = random.Random(7)
    raw = [
        (rng.randrange(sensors), START + timedelta(days=rng.randrange(0, days - 7)))
        for _ in range(queries)
    ]
    aggr = [
        START + timedelta(days=rng.randrange(0, days - 30)) for _ in range(max(queries // 4, 10))
    ]
    return raw, aggr


def measure_api(url: str, sensors: int, plan: Selections) -> Timings:
    out: Timings = {"raw": [], "aggr": []}
    raw, aggr = plan
    with httpx.Client(base_url=url, timeout=60) as client:
        for i, (n, t0) in enumerate(raw):
            params = {
                "timerel": "between",
                "timeAt": iso(t0),
                "endTimeAt": iso(t0 + timedelta(days=7)),
                "attrs": "NO2",
            }
            start = time.perf_counter()
            r = client.get(f"{TEMPORAL}/{sensor_id(n)}", params=params)
            elapsed = time.perf_counter() - start
            if r.status_code != 200 or len(r.json()["NO2"]) != PER_WEEK:
                raise BenchError(f"raw query: {r.status_code} {r.text[:300]}")
            if i:  # the first request warms the connection
                out["raw"].append(elapsed * 1000)
        for i, t0 in enumerate(aggr):
            params = {
                "type": TYPE,
                "timerel": "between",
                "timeAt": iso(t0),
                "endTimeAt": iso(t0 + timedelta(days=30)),
                "attrs": "NO2",
                "options": "aggregatedValues",
                "aggrMethods": "avg,max",
                "aggrPeriodDuration": "P1D",
                "limit": str(sensors),
            }
            start = time.perf_counter()
            r = client.get(TEMPORAL, params=params)
            elapsed = time.perf_counter() - start
            body = r.json()
            if (
                r.status_code != 200
                or len(body) != sensors
                or any(len(e["NO2"]["avg"]) != 30 for e in body)
            ):
                raise BenchError(f"aggregate query: {r.status_code} {r.text[:300]}")
            if i:
                out["aggr"].append(elapsed * 1000)
    return out


def measure_sql(db: Path, plan: Selections) -> Timings:
    """The floor: the same selections in plain SQL on the history table."""
    us = 1_000_000
    out: Timings = {"raw": [], "aggr": []}
    raw, aggr = plan
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        for n, t0 in raw:
            lo = int(t0.timestamp()) * us
            start = time.perf_counter()
            rows = conn.execute(
                "SELECT doc, num, at FROM history WHERE sid=(SELECT sid FROM history_series "
                "WHERE tenant='' AND eid=? AND attr=?) AND deleted IS NULL AND at >= ? AND at < ? "
                "ORDER BY at",
                (sensor_id(n), NO2, lo, lo + 7 * 86_400 * us),
            ).fetchall()
            [instance_of(*r) for r in rows]
            out["raw"].append((time.perf_counter() - start) * 1000)
        for t0 in aggr:
            lo = int(t0.timestamp()) * us
            start = time.perf_counter()
            conn.execute(
                "SELECT h.sid, (h.at - ?) / ?, avg(h.num), max(h.num) FROM history_types t "
                "JOIN history_series s ON s.tenant=t.tenant AND s.eid=t.eid AND s.attr=? "
                "JOIN history h ON h.sid=s.sid AND h.at >= ? AND h.at < ? AND h.deleted IS NULL "
                "WHERE t.tenant='' AND t.type=? GROUP BY h.sid, 2",
                (lo, 86_400 * us, NO2, lo, lo + 30 * 86_400 * us, TYPE_IRI),
            ).fetchall()
            out["aggr"].append((time.perf_counter() - start) * 1000)
    finally:
        conn.close()
    return out


def loaded_instances(db: Path) -> int:
    if not db.exists():
        return 0
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return int(conn.execute("SELECT count(*) FROM history").fetchone()[0])
    except sqlite3.Error:
        return 0
    finally:
        conn.close()


def arguments(description: str) -> argparse.ArgumentParser:
    """The options every store's run of this benchmark takes."""
    ap = argparse.ArgumentParser(
        description=description, formatter_class=argparse.RawTextHelpFormatter
    )
    ap.add_argument("--sensors", type=int, default=200)
    ap.add_argument("--days", type=int, default=365)
    ap.add_argument("--queries", type=int, default=100)
    ap.add_argument("--inflight", type=int, default=4)
    ap.add_argument("--check", action="store_true", help="exit 1 when a target is missed")
    return ap


def parse(ap: argparse.ArgumentParser) -> argparse.Namespace:
    """The options, checked; the run then stops on SIGTERM as on Ctrl+C."""
    args = ap.parse_args()
    if args.days < 31:
        ap.error("--days must be at least 31 (the aggregate query spans 30 days)")
    stop_on_sigterm()
    warn_if_busy(0.25)
    return args


def run(
    url: str, args: argparse.Namespace, plan: Selections, reused: bool
) -> tuple[float, Timings]:
    """Load the readings into the hub at ``url`` (unless ``reused``), then time the
    queries; returns the load's seconds (NaN when reused) and the timings."""
    seconds = math.nan
    if not reused:
        print(f"loading {args.sensors} sensors x {args.days * 144:,} readings ...", flush=True)
        seconds = asyncio.run(load(url, args.sensors, args.days * 144, args.inflight))
    return seconds, measure_api(url, args.sensors, plan)


def report(
    count: int,
    seconds: float,
    size: int | None,
    size_note: str,
    api: Timings,
    base: Timings,
    base_label: str,
    check: bool,
) -> int:
    """Print the figures beside the baseline and the targets; the exit status."""
    print()
    if math.isnan(seconds):
        print(f"instances (reused) {count:>14,}")
    else:
        print(f"instances loaded   {count:>14,}  in {seconds:,.0f} s  ({count / seconds:,.0f}/s)")
    if size is None:
        print(f"store size         {'not available':>14}  ({size_note})")
    else:
        print(
            f"store size         {size / 2**20:>14,.0f} MiB  "
            f"({size / 2**20 / (count / 1e6):,.1f} MiB per million instances{size_note})"
        )
    print()
    head = f"{base_label} p95"
    width = max(8, len(head))
    print(f"{'query':<38} {'p50 ms':>8} {'p95 ms':>8} {head:>{width}} {'ratio':>7} {'target':>8}")
    ok = True
    for key, label, target in (
        ("raw", "(a) one sensor, one week, raw", TARGET_RAW_MS),
        ("aggr", "(b) one type, one month, avg,max P1D", TARGET_AGGR_MS),
    ):
        p95 = pct(api[key], 95)
        floor = pct(base[key], 95)
        met = p95 <= target
        ok &= met
        print(
            f"{label:<38} {statistics.median(api[key]):>8.1f} {p95:>8.1f} {floor:>{width}.1f} "
            f"{p95 / floor if floor else float('nan'):>6.1f}x {'<= ' + str(int(target)):>8} "
            f"{'met' if met else 'MISSED'}"
        )
    return 0 if ok or not check else 1


def main() -> int:
    ap = arguments(__doc__ or "")
    ap.add_argument(
        "--keep",
        type=Path,
        help="keep the store in this folder; a store already loaded there is reused",
    )
    args = parse(ap)
    plan = selections(args.sensors, args.days, args.queries)
    with tempfile.TemporaryDirectory(prefix="renkei-bench-") as tmp:
        folder = args.keep or Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        db = folder / "temporal.db"
        count = args.sensors * args.days * 144
        loaded = loaded_instances(db)
        if loaded not in (0, count):
            raise BenchError(f"{db} holds {loaded:,} instances, not {count:,}: remove it")
        with hub(Path(tmp) / "broker.log", sqlite_store(db)) as server:
            if loaded:
                print(f"reusing {db} ({loaded:,} instances)", flush=True)
            seconds, api = run(server.url, args, plan, reused=bool(loaded))
        sql = measure_sql(db, plan)
        size = sum(p.stat().st_size for p in db.parent.glob("temporal.db*"))
    return report(count, seconds, size, "", api, sql, "SQL", args.check)


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
    sys.exit(130)
