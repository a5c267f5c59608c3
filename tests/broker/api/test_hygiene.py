"""HTTP hygiene: security headers, the HTML pages' policy, allowed hosts, CORS, offline docs."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import urljoin, urlsplit

import pytest
from fastapi.testclient import TestClient

from broker.api import docs
from broker.app import create_app
from broker.settings import get_settings
from tests.conftest import JSON, make_settings

ROOT = Path(__file__).resolve().parents[3]
SAMPLES = ROOT / "broker" / "samples" / "komae.json"
SHELTER = {
    "id": "urn:ngsi-ld:Shelter:komae-1",
    "type": "Shelter",
    "name": {"type": "Property", "value": "狛江第一小学校"},
}


@pytest.fixture
def hub(tmp_path: Path) -> Iterator[TestClient]:
    with TestClient(create_app(make_settings(tmp_path))) as c:
        r = c.post(
            "/ngsi-ld/v1/entityOperations/upsert",
            content=SAMPLES.read_bytes(),
            headers=JSON,
        )
        assert r.status_code in (201, 204), r.text
        yield c


class Loads(HTMLParser):
    """Every URL an HTML page makes the browser load: src, <link href>, url(...) in CSS."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []
        self._style = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        for name in ("src", "srcset", "data", "poster", "action", "spec-url"):
            if values.get(name):
                self.urls.append(str(values[name]))
        if tag == "link" and values.get("href"):
            self.urls.append(str(values["href"]))
        if values.get("style"):
            self.urls.extend(css_urls(str(values["style"])))
        self._style = tag == "style"

    def handle_endtag(self, tag: str) -> None:
        self._style = False

    def handle_data(self, data: str) -> None:
        if self._style:
            self.urls.extend(css_urls(data))


def css_urls(css: str) -> list[str]:
    css = re.sub(r"/\*.*?\*/", "", css, flags=re.S)
    found = re.findall(r"""url\(\s*['"]?([^'")]+)""", css)
    found += re.findall(r"""@import\s+['"]([^'"]+)""", css)
    return found


def foreign_loads(client: TestClient, path: str) -> list[str]:
    """URLs the page at ``path`` (and the stylesheets it links) loads from another host."""
    page = client.get(path)
    assert page.status_code == 200, (path, page.text[:300])
    assert page.headers["content-type"].startswith("text/html")
    parser = Loads()
    parser.feed(page.text)
    foreign: list[str] = []
    base = str(page.url)
    for url in parser.urls:
        if url.startswith(("data:", "blob:")):
            continue
        absolute = urljoin(base, url)
        if urlsplit(absolute).netloc != urlsplit(base).netloc:
            foreign.append(url)
        elif urlsplit(absolute).path.endswith(".css"):
            css = client.get(absolute)
            assert css.status_code == 200, absolute
            foreign += [u for u in css_urls(css.text) if not u.startswith(("data:", "#"))]
    return foreign


def html_pages(client: TestClient) -> list[str]:
    pages = ["/docs", "/redoc", "/viewer"]
    ogc = "/ogc"
    pages += [f"{ogc}?f=html", f"{ogc}/collections?f=html", f"{ogc}/conformance?f=html"]
    pages.append(f"{ogc}/api?f=html")
    collections = client.get(f"{ogc}/collections?f=json").json()["collections"]
    assert collections
    for col in collections:
        cid = col["id"]
        pages += [f"{ogc}/collections/{cid}?f=html", f"{ogc}/collections/{cid}/items?f=html"]
        pages.append(f"{ogc}/collections/{cid}/queryables?f=html")
        items = client.get(f"{ogc}/collections/{cid}/items?f=json&limit=1").json()["features"]
        pages += [f"{ogc}/collections/{cid}/items/{f['id']}?f=html" for f in items]
    return pages


def built() -> bool:
    return (docs.VENDOR / "swagger-ui-bundle.js").is_file() and (
        ROOT / "broker" / "static" / "viewer" / "vendor" / "maplibre-gl.js"
    ).is_file()


@pytest.fixture(scope="module")
def assets() -> None:
    """The browser assets, built by the step users run (``make viewer``), from npm."""
    import subprocess

    if not built():
        subprocess.run([str(ROOT / "scripts" / "build-viewer.sh")], check=True, timeout=600)
    assert built()


def test_no_page_the_hub_serves_loads_anything_from_another_host(
    assets: None, hub: TestClient
) -> None:
    pages = html_pages(hub)
    assert len(pages) > 10
    for path in pages:
        assert foreign_loads(hub, path) == [], path


def test_docs_pages_use_the_hubs_own_assets(assets: None, hub: TestClient) -> None:
    page = hub.get("/docs")
    assert "/docs/vendor/swagger-ui-bundle.js" in page.text
    assert "cdn.jsdelivr.net" not in page.text
    redoc = hub.get("/redoc")
    assert "/docs/vendor/redoc.standalone.js" in redoc.text
    assert "fonts.googleapis.com" not in redoc.text
    for asset, kind in [
        ("/docs/vendor/swagger-ui-bundle.js", "text/javascript"),
        ("/docs/vendor/swagger-ui.css", "text/css"),
        ("/docs/vendor/redoc.standalone.js", "text/javascript"),
        ("/docs/swagger-init.js", "text/javascript"),
    ]:
        r = hub.get(asset)
        assert r.status_code == 200, asset
        assert r.headers["content-type"].startswith(kind)
    assert "validatorUrl: null" in hub.get("/docs/swagger-init.js").text
    for hidden in ["/docs/package.json", "/docs/node_modules/redoc/package.json", "/docs/.npmrc"]:
        assert hub.get(hidden).status_code == 404, hidden
    assert hub.get("/docs/%2E%2E/api/docs.py").status_code == 404


def test_docs_say_so_when_the_assets_are_not_built(
    hub: TestClient, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(docs, "VENDOR", tmp_path / "empty")  # a checkout without npm
    for path in ["/docs", "/redoc"]:
        r = hub.get(path)
        assert r.status_code == 503
        assert "make viewer" in r.text
        assert "ビルドされていません" in r.text
        assert "not built yet" in r.text
        assert 'href="/openapi.json"' in r.text


def test_security_headers_on_every_response(hub: TestClient) -> None:
    responses = [
        hub.get("/ngsi-ld/v1/entities?type=EvacuationSite"),
        hub.post("/ngsi-ld/v1/entities", json=SHELTER),
        hub.get("/ngsi-ld/v1/entities/urn:ngsi-ld:Nothing:ない"),  # an error
        hub.get("/ogc?f=json"),
        hub.get("/health"),
    ]
    for r in responses:
        assert r.headers["x-content-type-options"] == "nosniff", r.url
        assert r.headers["x-frame-options"] == "DENY"
        assert r.headers["referrer-policy"] == "no-referrer"
        assert "content-security-policy" not in r.headers  # JSON: no page to police
    assert [r.status_code for r in responses] == [200, 201, 404, 200, 200]


def test_html_pages_allow_only_this_hub(hub: TestClient) -> None:
    for path in ["/ogc?f=html", "/docs", "/redoc", "/viewer"]:
        r = hub.get(path)
        policy = dict(
            ([*d.split(" ", 1), ""])[:2] for d in r.headers["content-security-policy"].split("; ")
        )
        assert policy["default-src"] == "'self'", path
        assert policy["script-src"] == "'self'"
        assert policy["frame-ancestors"] == "'none'"
        assert policy["object-src"] == "'none'"
        assert "http" not in r.headers["content-security-policy"]
        assert r.headers["x-frame-options"] == "DENY"


def test_viewer_policy_admits_a_configured_tile_server(tmp_path: Path) -> None:
    settings = make_settings(
        tmp_path, viewer_tiles_url="https://tiles.example.lg.jp/{z}/{x}/{y}.png"
    )
    with TestClient(create_app(settings)) as c:
        r = c.get("/viewer")
        if r.status_code == 503:  # not built: the explanation page has the default policy
            assert "tiles.example" not in r.headers["content-security-policy"]
            return
        policy = r.headers["content-security-policy"]
        assert "img-src 'self' data: blob: https://tiles.example.lg.jp;" in policy
        assert "connect-src 'self' https://tiles.example.lg.jp;" in policy
        assert "tiles.example" not in c.get("/docs").headers["content-security-policy"]


def test_allowed_hosts_refuse_other_host_names(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, allowed_hosts="hub.komae.lg.jp, *.komae.local")
    with TestClient(create_app(settings), base_url="http://hub.komae.lg.jp") as c:
        assert c.post("/ngsi-ld/v1/entities", json=SHELTER).status_code == 201
        ok = c.get("/ngsi-ld/v1/entities?type=Shelter", headers={"Host": "gis.komae.local"})
        assert ok.status_code == 200
        assert len(ok.json()) == 1
        bad = c.get("/ngsi-ld/v1/entities?type=Shelter", headers={"Host": "attacker.example"})
        assert bad.status_code == 400
        assert bad.headers["x-content-type-options"] == "nosniff"
        assert "Shelter" not in bad.text
        # orchestrators probe /health by the pod's address
        for probe in ["/health", "/health/live", "/metrics"]:
            assert c.get(probe, headers={"Host": "10.1.2.3:1026"}).status_code == 200, probe


def test_settings_read_comma_separated_lists(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RENKEI_ALLOWED_HOSTS", "hub.komae.lg.jp,localhost")
    monkeypatch.setenv("RENKEI_CORS_ORIGINS", "https://map.komae.lg.jp, http://localhost:5173/")
    s = get_settings()
    assert s.allowed_hosts == ["hub.komae.lg.jp", "localhost"]
    assert s.cors_origins == ["https://map.komae.lg.jp", "http://localhost:5173"]
    with pytest.raises(ValueError, match="scheme://host"):
        get_settings(cors_origins="https://map.komae.lg.jp/app")
    monkeypatch.delenv("RENKEI_ALLOWED_HOSTS")
    monkeypatch.delenv("RENKEI_CORS_ORIGINS")
    assert get_settings().allowed_hosts == []
    assert get_settings().cors_origins == []


def test_warns_when_listening_beyond_loopback_without_allowed_hosts(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="renkei"):
        create_app(make_settings(tmp_path, host="127.0.0.1"))
        create_app(make_settings(tmp_path, host="0.0.0.0", allowed_hosts="hub.komae.lg.jp"))
        assert "RENKEI_ALLOWED_HOSTS" not in caplog.text
        create_app(make_settings(tmp_path, host="0.0.0.0"))
    assert "RENKEI_ALLOWED_HOSTS" in caplog.text
    assert "0.0.0.0" in caplog.text


APP = "https://map.komae.lg.jp"


def test_cors_lets_listed_origins_read_ngsi_ld_answers(tmp_path: Path) -> None:
    with TestClient(create_app(make_settings(tmp_path, cors_origins=APP))) as c:
        pre = c.options(
            "/ngsi-ld/v1/entities",
            headers={
                "Origin": APP,
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "content-type, link, ngsild-tenant",
            },
        )
        assert pre.status_code == 200
        assert pre.headers["access-control-allow-origin"] == APP
        assert pre.headers["access-control-allow-credentials"] == "true"
        assert "POST" in pre.headers["access-control-allow-methods"]
        r = c.post(
            "/ngsi-ld/v1/entities", json=SHELTER, headers={"Origin": APP, "NGSILD-Tenant": "komae"}
        )
        assert r.status_code == 201
        assert r.headers["access-control-allow-origin"] == APP
        exposed = {h.strip().lower() for h in r.headers["access-control-expose-headers"].split(",")}
        assert {"link", "location", "ngsild-results-count", "ngsild-tenant"} <= exposed
        # another origin is not allowed: no CORS header, and its preflight is refused
        other = c.get("/ngsi-ld/v1/types", headers={"Origin": "https://evil.example"})
        assert "access-control-allow-origin" not in other.headers
        refused = c.options(
            "/ngsi-ld/v1/entities",
            headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"},
        )
        assert refused.status_code == 400
        assert "access-control-allow-origin" not in refused.headers


def test_cors_any_origin_never_with_credentials(tmp_path: Path) -> None:
    with TestClient(create_app(make_settings(tmp_path, cors_origins="*"))) as c:
        r = c.get("/ngsi-ld/v1/types", headers={"Origin": "https://civic.example"})
        assert r.status_code == 200
        assert r.headers["access-control-allow-origin"] == "*"
        assert "access-control-allow-credentials" not in r.headers


def test_no_cors_headers_by_default(hub: TestClient) -> None:
    r = hub.get("/ngsi-ld/v1/types", headers={"Origin": APP})
    assert "access-control-allow-origin" not in r.headers
    pre = hub.options(
        "/ngsi-ld/v1/entities", headers={"Origin": APP, "Access-Control-Request-Method": "POST"}
    )
    assert "access-control-allow-origin" not in pre.headers
