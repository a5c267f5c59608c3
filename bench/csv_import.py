"""CSV import throughput: a 100,000-row standard dataset into a fresh broker.

Usage::

    .venv/bin/python bench/csv_import.py [--rows N] [--batch-size N]

Writes an 指定緊急避難場所一覧 (evacuation-sites) CSV of N rows in CP932, starts
``renkei serve`` on a fresh temporary SQLite store with Renkei's context preloaded, and
runs ``renkei import-csv`` on it (with its progress bar). Prints rows/s of the import
beside the same-run time of only parsing the file with the csv module, the ceiling of any
CSV importer in Python, and checks that the broker holds N entities afterwards.
"""

from __future__ import annotations

import argparse
import csv
import json
import tempfile
import time
from pathlib import Path

import httpx
import typer
from harness import beside, hub, sqlite_store

from connectors.csv.cli import register
from connectors.csv.importer import plan_import
from connectors.csv.layout import DEFAULT_CONTEXT, load_dataset
from schemas import CONTEXTS_DIR


def make_rows(n: int) -> list[list[str]]:
    layout = load_dataset("evacuation-sites")
    rows = [layout.headers]
    for i in range(1, n + 1):
        cells = {
            "全国地方公共団体コード": "132195",
            "ID": f"{i:06d}",
            "名称": f"狛江第{i}避難場所①㈱髙",
            "名称_カナ": "コマエヒナンバショ",
            "所在地_連結表記": f"東京都狛江市和泉本町一丁目{i % 50 + 1}番{i % 9 + 1}号",
            "所在地_都道府県": "東京都",
            "所在地_市区町村": "狛江市",
            "緯度": f"{35.62 + (i % 1000) * 1e-5:.5f}",
            "経度": f"{139.57 + (i // 1000) * 1e-4:.4f}",
            "電話番号": "03-3430-1111",
            "市区町村コード": "132195",
            "災害種別_洪水": "1" if i % 2 else "",
            "災害種別_地震": "1",
            "指定避難所との重複": "1" if i % 3 else "",
            "想定収容人数": str(100 + i % 900),
            "備考": "令和6年4月1日更新",
        }
        rows.append([cells.get(h, "") for h in layout.headers])
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--batch-size", type=int, default=500)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        path = tmp / "132195_evacuation_space.csv"
        with path.open("w", encoding="cp932", newline="") as f:
            csv.writer(f, lineterminator="\r\n").writerows(make_rows(args.rows))
        size_mb = path.stat().st_size / 1e6

        t0 = time.perf_counter()
        with path.open(encoding="cp932", newline="") as f:
            parsed = sum(1 for _ in csv.reader(f)) - 1
        t_parse = time.perf_counter() - t0

        t0 = time.perf_counter()
        plan = plan_import(path.read_bytes(), load_dataset("evacuation-sites"))
        t_plan = time.perf_counter() - t0
        assert not plan.problems, plan.problems[:3]

        preload = tmp / "contexts.json"
        preload.write_text(json.dumps({DEFAULT_CONTEXT: str(CONTEXTS_DIR / "renkei-v2.jsonld")}))
        with hub(
            tmp / "broker.log",
            sqlite_store(tmp / "bench.db"),
            "--context-preload",
            str(preload),
            env={"RENKEI_LOG_LEVEL": "warning"},
        ) as broker:
            app = typer.Typer()
            app.callback()(lambda: None)
            register(app)
            url = broker.url
            t0 = time.perf_counter()
            try:
                app(
                    ["import-csv", str(path), "--dataset", "evacuation-sites",
                     "--broker-url", url, "--batch-size", str(args.batch_size)],
                    standalone_mode=False,
                )  # fmt: skip
            except typer.Exit as exc:
                if exc.exit_code:
                    raise SystemExit(f"import failed with status {exc.exit_code}") from exc
            t_import = time.perf_counter() - t0
            resp = httpx.get(
                f"{url}/ngsi-ld/v1/entities",
                params={"type": "EvacuationSite", "count": "true", "limit": 1},
                headers={
                    "Link": f'<{DEFAULT_CONTEXT}>; rel="http://www.w3.org/ns/json-ld#context"'
                },
            )
            stored = int(resp.headers.get("NGSILD-Results-Count", "-1"))

    print()
    print(f"file: {args.rows:,} rows, {size_mb:.1f} MB CP932; broker holds {stored:,} entities")
    print(f"{'run':<36}{'seconds':>10}{'rows/s':>12}")
    for name, secs in [
        ("csv module parse only (baseline)", t_parse),
        ("validate + build entities (no I/O)", t_plan),
        ("import-csv into the broker", t_import),
    ]:
        print(f"{name:<36}{secs:>10.2f}{parsed / secs:>12,.0f}")
    print(f"import / parse-only time: {t_import / t_parse:.0f}x")
    print(beside("import-csv", parsed / t_import, "csv module parse", parsed / t_parse, "rows/s"))
    if stored != args.rows:
        raise SystemExit(f"expected {args.rows} entities, found {stored}")


if __name__ == "__main__":
    main()
