"""TEST INFRASTRUCTURE: a small HTTP stand-in for the Solr endpoints CKAN calls.

CKAN cannot run without a Solr server (``package_create`` fails when it cannot index
the dataset), and Solr cannot be installed on our build machines. This stand-in keeps
CKAN's index documents in memory (optionally in a JSON file, so a developer's catalogue
survives a restart) and answers the few requests CKAN 2.11 makes through pysolr:

- ``GET|POST .../select``: ``q``/``fq`` with the query forms CKAN itself sends
  (``*:*``, ``field:value``, ``field:"value"``, ``field:(a OR b)``, ``+``/``-``,
  ``AND``/``OR``/``NOT``, parentheses, ``[a TO b]`` ranges taken as matching, free text
  matched as a substring of name, title, notes, tags and text), ``fl``, ``start``,
  ``rows``, ``sort`` on one field, ``facet.field`` counts; JSON answers.
- ``POST .../update``: JSON document lists (pysolr's ``add``), XML ``<delete>`` by
  ``<id>`` or ``<query>``, ``<commit/>``.
- ``GET .../schema``: a schema naming itself ``ckan-2.11`` so CKAN's version check passes.
- ``GET .../admin/ping``.

It is not a search engine (no scoring, no stemming, no dismax) and is never part of
Renkei; it exists so integration tests and ``scripts/ckan-dev.sh`` can run a real CKAN.

Run: ``python solr_standin.py --port 8983 [--host 127.0.0.1] [--data FILE]``.
"""

from __future__ import annotations

import argparse
import json
import re
import threading
import xml.etree.ElementTree as ET
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

SCHEMA_XML = (
    '<?xml version="1.0" encoding="UTF-8"?>\n'
    '<schema name="ckan-2.11" version="1.6"><uniqueKey>index_id</uniqueKey></schema>\n'
)
TEXT_FIELDS = ("name", "title", "notes", "tags", "text", "res_name", "res_description")

Doc = dict[str, Any]


class Index:
    """Documents keyed by CKAN's unique key ``index_id`` (or ``id``)."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path
        self.lock = threading.Lock()
        self.docs: dict[str, Doc] = {}
        if path is not None and path.is_file():
            self.docs = json.loads(path.read_text(encoding="utf-8"))

    def _save(self) -> None:
        if self.path is not None:
            tmp = self.path.with_suffix(".tmp")
            tmp.write_text(json.dumps(self.docs, ensure_ascii=False), encoding="utf-8")
            tmp.replace(self.path)

    def add(self, docs: list[Doc]) -> None:
        with self.lock:
            for doc in docs:
                key = str(doc.get("index_id") or doc.get("id"))
                self.docs[key] = doc
            self._save()

    def delete_query(self, query: str) -> None:
        pred = parse_query(query)
        with self.lock:
            self.docs = {k: d for k, d in self.docs.items() if not pred(d)}
            self._save()

    def delete_ids(self, ids: list[str]) -> None:
        with self.lock:
            for i in ids:
                self.docs.pop(i, None)
            self._save()

    def search(self, params: dict[str, list[str]]) -> dict[str, Any]:
        q = (params.get("q") or ["*:*"])[0]
        preds = [parse_query(q)] + [parse_query(f) for f in params.get("fq", []) if f.strip()]
        with self.lock:
            hits = [d for d in self.docs.values() if all(p(d) for p in preds)]
        sort = (params.get("sort") or [""])[0].split(",")[0].split()
        if len(sort) == 2 and sort[0] not in ("score",):
            field, order = sort
            hits.sort(key=lambda d: str(d.get(field, "")), reverse=order.lower() == "desc")
        else:
            hits.sort(key=lambda d: str(d.get("metadata_modified", "")), reverse=True)
        start = int((params.get("start") or ["0"])[0])
        rows = int((params.get("rows") or ["10"])[0])
        fl = re.split(r"[\s,]+", (params.get("fl") or ["*"])[0].strip())
        page = hits[start : start + rows] if rows >= 0 else hits[start:]
        docs = [d if "*" in fl else {k: d[k] for k in fl if k in d} for d in page]
        facets: dict[str, list[Any]] = {}
        for field in params.get("facet.field", []):
            counts: dict[str, int] = {}
            for d in hits:
                values = d.get(field)
                for v in values if isinstance(values, list) else [values]:
                    if v is not None:
                        counts[str(v)] = counts.get(str(v), 0) + 1
            flat: list[Any] = []
            for value, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])):
                flat += [value, n]
            facets[field] = flat
        return {
            "responseHeader": {"status": 0, "QTime": 0},
            "response": {"numFound": len(hits), "start": start, "docs": docs},
            "facet_counts": {
                "facet_queries": {},
                "facet_fields": facets,
                "facet_ranges": {},
                "facet_intervals": {},
                "facet_heatmaps": {},
            },
        }


# -- a small Lucene query parser: enough for the queries CKAN builds ----------------------

Pred = Any  # Callable[[Doc], bool]
_TOKEN_RE = re.compile(
    r"""\s*(?:
        (?P<lp>\() | (?P<rp>\)) |
        (?P<op>AND\b|OR\b|NOT\b|&&|\|\|) |
        (?P<sign>[+\-!])(?=\S) |
        (?P<range>[\[{][^\]}]*[\]}]) |
        (?P<quoted>"(?:[^"\\]|\\.)*") |
        (?P<word>(?:[^\s()"\\\[\]{}]|\\.)+)
    )""",
    re.VERBOSE,
)


def _tokens(text: str) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    pos = 0
    text = text.strip()
    while pos < len(text):
        m = _TOKEN_RE.match(text, pos)
        if m is None or m.end() == pos:
            break
        pos = m.end()
        kind = m.lastgroup
        assert kind is not None
        out.append((kind, m.group(kind)))
    return out


def _unescape(value: str) -> str:
    return re.sub(r"\\(.)", r"\1", value)


def _value_matches(doc_value: Any, value: str) -> bool:
    values = doc_value if isinstance(doc_value, list) else [doc_value]
    if value == "*":
        return any(v not in (None, "", []) for v in values)
    if "*" in value or "?" in value:
        pattern = re.compile(
            "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in value.lower())
        )
        return any(v is not None and pattern.fullmatch(str(v).lower()) for v in values)
    low = value.lower()
    for v in values:
        if v is None:
            continue
        if isinstance(v, bool):
            v = "true" if v else "false"
        if str(v).lower() == low:
            return True
    return False


def _free_text(value: str) -> Pred:
    low = value.lower()

    def pred(doc: Doc) -> bool:
        for field in TEXT_FIELDS:
            v = doc.get(field)
            for item in v if isinstance(v, list) else [v]:
                if item is not None and low in str(item).lower():
                    return True
        return False

    return pred


class _Parser:
    def __init__(self, text: str) -> None:
        self.toks = _tokens(text)
        self.i = 0

    def peek(self) -> tuple[str, str] | None:
        return self.toks[self.i] if self.i < len(self.toks) else None

    def take(self) -> tuple[str, str]:
        tok = self.toks[self.i]
        self.i += 1
        return tok

    def parse(self, field: str | None = None) -> Pred:
        """A sequence of clauses; default operator AND, ``OR`` between two clauses."""
        must: list[Pred] = []
        must_not: list[Pred] = []
        should_groups: list[list[Pred]] = []
        pending_or = False
        while (tok := self.peek()) is not None and tok[0] != "rp":
            if tok[0] == "op":
                self.take()
                if tok[1] in ("OR", "||"):
                    pending_or = True
                elif tok[1] == "NOT":
                    must_not.append(self.clause(field))
                continue
            sign = ""
            if tok[0] == "sign":
                sign = self.take()[1]
            clause = self.clause(field)
            if sign in ("-", "!"):
                must_not.append(clause)
            elif pending_or and (should_groups or must):
                if not should_groups:
                    should_groups.append([must.pop()])
                should_groups[-1].append(clause)
            else:
                must.append(clause)
            pending_or = False

        def pred(doc: Doc) -> bool:
            return (
                all(p(doc) for p in must)
                and all(any(p(doc) for p in group) for group in should_groups)
                and not any(p(doc) for p in must_not)
            )

        return pred

    def clause(self, field: str | None) -> Pred:
        tok = self.take()
        kind, text = tok
        if kind == "lp":
            inner = self.parse(field)
            if (nxt := self.peek()) is not None and nxt[0] == "rp":
                self.take()
            return inner
        if kind == "range":
            return lambda doc: True
        if kind == "quoted":
            value = _unescape(text[1:-1])
            if field is None:
                return _free_text(value)
            return lambda doc, f=field, v=value: _value_matches(doc.get(f), v)
        if kind == "word":
            if text == "*:*":
                return lambda doc: True
            m = re.match(r"((?:[^:\\]|\\.)+):(.*)$", text)
            if m is not None:
                sub_field = _unescape(m.group(1))
                rest = m.group(2)
                if rest == "":  # field:(...) or field:"..." or field:[a TO b]
                    nxt = self.peek()
                    if nxt is None:
                        return lambda doc: True
                    return self.clause(sub_field)
                value = _unescape(rest)
                return lambda doc, f=sub_field, v=value: _value_matches(doc.get(f), v)
            value = _unescape(text)
            if field is None:
                return _free_text(value)
            return lambda doc, f=field, v=value: _value_matches(doc.get(f), v)
        return lambda doc: True


def parse_query(text: str) -> Pred:
    """A predicate over documents for a Lucene query string as CKAN writes them."""
    return _Parser(text).parse()


# -- HTTP ------------------------------------------------------------------------------------


class Handler(BaseHTTPRequestHandler):
    index: Index
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _send(self, status: int, body: bytes, ctype: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _json(self, data: Any, status: int = 200) -> None:
        self._send(status, json.dumps(data).encode(), "application/json; charset=utf-8")

    def _params(self, body: bytes | None) -> dict[str, list[str]]:
        url = urlsplit(self.path)
        params = parse_qs(url.query, keep_blank_values=True)
        ctype = self.headers.get("Content-Type", "")
        if body and ctype.startswith("application/x-www-form-urlencoded"):
            for k, v in parse_qs(body.decode("utf-8"), keep_blank_values=True).items():
                params.setdefault(k, []).extend(v)
        return params

    def _body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _route(self, method: str) -> None:
        body = self._body() if method == "POST" else b""
        path = urlsplit(self.path).path.rstrip("/")
        handler = path.rsplit("/", 1)[-1]
        try:
            if handler == "select":
                self._json(self.index.search(self._params(body)))
            elif handler == "update":
                self._update(body)
            elif handler == "schema" or path.endswith("/admin/file"):
                self._send(200, SCHEMA_XML.encode(), "application/xml; charset=utf-8")
            elif handler == "ping":
                self._json({"responseHeader": {"status": 0}, "status": "OK"})
            else:
                self._json({"error": {"msg": f"unknown handler {path}", "code": 404}}, 404)
        except Exception as exc:  # a Solr error answer, as pysolr expects one
            self._json({"error": {"msg": f"{type(exc).__name__}: {exc}", "code": 400}}, 400)

    def _update(self, body: bytes) -> None:
        ctype = self.headers.get("Content-Type", "")
        text = body.decode("utf-8").strip()
        if "json" in ctype or text.startswith("["):
            data = json.loads(text) if text else []
            if isinstance(data, dict):
                if "delete" in data:
                    spec = data["delete"]
                    if isinstance(spec, dict) and "query" in spec:
                        self.index.delete_query(spec["query"])
                    else:
                        ids = spec if isinstance(spec, list) else [spec]
                        self.index.delete_ids([str(i) for i in ids])
                data = [data["add"]["doc"]] if "add" in data else []
            self.index.add([d for d in data if isinstance(d, dict)])
        elif text:
            root = ET.fromstring(text)
            if root.tag == "delete":
                ids = [e.text or "" for e in root.findall("id")]
                if ids:
                    self.index.delete_ids(ids)
                for q in root.findall("query"):
                    self.index.delete_query(q.text or "")
            elif root.tag == "add":
                docs = []
                for d in root.findall("doc"):
                    doc: Doc = {}
                    for f in d.findall("field"):
                        name = f.get("name", "")
                        if name in doc:
                            prev = doc[name]
                            doc[name] = [*(prev if isinstance(prev, list) else [prev]), f.text]
                        else:
                            doc[name] = f.text
                    docs.append(doc)
                self.index.add(docs)
        self._json({"responseHeader": {"status": 0, "QTime": 0}})

    def do_GET(self) -> None:
        self._route("GET")

    def do_POST(self) -> None:
        self._route("POST")


def make_server(host: str, port: int, data: Path | None = None) -> ThreadingHTTPServer:
    handler = type("BoundHandler", (Handler,), {"index": Index(data)})
    server = ThreadingHTTPServer((host, port), handler)
    server.daemon_threads = True
    return server


def main() -> None:
    parser = argparse.ArgumentParser(description="Solr stand-in for CKAN (test infrastructure)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8983)
    parser.add_argument("--data", type=Path, default=None, help="JSON file to keep documents in")
    args = parser.parse_args()
    server = make_server(args.host, args.port, args.data)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
