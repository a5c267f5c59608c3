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

With ``--auth``, a second ``renkei serve`` runs with an auth file (an API key, and an
OIDC issuer served from this process whose JWKS the hub fetches once), and create and
retrieve are measured on it with ``X-API-Key`` and with a bearer JWT, beside the same
runs without access control.

Each run has a short warm-up. Prints requests/s, p50/p99 latency and errors per run,
then the broker/bare ratio and the targets. Exit status 1 if any request failed
(non-2xx or socket error) or, with ``--check``, if a target is missed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import os
import random
import secrets
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import jwt
from cryptography.hazmat.primitives.asymmetric import rsa
from harness import (
    BenchError,
    Server,
    bare_app,
    free_port,
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
BARE_ENTITY = "/entity"

# Targets from the acceptance text (2-core machine).
TARGET_RPS = {"create": 1000.0, "retrieve": 2000.0}
TARGET_RATIO = 0.40
#: Authorised requests keep at least this share of the rate without access control (#24).
TARGET_AUTH_RATIO = 0.90

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


def entity_body(eid: str, temp: float = 18.4) -> str:
    return ENTITY_TEMPLATE % (eid, temp)


# -- results ---------------------------------------------------------------------------------


@dataclass
class RunResult:
    requests: int
    seconds: float
    p50_ms: float
    p99_ms: float
    non2xx: int
    socket_errors: int
    #: the server process's CPU seconds (all threads) during the run; None if not read
    cpu_seconds: float | None = None

    @property
    def cpu_ms_per_request(self) -> float | None:
        if self.cpu_seconds is None or not self.requests:
            return None
        return self.cpu_seconds * 1000 / self.requests

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
    #: sent with every request (credentials)
    headers: dict[str, str] = field(default_factory=dict)


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
    return wrk.format("GET", path .. seed_prefix .. string.format("%%06d", math.random(0, seeds - 1)), get_headers)
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
    headers = ", ".join(f'["{k}"] = "{v}"' for k, v in work.headers.items())
    return LUA % {
        "headers": headers,
        "mode": work.mode,
        "path": work.path,
        "tag": tag,
        "seeds": work.seeds,
        "template": ENTITY_TEMPLATE,
        "id_prefix": ID_PREFIX,
        "seed_prefix": SEED_PREFIX,
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
        "tag": tag,
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
    extra = dict(spec.get("headers") or {})
    headers = {"Content-Type": "application/json", **extra}

    async with httpx.AsyncClient(
        base_url=spec["base_url"], limits=limits, timeout=5.0, headers=extra
    ) as client:

        async def worker(wid: int) -> None:
            n = 0
            while time.perf_counter() < deadline:
                n += 1
                t0 = time.perf_counter()
                try:
                    if spec["mode"] == "post":
                        eid = f"{ID_PREFIX}{spec['tag']}-{wid}-{n}"
                        body = entity_body(eid, 10 + n % 200 / 10).encode()
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


def process_cpu(pid: int) -> float:
    """CPU seconds (user + system, every thread) a process has used so far. Steadier than
    a rate on a busy machine: other load slows a server without making it work more."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def seed_entities(broker: Server, count: int, auth: dict[str, str] | None = None) -> None:
    headers = {"Content-Type": "application/json", **(auth or {})}
    with httpx.Client(base_url=broker.url, timeout=10.0) as client:
        for i in range(count):
            resp = client.post(
                BROKER_ENTITIES, content=entity_body(f"{SEED_PREFIX}{i:06d}"), headers=headers
            )
            if resp.status_code != 201:
                raise BenchError(f"seeding entity {i} failed: {resp.status_code} {resp.text[:300]}")


def stored_count(broker: Server, auth: dict[str, str] | None = None) -> int:
    resp = httpx.get(
        broker.url + BROKER_ENTITIES,
        params={"type": ENTITY_TYPE, "count": "true", "limit": "1"},
        headers=auth,
        timeout=30.0,
    )
    resp.raise_for_status()
    return int(resp.headers["NGSILD-Results-Count"])


# -- access control ----------------------------------------------------------------------------


@dataclass
class Credentials:
    auth_file: Path
    api_key: str
    token: str


@contextlib.contextmanager
def access_control(tmp: Path) -> Iterator[Credentials]:
    """An auth file with one API key and an OIDC issuer on 127.0.0.1 (its JWKS served
    from a thread here: the hub fetches it once and caches it), and a token it signed."""
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    algorithm = jwt.get_algorithm_by_name("RS256")
    public = json.loads(algorithm.to_jwk(private.public_key()))
    public.update(kid="bench", alg="RS256", use="sig")
    jwks = json.dumps({"keys": [public]}).encode()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(jwks)))
            self.end_headers()
            self.wfile.write(jwks)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    port = free_port()
    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    issuer = f"http://127.0.0.1:{port}/realms/bench"
    key = secrets.token_urlsafe(32)
    now = int(time.time())
    token = jwt.encode(
        {
            "iss": issuer,
            "aud": "renkei",
            "sub": "bench",
            "iat": now,
            "exp": now + 24 * 3600,
            "realm_access": {"roles": ["writer"]},
            "tenants": ["*"],
        },
        private,
        algorithm="RS256",
        headers={"kid": "bench"},
    )
    path = tmp / "auth.yaml"
    path.write_text(
        f"""api_keys:
  - {{name: bench, key_sha256: "{hashlib.sha256(key.encode()).hexdigest()}", roles: [writer], tenants: ["*"]}}
oidc:
  issuer: {issuer}
  audience: renkei
  jwks_url: {issuer}/certs
roles:
  writer: {{read: ["*"], write: ["*"], subscribe: ["*"]}}
""",
        encoding="utf-8",
    )
    try:
        yield Credentials(path, key, token)
    finally:
        server.shutdown()
        server.server_close()


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
    parser.add_argument("--check", action="store_true", help="exit 1 when a target is missed")
    parser.add_argument(
        "--auth",
        action="store_true",
        help="also measure a hub with access control (API key, bearer JWT)",
    )
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
            broker = stack.enter_context(hub(tmp / "broker.log", sqlite_store(tmp / "bench.db")))
            logs += [bare, broker]
            guarded: Server | None = None
            creds: Credentials | None = None
            if args.auth:
                creds = stack.enter_context(access_control(tmp))
                guarded = stack.enter_context(
                    hub(
                        tmp / "broker-auth.log",
                        sqlite_store(tmp / "bench-auth.db"),
                        "--auth-file",
                        str(creds.auth_file),
                    )
                )
                logs.append(guarded)
            ways: list[tuple[str, dict[str, str]]] = []
            if creds is not None:
                ways = [
                    ("key", {"X-API-Key": creds.api_key}),
                    ("jwt", {"Authorization": f"Bearer {creds.token}"}),
                ]
            print(
                f"Renkei entity benchmark: {generator}, {args.connections} connections, "
                f"{args.duration:g} s per run (+{args.warmup:g} s warm-up), {machine()}",
                flush=True,
            )

            servers = {bare.url: bare, broker.url: broker}
            if guarded is not None:
                servers[guarded.url] = guarded

            def measure(op: str, server: str, work: Workload) -> None:
                kw: dict[str, Any] = {
                    "connections": args.connections,
                    "threads": threads,
                    "tmp": tmp,
                }
                if args.warmup > 0:
                    warm = run(work, tag=f"{server}-warm", duration=args.warmup, **kw)
                    if warm.errors:
                        raise BenchError(
                            f"{op}/{server} warm-up: {warm.non2xx} non-2xx responses, "
                            f"{warm.socket_errors} socket errors"
                        )
                pid = servers[work.base_url].proc.pid
                cpu = process_cpu(pid)
                res = run(work, tag=f"{server}-run", duration=args.duration, **kw)
                res.cpu_seconds = process_cpu(pid) - cpu
                results[(op, server)] = res
                print(
                    f"  {op:<8} {server:<6} {res.rps:>9,.0f} req/s  p50 {res.p50_ms:6.2f} ms  "
                    f"p99 {res.p99_ms:6.2f} ms  cpu {res.cpu_ms_per_request or 0:5.2f} ms/req  "
                    f"errors {res.errors}",
                    flush=True,
                )
                if res.errors:
                    raise BenchError(
                        f"{op}/{server}: {res.non2xx} non-2xx responses, "
                        f"{res.socket_errors} socket errors"
                    )

            # Create first, on the fresh store.
            measure("create", "bare", Workload("bare-post", bare.url, BARE_ENTITY, "post"))
            measure(
                "create", "broker", Workload("broker-create", broker.url, BROKER_ENTITIES, "post")
            )
            for way, headers in ways:
                assert guarded is not None
                measure(
                    "create",
                    way,
                    Workload(f"{way}-create", guarded.url, BROKER_ENTITIES, "post", 0, headers),
                )
            created = stored_count(broker)
            if created < results[("create", "broker")].requests:
                raise BenchError(
                    f"broker acknowledged {results[('create', 'broker')].requests} creates "
                    f"but stores only {created} entities"
                )

            seed_entities(broker, args.seeds)
            doc = httpx.get(f"{broker.url}{BROKER_ENTITIES}/{SEED_PREFIX}000000").content
            bare_doc = httpx.get(bare.url + BARE_ENTITY).content
            print(
                f"  (store: {created} created + {args.seeds} seeded entities; "
                f"retrieve body {len(doc)} B, bare body {len(bare_doc)} B)",
                flush=True,
            )
            measure("retrieve", "bare", Workload("bare-get", bare.url, BARE_ENTITY, "get-fixed"))
            measure(
                "retrieve",
                "broker",
                Workload(
                    "broker-retrieve", broker.url, BROKER_ENTITIES + "/", "get-random", args.seeds
                ),
            )
            if guarded is not None and ways:
                seed_entities(guarded, args.seeds, ways[0][1])
            for way, headers in ways:
                assert guarded is not None
                measure(
                    "retrieve",
                    way,
                    Workload(
                        f"{way}-retrieve",
                        guarded.url,
                        BROKER_ENTITIES + "/",
                        "get-random",
                        args.seeds,
                        headers,
                    ),
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


def print_table(results: dict[tuple[str, str], RunResult]) -> bool:
    print()
    head = (
        f"{'operation':<9} {'server':<7} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} "
        f"{'cpu ms/req':>10} {'errors':>7}"
    )
    print(head)
    print("-" * len(head))
    for (op, server), r in results.items():
        cpu = r.cpu_ms_per_request
        print(
            f"{op:<9} {server:<7} {r.rps:>9,.0f} {r.p50_ms:>8.2f} {r.p99_ms:>8.2f} "
            f"{'' if cpu is None else f'{cpu:.3f}':>10} {r.errors:>7}"
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
    if any(server in ("key", "jwt") for _, server in results):
        print()
        head = (
            f"{'operation':<9} {'credential':<10} {'req/s auth/none':>15} {'ok':>4}"
            f"          {'cpu/req none/auth':>17}"
        )
        print(head)
        print("-" * len(head))
        for (op, server), r in results.items():
            plain = results.get((op, "broker"))
            if server not in ("key", "jwt") or plain is None or not plain.rps:
                continue
            ratio = r.rps / plain.rps
            ok = ratio >= TARGET_AUTH_RATIO
            missed |= not ok
            cpu_none, cpu_auth = plain.cpu_ms_per_request, r.cpu_ms_per_request
            cpu_ratio = f"{cpu_none / cpu_auth:.0%}" if cpu_none and cpu_auth else "-"
            print(
                f"{op:<9} {server:<10} {ratio:>15.0%} {'yes' if ok else 'NO':>4}"
                f" (>={TARGET_AUTH_RATIO:.0%}) {cpu_ratio:>17}"
            )
    print(f"\ntargets: {'all met' if not missed else 'MISSED'}")
    return missed


if __name__ == "__main__":
    sys.exit(main())
