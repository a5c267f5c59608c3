"""Single-entity create and retrieve throughput, each beside a bare FastAPI endpoint.

Usage::

    .venv/bin/python bench/entities.py [--duration S] [--connections N]

Starts ``renkei serve`` on a fresh temporary SQLite store and ``bench/bare_app.py``
(same uvicorn settings), then drives four closed-loop runs with ``wrk`` (an httpx
load generator in a separate process if ``wrk`` is not installed):

* bare POST      POST /entity, the same entity bodies as the broker create
* broker create  POST /ngsi-ld/v1/entities, a unique id per request
* bare GET       GET /entity, a fixed document of the size of a retrieved entity
* broker retrieve GET /ngsi-ld/v1/entities/{id}, random ids among pre-created entities

and the same through NGSI v2 on the same store, in turns with the NGSI-LD runs (LD, v2,
v2, LD, half the duration each, so that the machine's load weighs on both alike; #26):

* v2 create      POST /v2/entities, the same entity in v2 form, a unique id per request
* v2 retrieve    GET /v2/entities/{id}, the same pre-created entities
* query          GET /ngsi-ld/v1/entities?type=..&q=temperature>29&limit=20, and the
                 same query through GET /v2/entities

``--auth key,jwt`` adds a broker per mode with an auth file (an API key; a bearer JWT from
a test issuer on 127.0.0.1, its key cached after the first request) and prints each
beside the unauthenticated broker of the same run (target: at most 10% slower).

Each run has a short warm-up. Prints requests/s, p50/p99 latency and errors per run,
then the broker/bare and v2/NGSI-LD ratios and the targets. Exit status 1 if any request failed
(non-2xx or socket error) or, with ``--check``, if a target is missed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import random
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from harness import (
    BenchError,
    Server,
    bare_app,
    hub,
    machine,
    run_wrk,
    sqlite_store,
    stop_on_sigterm,
    warn_if_busy,
    wrk_path,
)

ENTITY_TYPE = "AirQualityObserved"
ID_PREFIX = f"urn:ngsi-ld:{ENTITY_TYPE}:bench-"
SEED_PREFIX = ID_PREFIX + "seed-"
BROKER_ENTITIES = "/ngsi-ld/v1/entities"
V2_ENTITIES = "/v2/entities"
BARE_ENTITY = "/entity"
QUERY = f"?type={ENTITY_TYPE}&q=temperature%3E29&limit=20"

# Targets from the acceptance text (2-core machine).
TARGET_RPS = {"create": 1000.0, "retrieve": 2000.0}
TARGET_RATIO = 0.40
#: NGSI v2 is no slower than NGSI-LD on the same store (#26); 5% is this machine's noise
#: between two runs of the same workload.
TARGET_V2_RATIO = 0.95
TARGET_AUTH_OVERHEAD = 0.10  # an authorised request at most 10% slower (--auth)

# --auth modes: the broker's name in the tables
SERVER_NAMES = {"none": "broker", "key": "broker+key", "jwt": "broker+jwt"}
API_KEY = "bench-api-key-0001"

# A realistic entity: 5 attributes incl. a GeoProperty Point. The two ``%s`` (id, then
# temperature) are filled per request, here and in the wrk script: no other ``%`` allowed.
ENTITY_TEMPLATE = (
    '{"id":"%s","type":"' + ENTITY_TYPE + '",'
    '"name":{"type":"Property","value":"Komae station"},'
    '"temperature":{"type":"Property","value":%s,"unitCode":"CEL","observedAt":"2024-05-01T10:00:00Z"},'
    '"NO2":{"type":"Property","value":22.5,"unitCode":"GQ","observedAt":"2024-05-01T10:00:00Z"},'
    '"location":{"type":"GeoProperty","value":{"type":"Point","coordinates":[139.5786,35.6348]}},'
    '"refDevice":{"type":"Relationship","object":"urn:ngsi-ld:Device:komae-01"}}'
)


# The same entity in NGSI v2 form (what a FIWARE client sends to Orion).
V2_TEMPLATE = (
    '{"id":"%s","type":"' + ENTITY_TYPE + '",'
    '"name":{"type":"Text","value":"Komae station"},'
    '"temperature":{"type":"Number","value":%s,"metadata":{'
    '"unitCode":{"type":"Text","value":"CEL"},'
    '"observedAt":{"type":"DateTime","value":"2024-05-01T10:00:00Z"}}},'
    '"NO2":{"type":"Number","value":22.5,"metadata":{'
    '"unitCode":{"type":"Text","value":"GQ"},'
    '"observedAt":{"type":"DateTime","value":"2024-05-01T10:00:00Z"}}},'
    '"location":{"type":"geo:json","value":{"type":"Point","coordinates":[139.5786,35.6348]}},'
    '"refDevice":{"type":"Relationship","value":"urn:ngsi-ld:Device:komae-01"}}'
)


def entity_body(eid: str, temp: float = 18.4, template: str = ENTITY_TEMPLATE) -> str:
    return template % (eid, temp)


# -- results ---------------------------------------------------------------------------------


@dataclass
class RunResult:
    requests: int
    seconds: float
    p50_ms: float
    p99_ms: float
    non2xx: int
    socket_errors: int

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    @property
    def errors(self) -> int:
        return self.non2xx + self.socket_errors


@dataclass
class Workload:
    """One run: ``mode`` is ``post`` (unique ids), ``get-random`` or ``get-fixed``."""

    label: str
    base_url: str
    path: str
    mode: str
    seeds: int = 0
    headers: dict[str, str] = field(default_factory=dict)  # credentials, for --auth
    template: str = ENTITY_TEMPLATE


# -- load generators -------------------------------------------------------------------------

LUA = r"""
-- wrk script for one run of bench/entities.py
local mode = "%(mode)s"
local path = "%(path)s"
local tag = "%(tag)s"
local seeds = %(seeds)d
local template = [==[%(template)s]==]
local id_prefix = "%(id_prefix)s"
local seed_prefix = "%(seed_prefix)s"
local get_headers = {%(headers)s}
local post_headers = {%(headers)s}
post_headers["Content-Type"] = "application/json"

local threads = {}
function setup(thread)
  table.insert(threads, thread)
  thread:set("tid", #threads)
end

counter = 0
bad = 0
local fixed = nil

function init(args)
  math.randomseed(os.time() * 100 + tid)
  if mode == "get-fixed" then fixed = wrk.format("GET", path, get_headers) end
end

function request()
  if mode == "post" then
    counter = counter + 1
    local id = id_prefix .. tag .. "-" .. tid .. "-" .. counter
    local body = string.format(template, id, 10 + counter %% 200 / 10)
    return wrk.format("POST", path, post_headers, body)
  elseif mode == "get-random" then
    local id = seed_prefix .. string.format("%%06d", math.random(0, seeds - 1))
    return wrk.format("GET", path .. id, get_headers)
  end
  return fixed
end

function response(status, headers, body)
  if status < 200 or status > 299 then bad = bad + 1 end
end

function done(summary, latency, requests)
  local non2xx = 0
  for _, t in ipairs(threads) do non2xx = non2xx + t:get("bad") end
  local e = summary.errors
  io.write(string.format(
    'RESULT {"requests":%%d,"duration_us":%%d,"p50_us":%%d,"p99_us":%%d,"non2xx":%%d,"socket_errors":%%d}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99), non2xx,
    e.connect + e.read + e.write + e.timeout))
end
"""


def _lua_script(work: Workload, tag: str) -> str:
    return LUA % {
        "mode": work.mode,
        "path": work.path,
        "tag": f"{work.label}-{tag}",
        "seeds": work.seeds,
        "template": work.template,
        "id_prefix": ID_PREFIX,
        "seed_prefix": SEED_PREFIX,
        "headers": ", ".join(f'["{k}"] = "{v}"' for k, v in work.headers.items()),
    }


def load_wrk(
    work: Workload, *, tag: str, duration: float, connections: int, threads: int, tmp: Path
) -> RunResult:
    script = tmp / f"{work.label.replace(' ', '-')}-{tag}.lua"
    script.write_text(_lua_script(work, tag))
    out = run_wrk(
        work.base_url, script, duration=duration, connections=connections, threads=threads
    )
    line = next((ln for ln in out.splitlines() if ln.startswith("RESULT ")), None)
    if line is None:
        raise BenchError(f"wrk printed no result:\n{out}")
    data = json.loads(line[len("RESULT ") :])
    return RunResult(
        requests=data["requests"],
        seconds=data["duration_us"] / 1e6,
        p50_ms=data["p50_us"] / 1000,
        p99_ms=data["p99_us"] / 1000,
        non2xx=data["non2xx"],
        socket_errors=data["socket_errors"],
    )


def load_httpx(
    work: Workload, *, tag: str, duration: float, connections: int, threads: int, tmp: Path
) -> RunResult:
    """Fallback: the httpx generator in its own process (``--httpx-worker``)."""
    spec = {
        "base_url": work.base_url,
        "path": work.path,
        "mode": work.mode,
        "seeds": work.seeds,
        "tag": f"{work.label}-{tag}",
        "template": work.template,
        "duration": duration,
        "connections": connections,
        "headers": work.headers,
    }
    cmd = [sys.executable, str(Path(__file__).resolve()), "--httpx-worker", json.dumps(spec)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
    if proc.returncode != 0 or line is None:
        raise BenchError(
            f"httpx generator failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
        )
    return RunResult(**json.loads(line[len("RESULT ") :]))


async def _httpx_load(spec: dict[str, Any]) -> RunResult:
    with contextlib.suppress(ImportError):
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    connections = int(spec["connections"])
    latencies: list[float] = []
    counts = {"non2xx": 0, "socket": 0}
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    deadline = time.perf_counter() + float(spec["duration"])
    headers = {"Content-Type": "application/json", **spec["headers"]}

    async with httpx.AsyncClient(
        base_url=spec["base_url"], limits=limits, timeout=5.0, headers=spec["headers"]
    ) as client:

        async def worker(wid: int) -> None:
            n = 0
            while time.perf_counter() < deadline:
                n += 1
                t0 = time.perf_counter()
                try:
                    if spec["mode"] == "post":
                        eid = f"{ID_PREFIX}{spec['tag']}-{wid}-{n}"
                        body = entity_body(eid, 10 + n % 200 / 10, spec["template"]).encode()
                        resp = await client.post(spec["path"], content=body, headers=headers)
                    elif spec["mode"] == "get-random":
                        i = random.randrange(int(spec["seeds"]))
                        resp = await client.get(f"{spec['path']}{SEED_PREFIX}{i:06d}")
                    else:
                        resp = await client.get(spec["path"])
                except httpx.HTTPError:
                    counts["socket"] += 1
                    continue
                latencies.append(time.perf_counter() - t0)
                if not 200 <= resp.status_code < 300:
                    counts["non2xx"] += 1

        start = time.perf_counter()
        await asyncio.gather(*(worker(i) for i in range(connections)))
        elapsed = time.perf_counter() - start
    latencies.sort()

    def pct(p: float) -> float:
        return (
            latencies[min(len(latencies) - 1, int(len(latencies) * p))] * 1000 if latencies else 0.0
        )

    return RunResult(
        len(latencies), elapsed, pct(0.50), pct(0.99), counts["non2xx"], counts["socket"]
    )


def httpx_worker_main(spec_json: str) -> None:
    res = asyncio.run(_httpx_load(json.loads(spec_json)))
    print("RESULT " + json.dumps(res.__dict__), flush=True)


# -- servers ---------------------------------------------------------------------------------

AUTH_FILE = """
api_keys:
  - {name: bench, key_sha256: "%(key_sha256)s", roles: [writer], tenants: ["*"]}
%(oidc)s
roles:
  writer: {read: ["*"], write: ["*"], subscribe: ["*"]}
"""


@contextlib.contextmanager
def auth_broker(mode: str, tmp: Path, writer: str) -> Iterator[tuple[Server, dict[str, str]]]:
    """A broker on its own fresh store: ``none`` without an auth file, ``key`` and ``jwt``
    with one, and the headers a client of that mode sends."""
    store = sqlite_store(tmp / f"bench-{mode}.db", writer)
    log = tmp / f"broker-{mode}.log"
    if mode == "none":
        with hub(log, store) as server:
            yield server, {}
        return
    with contextlib.ExitStack() as stack:
        oidc = ""
        credentials = {"X-API-Key": API_KEY}
        if mode == "jwt":
            from tests.support_oidc import oidc_issuer

            issuer = stack.enter_context(oidc_issuer())
            oidc = (
                f"oidc: {{issuer: {issuer.issuer}, audience: renkei, jwks_url: {issuer.jwks_url},"
                " roles_claim: realm_access.roles, tenants_claim: tenants}"
            )
            claims = {"realm_access": {"roles": ["writer"]}, "tenants": ["*"]}
            token = issuer.sign(claims, lifetime=3600)
            credentials = {"Authorization": f"Bearer {token}"}
        key_sha256 = hashlib.sha256(API_KEY.encode()).hexdigest()
        auth_file = tmp / f"auth-{mode}.yaml"
        auth_file.write_text(AUTH_FILE % {"key_sha256": key_sha256, "oidc": oidc})
        server = stack.enter_context(hub(log, store, "--auth-file", str(auth_file)))
        yield server, credentials


def seed_entities(broker: Server, count: int, credentials: dict[str, str]) -> None:
    headers = {"Content-Type": "application/json"}
    with httpx.Client(base_url=broker.url, timeout=10.0, headers=credentials) as client:
        for i in range(count):
            resp = client.post(
                BROKER_ENTITIES, content=entity_body(f"{SEED_PREFIX}{i:06d}"), headers=headers
            )
            if resp.status_code != 201:
                raise BenchError(f"seeding entity {i} failed: {resp.status_code} {resp.text[:300]}")


def stored_count(broker: Server, credentials: dict[str, str]) -> int:
    resp = httpx.get(
        broker.url + BROKER_ENTITIES,
        params={"type": ENTITY_TYPE, "count": "true", "limit": "1"},
        headers=credentials,
        timeout=30.0,
    )
    resp.raise_for_status()
    return int(resp.headers["NGSILD-Results-Count"])


# -- main ------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(
        description="Single-entity create/retrieve benchmark vs a bare FastAPI endpoint."
    )
    parser.add_argument(
        "--duration", type=float, default=10.0, help="seconds per measured run (default 10)"
    )
    parser.add_argument(
        "--connections", type=int, default=32, help="concurrent connections (default 32)"
    )
    parser.add_argument(
        "--warmup", type=float, default=2.0, help="warm-up seconds before each run (default 2)"
    )
    parser.add_argument(
        "--threads", type=int, default=1, help="wrk threads (default 1: leave a core to the server)"
    )
    parser.add_argument(
        "--seeds", type=int, default=1000, help="entities pre-created for retrieve (default 1000)"
    )
    parser.add_argument("--generator", choices=("auto", "wrk", "httpx"), default="auto")
    parser.add_argument(
        "--auth",
        default="none",
        help="comma-separated: none, key (X-API-Key), jwt (bearer token, cached key); each "
        "mode runs its own broker beside the unauthenticated one (default none)",
    )
    parser.add_argument(
        "--writer",
        choices=("process", "thread"),
        default="process",
        help="the SQLite store's writer: its own process (default) or a thread",
    )
    parser.add_argument("--check", action="store_true", help="exit 1 when a target is missed")
    parser.add_argument("--httpx-worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.httpx_worker:
        httpx_worker_main(args.httpx_worker)
        return 0

    use_wrk = args.generator == "wrk" or (args.generator == "auto" and wrk_path())
    if args.generator == "wrk" and not wrk_path():
        print("wrk not found: apt-get install wrk", file=sys.stderr)
        return 2
    if not use_wrk and args.generator == "auto":
        print(
            "note: wrk not found (apt-get install wrk); using the slower httpx generator,"
            " which competes with the server for CPU",
            file=sys.stderr,
        )
    run = load_wrk if use_wrk else load_httpx
    modes = ["none", *(m for m in args.auth.split(",") if m and m != "none")]
    if unknown := [m for m in modes if m not in SERVER_NAMES]:
        print(f"unknown --auth mode(s): {', '.join(unknown)}", file=sys.stderr)
        return 2
    generator = "wrk" if use_wrk else "httpx"
    threads = max(1, min(args.threads, args.connections))

    stop_on_sigterm()
    warn_if_busy()
    tmp = Path(tempfile.mkdtemp(prefix="renkei-bench-"))
    results: dict[tuple[str, str], RunResult] = {}
    logs: list[Server] = []
    failed: str | None = None
    try:
        with contextlib.ExitStack() as stack:
            bare = stack.enter_context(bare_app(tmp / "bare.log"))
            logs.append(bare)
            print(
                f"Renkei entity benchmark: {generator}, {args.connections} connections, "
                f"{args.writer} writer, "
                f"{args.duration:g} s per run (+{args.warmup:g} s warm-up), {machine()}",
                flush=True,
            )

            kw: dict[str, Any] = {"connections": args.connections, "threads": threads, "tmp": tmp}

            def warm_up(op: str, server: str, work: Workload) -> None:
                if args.warmup > 0:
                    warm = run(work, tag="warm", duration=args.warmup, **kw)
                    if warm.errors:
                        raise BenchError(
                            f"{op}/{server} warm-up: {warm.non2xx} non-2xx responses, "
                            f"{warm.socket_errors} socket errors"
                        )

            def keep(op: str, server: str, res: RunResult) -> None:
                results[(op, server)] = res
                print(
                    f"  {op:<8} {server:<11} {res.rps:>9,.0f} req/s  p50 {res.p50_ms:6.2f} ms  "
                    f"p99 {res.p99_ms:6.2f} ms  errors {res.errors}",
                    flush=True,
                )
                if res.errors:
                    raise BenchError(
                        f"{op}/{server}: {res.non2xx} non-2xx responses, "
                        f"{res.socket_errors} socket errors"
                    )

            def measure(op: str, server: str, work: Workload) -> None:
                warm_up(op, server, work)
                keep(op, server, run(work, tag="run", duration=args.duration, **kw))

            def pair(op: str, ld: Workload, v2: Workload) -> None:
                """NGSI-LD and v2 in turns (LD, v2, v2, LD; each half the duration), so
                that a change of the machine's load during the run weighs on both."""
                warm_up(op, "broker", ld)
                warm_up(op, "v2", v2)
                half = args.duration / 2
                parts: dict[str, list[RunResult]] = {"broker": [], "v2": []}
                for i, (server, work) in enumerate(
                    [("broker", ld), ("v2", v2), ("v2", v2), ("broker", ld)]
                ):
                    parts[server].append(run(work, tag=f"run{i}", duration=half, **kw))
                for server, (a, b) in parts.items():
                    keep(op, server, combined(a, b))

            # Create first, each broker on its own fresh store; the bare baseline once. The
            # broker without access control also runs NGSI v2 in turns with NGSI-LD.
            measure("create", "bare", Workload("bare-post", bare.url, BARE_ENTITY, "post"))
            brokers: list[tuple[str, Server, dict[str, str]]] = []
            for mode in modes:
                server, credentials = stack.enter_context(auth_broker(mode, tmp, args.writer))
                logs.append(server)
                brokers.append((SERVER_NAMES[mode], server, credentials))
            for name, broker, credentials in brokers:
                work = Workload(name, broker.url, BROKER_ENTITIES, "post", headers=credentials)
                if name == "broker":
                    v2 = Workload("v2", broker.url, V2_ENTITIES, "post", template=V2_TEMPLATE)
                    pair("create", work, v2)
                    acknowledged = results[("create", name)].requests
                    acknowledged += results[("create", "v2")].requests
                else:
                    measure("create", name, work)
                    acknowledged = results[("create", name)].requests
                created = stored_count(broker, credentials)
                if created < acknowledged:
                    raise BenchError(
                        f"{name} acknowledged {acknowledged} creates "
                        f"but stores only {created} entities"
                    )
            for _, broker, credentials in brokers:
                seed_entities(broker, args.seeds, credentials)
            _, broker, credentials = brokers[0]
            doc = httpx.get(
                f"{broker.url}{BROKER_ENTITIES}/{SEED_PREFIX}000000", headers=credentials
            ).content
            bare_doc = httpx.get(bare.url + BARE_ENTITY).content
            print(
                f"  (each store: its creates + {args.seeds} seeded entities; "
                f"retrieve body {len(doc)} B, bare body {len(bare_doc)} B)",
                flush=True,
            )
            measure("retrieve", "bare", Workload("bare-get", bare.url, BARE_ENTITY, "get-fixed"))
            for name, broker, credentials in brokers:
                path = BROKER_ENTITIES + "/"
                work = Workload(name, broker.url, path, "get-random", args.seeds, credentials)
                if name != "broker":
                    measure("retrieve", name, work)
                    continue
                v2 = Workload("v2", broker.url, V2_ENTITIES + "/", "get-random", args.seeds)
                pair("retrieve", work, v2)
                ld_page = httpx.get(broker.url + BROKER_ENTITIES + QUERY).json()
                v2_page = httpx.get(broker.url + V2_ENTITIES + QUERY).json()
                if len(ld_page) != len(v2_page) or not ld_page:
                    raise BenchError(
                        f"the query answers {len(ld_page)} entities over NGSI-LD, "
                        f"{len(v2_page)} over v2"
                    )
                pair(
                    "query",
                    Workload("broker-query", broker.url, BROKER_ENTITIES + QUERY, "get-fixed"),
                    Workload("v2-query", broker.url, V2_ENTITIES + QUERY, "get-fixed"),
                )
            for srv in logs:
                if srv.proc.poll() is not None:
                    raise BenchError(f"{srv.name} exited during the run")
    except KeyboardInterrupt:
        if results:
            print_table(results)
        print("\ninterrupted; servers stopped", file=sys.stderr)
        shutil.rmtree(tmp, ignore_errors=True)
        return 130
    except (BenchError, httpx.HTTPError) as exc:
        failed = str(exc)
        for srv in logs:
            code = srv.proc.returncode
            if srv.exited_early:
                failed += f"\n{srv.name} had exited with code {code} (stopped by another program?)"

    missed = print_table(results) if results else True
    if failed is None:
        shutil.rmtree(tmp, ignore_errors=True)
        return 1 if (missed and args.check) else 0
    print(f"\nFAILED: {failed}", file=sys.stderr)
    for srv in logs:
        print(
            f"\n--- {srv.name} log, last lines ({srv.log}) ---\n{srv.log_tail()}", file=sys.stderr
        )
    print(f"\nlogs kept in {tmp}", file=sys.stderr)
    return 1


def combined(a: RunResult, b: RunResult) -> RunResult:
    """Two runs of one workload as one (latencies: the mean p50, the worse p99)."""
    return RunResult(
        requests=a.requests + b.requests,
        seconds=a.seconds + b.seconds,
        p50_ms=(a.p50_ms + b.p50_ms) / 2,
        p99_ms=max(a.p99_ms, b.p99_ms),
        non2xx=a.non2xx + b.non2xx,
        socket_errors=a.socket_errors + b.socket_errors,
    )


def print_table(results: dict[tuple[str, str], RunResult]) -> bool:
    print()
    head = f"{'operation':<9} {'server':<11} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7}"
    print(head)
    print("-" * len(head))
    for (op, server), r in results.items():
        print(
            f"{op:<9} {server:<11} {r.rps:>9,.0f} {r.p50_ms:>8.2f} {r.p99_ms:>8.2f} {r.errors:>7}"
        )
    print()
    head = f"{'operation':<9} {'broker/bare':>11} {'ratio ok':>9} {'req/s ok':>14}"
    print(head)
    print("-" * len(head))
    missed = False
    for op, target in TARGET_RPS.items():
        bare, broker = results.get((op, "bare")), results.get((op, "broker"))
        if bare is None or broker is None:
            print(f"{op:<9} {'not measured':>11}")
            missed = True
            continue
        ratio = broker.rps / bare.rps if bare.rps else 0.0
        ratio_ok, rps_ok = ratio >= TARGET_RATIO, broker.rps >= target
        missed |= not (ratio_ok and rps_ok)
        print(
            f"{op:<9} {ratio:>10.0%} {'yes' if ratio_ok else 'NO':>4} (>={TARGET_RATIO:.0%})"
            f" {'yes' if rps_ok else 'NO':>4} (>={target:,.0f}/s)"
        )
    print()
    head = f"{'operation':<9} {'v2/NGSI-LD':>11} {'ok':>4}"
    print(head)
    print("-" * len(head))
    for op in ("create", "retrieve", "query"):
        ld, v2 = results.get((op, "broker")), results.get((op, "v2"))
        if ld is None or v2 is None:
            print(f"{op:<9} {'not measured':>11}")
            missed = True
            continue
        ratio = v2.rps / ld.rps if ld.rps else 0.0
        ok = ratio >= TARGET_V2_RATIO
        missed |= not ok
        print(f"{op:<9} {ratio:>10.0%} {'yes' if ok else 'NO':>4} (>={TARGET_V2_RATIO:.0%})")
    missed |= print_auth_overhead(results)
    print(f"\ntargets: {'all met' if not missed else 'MISSED'}")
    return missed


def print_auth_overhead(results: dict[tuple[str, str], RunResult]) -> bool:
    """Authorised requests against unauthenticated ones on the same run (``--auth``)."""
    rows = [
        (op, server, r, results.get((op, "broker")))
        for (op, server), r in results.items()
        if server.startswith("broker+")
    ]
    if not rows:
        return False
    print()
    head = f"{'operation':<9} {'server':<11} {'vs broker':>9} {'overhead ok':>16}"
    print(head)
    print("-" * len(head))
    missed = False
    for op, server, r, plain in rows:
        if plain is None or not plain.rps:
            continue
        overhead = 1 - r.rps / plain.rps
        ok = overhead <= TARGET_AUTH_OVERHEAD
        missed |= not ok
        print(
            f"{op:<9} {server:<11} {r.rps / plain.rps:>9.0%} {'yes' if ok else 'NO':>4}"
            f" (<={TARGET_AUTH_OVERHEAD:.0%} slower)"
        )
    return missed


if __name__ == "__main__":
    sys.exit(main())
