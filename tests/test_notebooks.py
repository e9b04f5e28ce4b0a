"""The analyst notebooks: stored without outputs; each runs top to bottom and writes the figures it promises.

Each notebook is executed with nbclient in a temporary working folder, with
its parameters overridden the way papermill does it: a cell inserted right
after the cell tagged ``parameters``. ``SMALL = True`` selects tiny grids,
tiny model presets and a couple of training steps. Notebook 03 finds the
checkpoints notebook 02 trained in the same working folder, as an analyst
running them in order would (alone, it trains its own).
"""

from __future__ import annotations

import ast
from pathlib import Path

import nbformat
import pytest
from PIL import Image

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
STORED = sorted(NOTEBOOKS.glob("*.ipynb"))
CELL_TIMEOUT_S = 300


@pytest.fixture
def run_notebook(monkeypatch):
    """``run(name, workdir, **parameters)``: execute a notebook with parameters injected; return it."""
    from nbclient import NotebookClient

    # Figures display inline as in Jupyter (the test session itself draws with Agg).
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")

    def run(name: str, workdir: Path, **parameters) -> nbformat.NotebookNode:
        nb = nbformat.read(NOTEBOOKS / name, as_version=4)
        tagged = [i for i, cell in enumerate(nb.cells) if "parameters" in cell.metadata.get("tags", [])]
        assert len(tagged) == 1, f"{name}: exactly one cell must be tagged 'parameters'"
        source = "\n".join(f"{key} = {value!r}" for key, value in {"SMALL": True, **parameters}.items())
        nb.cells.insert(tagged[0] + 1, nbformat.v4.new_code_cell(source, metadata={"tags": ["injected-parameters"]}))
        NotebookClient(nb, timeout=CELL_TIMEOUT_S, kernel_name="python3",
                       resources={"metadata": {"path": str(workdir)}}).execute()
        return nb

    return run


def shown_images(nb: nbformat.NotebookNode) -> int:
    """How many images (PNG or GIF) the executed notebook displays."""
    return sum(bool({"image/png", "image/gif"} & set(out.get("data", {})))
               for cell in nb.cells if cell.cell_type == "code" for out in cell.get("outputs", []))


def assert_figures(folder: Path, names: list[str]) -> None:
    """Each figure exists and is a real picture of a sensible size."""
    for name in names:
        path = folder / name
        assert path.is_file(), f"{path} was not written"
        with Image.open(path) as image:
            assert image.width >= 300 and image.height >= 150, f"{path}: {image.size} is too small for a figure"
            if name.endswith(".gif"):
                assert image.n_frames > 1, f"{path} is not animated"


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    """One working folder per module (per xdist worker): notebook 03 finds notebook 02's runs there."""
    return tmp_path_factory.mktemp("notebooks")


def test_the_promised_notebooks_exist():
    assert {p.name for p in STORED} >= {"01_explore_archive.ipynb", "02_forecast_and_compare.ipynb",
                                        "02b_forecast_traffic.ipynb", "03_verify.ipynb"}


@pytest.mark.parametrize("path", STORED, ids=[p.name for p in STORED])
def test_stored_without_outputs(path: Path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    dirty = [i for i, cell in enumerate(nb.cells)
             if cell.cell_type == "code" and (cell.get("outputs") or cell.get("execution_count") is not None)]
    assert not dirty, (f"{path.name}: cells {dirty} hold outputs or execution counts; "
                       f"strip them with `nbstripout {path.relative_to(NOTEBOOKS.parent)}`")
    assert [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])], f"{path.name}: no parameters cell"


@pytest.mark.parametrize("path", STORED, ids=[p.name for p in STORED])
def test_only_the_public_api(path: Path):
    """No private nowcast module or name is imported."""
    private = []
    for cell in nbformat.read(path, as_version=4).cells:
        if cell.cell_type != "code":
            continue
        for node in ast.walk(ast.parse(cell.source)):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("nowcast"):
                names = node.module.split(".") + [alias.name for alias in node.names]
            elif isinstance(node, ast.Import):
                names = [part for alias in node.names if alias.name.startswith("nowcast")
                         for part in alias.name.split(".")]
            else:
                continue
            private += [name for name in names if name.startswith("_")]
    assert not private, f"{path.name} imports private names {private}"


def test_01_explore_archive(run_notebook, workdir):
    nb = run_notebook("01_explore_archive.ipynb", workdir)
    assert_figures(workdir / "outputs/notebooks/01", ["frames.png", "time_series.png", "coverage_and_chunks.png"])
    assert shown_images(nb) == 3


@pytest.mark.xdist_group("notebooks-radar")
def test_02_forecast_and_compare(run_notebook, workdir):
    nb = run_notebook("02_forecast_and_compare.ipynb", workdir)
    out = workdir / "outputs/notebooks/02"
    assert_figures(out, ["panels.png", "animation_stlight-tiny.gif"])
    assert sorted(p.name for p in (out / "runs").iterdir()) == ["mslstm-tiny", "stlight-tiny", "tau-tiny"]
    assert shown_images(nb) == 2


@pytest.mark.xdist_group("notebooks-radar")
def test_03_verify(run_notebook, workdir):
    nb = run_notebook("03_verify.ipynb", workdir)
    out = workdir / "outputs/notebooks/03"
    assert_figures(out, ["csi_vs_lead.png", "fss_vs_lead.png", "mae_vs_lead.png", "contingency_map.png",
                         "power_spectra.png", "products_reopened.png"])
    assert shown_images(nb) == 6
    products = next((out / "products").iterdir())
    methods = {"stlight-tiny", "mslstm-tiny", "tau-tiny", "persistence", "lagrangian"}
    assert {p.stem for p in products.glob("*.nc")} == methods
    assert {p.name for p in (products / "geotiff").iterdir()} == methods
    assert (products / "manifest.json").is_file()


def test_02b_forecast_traffic(run_notebook, tmp_path):
    """Run twice in one folder, as an analyst re-running it: the second run replaces its own outputs."""
    run_notebook("02b_forecast_traffic.ipynb", tmp_path, DATA=None)
    nb = run_notebook("02b_forecast_traffic.ipynb", tmp_path, DATA=None)
    assert sorted(p.name for p in (tmp_path / "outputs/notebooks/02b/runs").iterdir()) == [
        "mslstm-tiny", "stlight-tiny", "tau-tiny"]
    assert any("training 3 model(s)" in out.get("text", "") for cell in nb.cells if cell.cell_type == "code"
               for out in cell.get("outputs", []))
    assert_figures(tmp_path / "outputs/notebooks/02b",
                   ["flows_at_issue_time.png", "panels_inflow.png", "panels_outflow.png", "rmse_vs_lead.png",
                    "mae_vs_lead.png", "animation_stlight-tiny.gif"])
    assert shown_images(nb) == 6


@pytest.mark.realdata
def test_01_on_meteoswiss_gifs(run_notebook, tmp_path, shared_data):
    folder = shared_data / "radar" / "mch" / "20150515"
    if not folder.is_dir():
        pytest.skip(f"{folder} not present")
    run_notebook("01_explore_archive.ipynb", tmp_path, SOURCE="mch", DATA=str(folder), OPTIONS={"coarsen": 4})
    assert_figures(tmp_path / "outputs/notebooks/01", ["frames.png", "time_series.png", "coverage_and_chunks.png"])
    assert (tmp_path / "outputs/notebooks/01/mch.zarr").is_dir()


@pytest.mark.realdata
@pytest.mark.slow
def test_02b_on_taxinyc_by_default(run_notebook, tmp_path, shared_data, monkeypatch):
    if not sorted((shared_data / "taxinyc").glob("NYC*_Taxi_*.h5")):
        pytest.skip("no TaxiNYC files in the shared data")
    from nowcast.archive import open_archive

    # DATA stays "auto": the notebook finds TaxiNYC itself. One model keeps it short.
    monkeypatch.setenv("NOWCAST_SHARED_DATA", str(shared_data))
    run_notebook("02b_forecast_traffic.ipynb", tmp_path, PRESETS=["tau-tiny"])
    out = tmp_path / "outputs/notebooks/02b"
    assert_figures(out, ["flows_at_issue_time.png", "panels_inflow.png", "panels_outflow.png",
                         "rmse_vs_lead.png", "animation_tau-tiny.gif"])
    assert "TaxiNYC" in open_archive(out / "taxibj.zarr").attrs["source"]
