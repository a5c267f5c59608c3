"""The query benchmark (``queries.py``) on the MongoDB store, with a raw pymongo baseline.

Usage::

    .venv/bin/python bench/queries_mongo.py --mongo 'mongodb://127.0.0.1:27017/?directConnection=true'
    .venv/bin/python bench/queries_mongo.py --sizes 1000 --batch 100 --concurrency 1 \
        --queries 10 --warmup 2                                           # mongoeco smoke run

For each size N: ``renkei serve --store`` a fresh database on the server, the same N
entities and batched upserts as ``queries.py``, then the same range / near / within
queries, checked as there (a kind whose every query is empty fails the run: at 300
entities no 500 m circle holds one). Baseline, in the same run: the same rows (id, type,
JSON document) into a scratch collection of that server with one unordered
``insert_many`` at the same write concern (``w=majority``). Without ``--mongo``, a mongoeco wire server (in-memory, pure
Python, from the tests' side virtualenv) is started: that run checks the benchmark and
the backend end to end, but its figures say nothing about MongoDB.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
import uuid
from pathlib import Path

from harness import BenchError, beside, fresh_database, hub, mongo_database, mongo_server
from pymongo import MongoClient
from queries import (
    KINDS,
    LoadResult,
    SizeResult,
    load,
    make_dataset,
    measure_queries,
    parse_sizes,
    percentile,
    stored_count,
)


def pymongo_baseline(url: str, rows: list[tuple[str, str, str]]) -> LoadResult:
    client: MongoClient[dict[str, object]] = MongoClient(url, w="majority")
    try:
        coll = client.get_default_database("renkei_bench")["baseline_" + uuid.uuid4().hex[:8]]
        docs: list[dict[str, object]] = [
            {"_id": eid, "type": typ, "doc": doc} for eid, typ, doc in rows
        ]
        t0 = time.perf_counter()
        coll.insert_many(docs, ordered=False)
        seconds = time.perf_counter() - t0
        coll.drop()
    finally:
        client.close()
    return LoadResult(len(rows), seconds, [seconds * 1000])


def run_size(size: int, args: argparse.Namespace, server: str, tmp: Path) -> SizeResult:
    workdir = tmp / f"n{size}"
    workdir.mkdir()
    data = make_dataset(size, args.batch, args.seed)
    database = fresh_database(f"renkei_bench_{size}")
    print(f"\n== {size:,} entities into {database}", flush=True)
    try:
        with (
            mongo_database(server, database) as store,
            hub(workdir / "broker.log", store) as broker,
        ):
            up = load(broker, data, args.concurrency)
            print(
                f"  upsert    {up.per_s:>9,.0f} entities/s  ({up.seconds:.1f} s, batch p95 "
                f"{percentile(up.batch_ms, 95):.0f} ms)",
                flush=True,
            )
            if (stored := stored_count(broker)) != size:
                raise BenchError(f"broker stores {stored} entities, expected {size}")
            base = pymongo_baseline(store, data.rows)
            print(
                f"  baseline  {base.per_s:>9,.0f} rows/s      (pymongo insert_many, w=majority)\n  "
                + beside("upsert", up.per_s, "pymongo", base.per_s, "entities/s"),
                flush=True,
            )
            queries = measure_queries(broker, args)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return SizeResult(size, up, base, queries)


def main() -> int:
    parser = argparse.ArgumentParser(description="The query benchmark on the MongoDB store.")
    parser.add_argument("--mongo", help="a MongoDB server URL; default: a mongoeco smoke run")
    parser.add_argument("--sizes", type=parse_sizes, default=[10_000, 100_000])
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=3)
    parser.add_argument("--budget", type=float, default=60.0)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="renkei-bench-qm-"))
    try:
        with mongo_server(args.mongo) as server:
            results = [run_size(size, args, server, tmp) for size in args.sizes]
        print(f"\n{'entities':>9} {'upsert/s':>9} {'pymongo/s':>10} {'ratio':>6}", end="")
        print("".join(f" {kind + ' p95':>12}" for kind in KINDS))
        for r in results:
            assert r.upsert is not None  # loaded here, never reused
            assert r.baseline is not None
            print(
                f"{r.size:>9,} {r.upsert.per_s:>9,.0f} {r.baseline.per_s:>10,.0f} "
                f"{r.upsert.per_s / r.baseline.per_s:>6.1%}"
                + "".join(f" {r.queries[k].pct(95):>9.2f} ms" for k in KINDS)
            )
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
