"""Every analyst notebook runs, top to bottom, against a hub holding the sample data.

The notebooks read the hub's URL from ``RENKEI_URL``; a cell that raises fails the
test, and so does a cell writing to stderr (a warning such as a missing Japanese glyph
is something a reader would see) or a notebook that draws no figure.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import nbformat
import pytest
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

from broker.samples import sample_entities, sample_history
from opendata.client import Client
from tests.support import broker

NOTEBOOKS = sorted((Path(__file__).parents[2] / "notebooks").glob("*.ipynb"))


def test_the_three_notebooks_are_there() -> None:
    assert [p.name[:3] for p in NOTEBOOKS] == ["01_", "02_", "03_"]


def test_notebooks_are_committed_without_outputs() -> None:
    for path in NOTEBOOKS:
        nb = nbformat.read(path, as_version=4)  # type: ignore[no-untyped-call]
        for cell in nb.cells:
            if cell.cell_type == "code":
                assert not cell.outputs, f"{path.name} has outputs"
                assert cell.execution_count is None, f"{path.name} has execution counts"


@pytest.fixture(scope="module")
def hub_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with broker(tmp_path_factory.mktemp("notebooks") / "hub.db") as url:
        with Client(url) as hub:
            hub.upsert(sample_entities())
        for body in sample_history():  # what `renkei demo` loads too: the gauges' history
            r = httpx.post(f"{url}/ngsi-ld/v1/temporal/entities", json=body)
            assert r.status_code in (201, 204), r.text
        yield url


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs(
    path: Path, hub_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RENKEI_URL", hub_url)
    out = tmp_path / "成果物" / "令和8年度"  # a folder that does not exist yet: made
    monkeypatch.setenv("RENKEI_OUT", str(out))
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    nb = nbformat.read(path, as_version=4)  # type: ignore[no-untyped-call]
    client = NotebookClient(
        nb,
        timeout=180,
        kernel_name="python3",
        resources={"metadata": {"path": str(tmp_path)}},
    )
    try:
        client.execute()
    except CellExecutionError as exc:
        pytest.fail(f"{path.name} failed:\n{exc}")
    outputs = [out for cell in nb.cells if cell.cell_type == "code" for out in cell.outputs]
    stderr = [out.text for out in outputs if out.output_type == "stream" and out.name == "stderr"]
    assert not stderr, f"{path.name} wrote to stderr: {stderr}"
    images = [out for out in outputs if "image/png" in out.get("data", {})]
    assert images, f"{path.name} drew no figure"
    if path.name.startswith("02_"):
        assert (out / "aed_per_district.geojson").is_file()
        assert (out / "aed_per_district.csv").is_file()
