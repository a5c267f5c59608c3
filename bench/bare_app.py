"""Baseline for the entity benchmarks: a bare FastAPI app with no broker logic.

``GET /entity`` returns a fixed JSON document about the size of a retrieved entity;
``POST /entity`` reads the request body and answers 201. The document is serialised
once at import, so the GET measures FastAPI + uvicorn and nothing else.

Run it with the same server settings as ``renkei serve`` (see ``broker/cli.py``)::

    .venv/bin/python bench/bare_app.py --host 127.0.0.1 --port 8000
"""

from __future__ import annotations

import argparse
import json

import uvicorn
from fastapi import FastAPI
from starlette.requests import Request
from starlette.responses import Response

DOCUMENT = {
    "id": "urn:ngsi-ld:AirQualityObserved:bench-seed-000001",
    "type": "AirQualityObserved",
    "name": {"type": "Property", "value": "Komae station 1"},
    "temperature": {
        "type": "Property",
        "value": 18.4,
        "unitCode": "CEL",
        "observedAt": "2024-05-01T10:00:00Z",
    },
    "NO2": {
        "type": "Property",
        "value": 22.5,
        "unitCode": "GQ",
        "observedAt": "2024-05-01T10:00:00Z",
    },
    "location": {
        "type": "GeoProperty",
        "value": {"type": "Point", "coordinates": [139.5786, 35.6348]},
    },
    "refDevice": {"type": "Relationship", "object": "urn:ngsi-ld:Device:komae-01"},
}
BODY = json.dumps(DOCUMENT, separators=(",", ":"), ensure_ascii=False).encode()

app = FastAPI(openapi_url=None, docs_url=None, redoc_url=None)


@app.get("/entity")
async def get_entity() -> Response:
    return Response(BODY, media_type="application/json")


@app.post("/entity")
async def post_entity(request: Request) -> Response:
    await request.body()
    return Response(status_code=201)


@app.get("/health")
async def health() -> Response:
    return Response(b'{"status":"ok"}', media_type="application/json")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--log-level", default="info")
    args = parser.parse_args()
    # Same call as broker/cli.py: default loop/http auto-detection, one worker, no access log.
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level, access_log=False)


if __name__ == "__main__":
    main()
