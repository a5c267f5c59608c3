"""The temporal benchmark (``temporal.py``) on the MongoDB store, with a raw pymongo baseline.

Usage::

    .venv/bin/python bench/temporal_mongo.py --mongo 'mongodb://127.0.0.1:27017/?directConnection=true'
    .venv/bin/python bench/temporal_mongo.py --sensors 3 --days 31 --queries 5   # mongoeco smoke

``renkei serve --store`` a fresh database of the server (dropped afterwards), the same
``sensors x days x 144`` NO2 readings loaded through ``POST /ngsi-ld/v1/temporal/entities``,
then the same queries and response checks as ``temporal.py``:

* (a) raw     one sensor, one random week, raw instances
* (b) aggr    the whole type, one random month, ``aggrMethods=avg,max`` per ``P1D``

The baseline, measured in the same run on the same database: the same selections straight
through pymongo on the history collections (``broker/store/mongohistory.py``), the data
without the hub: for (a) a ``find`` on the series' index, each instance unescaped; for (b)
the type's entities from ``history_entities``, then one aggregation pipeline grouping
their instances by entity and day. The store size per million instances is the database's
``dbStats`` (storage and indexes), where the server gives them.

Without ``--mongo``, the tests' mongoeco wire server (in-memory, pure Python) is started:
that run checks the benchmark and the backend end to end, but its figures say nothing
about MongoDB (keep it small). Exit 1 on a failed check, or with ``--check`` when a
target is missed.
"""

from __future__ import annotations

import contextlib
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from harness import BenchError, fresh_database, hub, mongo_database, mongo_server
from pymongo import ASCENDING, MongoClient
from pymongo.database import Database
from pymongo.errors import PyMongoError
from temporal import (
    NO2,
    PER_WEEK,
    TYPE_IRI,
    Selections,
    Timings,
    arguments,
    parse,
    report,
    run,
    selections,
    sensor_id,
)

from broker.store.mongoquery import unescape_doc

US = 1_000_000
DAY_US = 86_400 * US


def measure_mongo(db: Database[dict[str, Any]], sensors: int, plan: Selections) -> Timings:
    """The floor: the same selections through pymongo on the history collections."""
    out: Timings = {"raw": [], "aggr": []}
    raw, aggr = plan
    for n, t0 in raw:
        lo = int(t0.timestamp()) * US
        start = time.perf_counter()
        docs = list(
            db.history.find(
                {
                    "t": "",
                    "eid": sensor_id(n),
                    "attr": NO2,
                    "deleted": None,
                    "at": {"$gte": lo, "$lt": lo + 7 * DAY_US},
                }
            ).sort("at", ASCENDING)
        )
        [unescape_doc(d["doc"]) for d in docs]
        out["raw"].append((time.perf_counter() - start) * 1000)
        if len(docs) != PER_WEEK:
            raise BenchError(f"baseline (a): {len(docs)} instances, expected {PER_WEEK}")
    for t0 in aggr:
        lo = int(t0.timestamp()) * US
        start = time.perf_counter()
        eids = [e["eid"] for e in db.history_entities.find({"t": "", "types": TYPE_IRI})]
        groups = list(
            db.history.aggregate(
                [
                    {
                        "$match": {
                            "t": "",
                            "eid": {"$in": eids},
                            "attr": NO2,
                            "deleted": None,
                            "at": {"$gte": lo, "$lt": lo + 30 * DAY_US},
                        }
                    },
                    {
                        "$group": {
                            "_id": {
                                "e": "$eid",
                                "p": {
                                    "$subtract": [
                                        "$at",
                                        {"$mod": [{"$subtract": ["$at", lo]}, DAY_US]},
                                    ]
                                },
                            },
                            "avg": {"$avg": "$num"},
                            "max": {"$max": "$num"},
                        }
                    },
                ]
            )
        )
        out["aggr"].append((time.perf_counter() - start) * 1000)
        if len(groups) != sensors * 30:
            raise BenchError(f"baseline (b): {len(groups)} groups, expected {sensors} x 30")
    return out


def storage(db: Database[dict[str, Any]]) -> tuple[int | None, str]:
    """The database's bytes on the server (``dbStats``: storage and indexes), if given."""
    try:
        stats = db.command("dbStats")
        size = int(stats["storageSize"]) + int(stats["indexSize"])
    except (PyMongoError, KeyError, TypeError, ValueError) as exc:
        return None, f"the server gives no dbStats: {exc}"
    return size, "; dbStats storageSize + indexSize, whole database"


def main() -> int:
    ap = arguments(__doc__ or "")
    ap.add_argument("--mongo", help="a MongoDB server URL; default: a mongoeco smoke run")
    args = parse(ap)
    plan = selections(args.sensors, args.days, args.queries)
    count = args.sensors * args.days * 144
    with (
        tempfile.TemporaryDirectory(prefix="renkei-bench-tm-") as tmp,
        mongo_server(args.mongo) as server,
        mongo_database(server, fresh_database("renkei_bench_temporal")) as store,
    ):
        print(f"store {store}", flush=True)
        with hub(Path(tmp) / "broker.log", store) as broker:
            try:
                seconds, api = run(broker.url, args, plan, reused=False)
            except BenchError as exc:
                raise BenchError(f"{exc}\n{broker.log_tail()}") from None
        client: MongoClient[dict[str, Any]] = MongoClient(store)
        try:
            db = client.get_default_database()
            if (stored := db.history.count_documents({"t": ""})) != count:
                raise BenchError(f"the history holds {stored:,} instances, expected {count:,}")
            base = measure_mongo(db, args.sensors, plan)
            size, note = storage(db)
        finally:
            client.close()
    return report(count, seconds, size, note, api, base, "pymongo", args.check)


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        try:
            sys.exit(main())
        except BenchError as exc:
            print(f"error: {exc}", file=sys.stderr)
            sys.exit(1)
    sys.exit(130)
