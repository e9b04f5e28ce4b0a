"""Forecast products: CF-NetCDF (compliance-checked), COG GeoTIFFs and web-map images.

Every writer is exercised on grids in the six source projections (FMI and
KNMI polar stereographic, OPERA LAEA, BoM Albers, MeteoSwiss oblique
Mercator, FMI UTM, MRMS lat/lon), on ensembles and on traffic forecasts.
"""

import json
import socket
import tracemalloc
import warnings

import numpy as np
import pandas as pd
import pyproj
import pytest
import rasterio
import rioxarray
import xarray as xr
from packaging.version import Version
from PIL import Image

from nowcast.grids import FMI_COMPOSITE_CRS, Grid
from nowcast.products import (FILL_VALUE, open_cf_netcdf, write_cf_netcdf, write_geotiff_stack, write_geotiffs,
                              write_webmap_images)
from nowcast.products.atomic import atomic_path
from nowcast.products.palette import CROWD_FLOW, RAIN_RATE, RAIN_RATE_COLORS, RAIN_RATE_LEVELS, palette_for
from nowcast.schema import SchemaError, crs_of, make_dataset, make_forecast
from nowcast.synthetic import synthetic_traffic

# id: (CRS as the source defines it, centre lon, lat, cell size in CRS units)
PROJECTIONS = {
    "fmi-stere-sphere": (FMI_COMPOSITE_CRS, 24.869, 60.271, 1000.0),
    "knmi-stere-ellipsoid": ("+proj=stere +lat_0=90 +lon_0=0 +lat_ts=60 +a=6378137 +b=6356752 +x_0=0 +y_0=0 "
                             "+units=m", 5.18, 52.1, 1000.0),
    "opera-laea": ("+proj=laea +lat_0=55 +lon_0=10 +x_0=1950000 +y_0=-2100000 +ellps=WGS84", 10.0, 50.0, 2000.0),
    "bom-albers": ("+proj=aea +lat_0=-37.852 +lon_0=144.752 +lat_1=-18 +lat_2=-36 +ellps=WGS84 +units=m",
                   144.752, -37.852, 500.0),
    "mch-somerc": ("+proj=somerc +lon_0=7.43958333333333 +lat_0=46.9524055555556 +k_0=1 +x_0=600000 "
                   "+y_0=200000 +ellps=bessel +towgs84=674.374,15.056,405.346,0,0,0,0", 8.5, 46.8, 1000.0),
    "fmi-utm": ("EPSG:3067", 25.0, 62.0, 1000.0),
    "mrms-lonlat": ("EPSG:4326", -95.0, 38.0, 0.01),
}
ISSUED = pd.Timestamp("2024-06-01T12:10")
MEMBERS = 3


def rain_forecast(projection: str, *, shape=(24, 32), members=MEMBERS, leads=2) -> xr.Dataset:
    """An ensemble rain forecast: a cell of 20, 30, 40 ... mm/h (by member) at the grid centre, NW corner missing."""
    crs, lon, lat, res = PROJECTIONS[projection]
    grid = Grid.centred_on(crs, lon, lat, shape, res)
    yy, xx = np.meshgrid(np.linspace(-1, 1, shape[0]), np.linspace(-1, 1, shape[1]), indexing="ij")
    cell = (20.0 * np.exp(-(xx**2 + yy**2) / 0.1)).astype("f4")
    cell[cell < 0.05] = 0.0
    times = pd.date_range(ISSUED - pd.Timedelta("10min"), ISSUED, freq="5min")
    obs = make_dataset(np.repeat(cell[None], times.size, 0), times=times, x=grid.x, y=grid.y, crs=grid.crs,
                       source="test radar", time_step="5min")
    data = np.stack([np.stack([cell * (1 + 0.5 * m) for m in range(members)]) for _ in range(leads)])
    data[:, :, :2, :3] = np.nan
    return make_forecast(data, like=obs, reference_time=ISSUED, source="stlight-small",
                         realization=list(range(members)))


@pytest.fixture(scope="module")
def traffic_forecast() -> xr.Dataset:
    obs = synthetic_traffic(1, size=8, holidays=[])
    last = obs.isel(time=slice(-1, None))["crowd_flow"].values
    data = np.repeat(last, 3, axis=0) * np.array([1.0, 1.1, 1.2])[:, None, None, None]
    return make_forecast(data, like=obs, reference_time=obs["time"].values[-1], source="stlight-taxibj")


@pytest.fixture
def no_network(monkeypatch):
    """Fail any attempt to reach the network (compliance-checker may try to fetch tables)."""
    attempts = []

    def refuse(*args, **kwargs):
        attempts.append(args)
        raise OSError("network access in an offline test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    yield attempts
    assert not attempts, f"tried to reach the network: {attempts}"


@pytest.fixture(scope="module")
def check_suite():
    from compliance_checker.suite import CheckSuite

    with warnings.catch_warnings():
        # Loading all suites imports the deprecated ioos_sos checker.
        warnings.simplefilter("ignore", DeprecationWarning)
        CheckSuite.load_all_available_checkers()
    return CheckSuite


def cf_failures(check_suite, path, checker: str) -> list[tuple[int, str, list[str]]]:
    """(priority, section, messages) of every failed check; crashes inside checks fail the test."""
    suite = check_suite()
    ds = suite.load_dataset(str(path))
    try:
        results, crashes = suite.run_all(ds, [checker], skip_checks=[])[checker]
    finally:
        ds.close()
    assert not crashes, f"{checker} checks crashed: {crashes}"
    failed = []
    for r in results:
        passed = r.value if isinstance(r.value, bool) else r.value[0] >= r.value[1]
        if not passed:
            failed.append((r.weight, r.name, r.msgs))
    return failed


def assert_cf_compliant(check_suite, path):
    """No failure at all in the suite of the file's own version (CF-1.8); none of high priority in the latest."""
    assert cf_failures(check_suite, path, "cf:1.8") == []
    high = [f for f in cf_failures(check_suite, path, "cf") if f[0] == 3]
    assert high == []


# --- CF-NetCDF ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("projection", PROJECTIONS)
def test_netcdf_passes_cf_compliance_checker(projection, tmp_path, check_suite, no_network):
    path = write_cf_netcdf(rain_forecast(projection), tmp_path / "f.nc", checkpoint_hash="sha256:0123abcd")
    assert_cf_compliant(check_suite, path)


def test_traffic_and_observation_files_pass_cf_compliance_checker(traffic_forecast, tmp_path, check_suite,
                                                                   no_network):
    assert_cf_compliant(check_suite, write_cf_netcdf(traffic_forecast, tmp_path / "traffic.nc"))
    obs = synthetic_traffic(1, size=8, holidays=[]).isel(time=slice(0, 4))
    assert_cf_compliant(check_suite, write_cf_netcdf(obs, tmp_path / "obs.nc"))


@pytest.mark.parametrize("projection", PROJECTIONS)
def test_netcdf_round_trips_with_crs_recovered_by_pyproj(projection, tmp_path):
    forecast = rain_forecast(projection)
    path = write_cf_netcdf(forecast, tmp_path / "f.nc")
    with xr.open_dataset(path, decode_timedelta=True) as raw:
        crs = pyproj.CRS.from_wkt(raw["crs"].attrs["crs_wkt"])
        assert crs.equals(crs_of(forecast))
        assert raw["rainrate"].attrs["grid_mapping"] == "crs"
        assert raw["rainrate"].dims == ("realization", "time", "y", "x")  # CF order: T, Y, X last
        np.testing.assert_array_equal(raw["x"].values, forecast["x"].values)
        np.testing.assert_array_equal(raw["y"].values, forecast["y"].values)
        np.testing.assert_array_equal(raw["forecast_period"].values, forecast["forecast_period"].values)
        assert raw["forecast_reference_time"].values == forecast["forecast_reference_time"].values
    back = open_cf_netcdf(path)
    assert back["rainrate"].dims == forecast["rainrate"].dims
    np.testing.assert_array_equal(back["rainrate"].values, forecast["rainrate"].values)  # NaN where missing
    np.testing.assert_allclose(back["lat"].values, forecast["lat"].values)
    np.testing.assert_allclose(back["lon"].values, forecast["lon"].values)
    back.close()


@pytest.mark.parametrize("projection", [
    pytest.param(p, marks=pytest.mark.xfail(
        Version(pyproj.__version__) < Version("3.8"), strict=True,
        reason="pyproj < 3.8 from_cf rotates oblique_mercator by 90 deg (pyproj4/pyproj#1506); "
               "crs_wkt carries the exact CRS")) if "somerc" in p else p
    for p in PROJECTIONS])
def test_cf_grid_mapping_attributes_alone_define_the_projection(projection, tmp_path):
    """Readers that ignore crs_wkt place the grid the same (to 1 mm) from the CF attributes."""
    forecast = rain_forecast(projection)
    path = write_cf_netcdf(forecast, tmp_path / "f.nc")
    with xr.open_dataset(path) as raw:
        attrs = {k: v for k, v in raw["crs"].attrs.items() if k not in ("crs_wkt", "spatial_ref")}
    from_cf = pyproj.CRS.from_cf(attrs)
    lon, lat = forecast["lon"].values[::5, ::5].ravel(), forecast["lat"].values[::5, ::5].ravel()
    exact = pyproj.Transformer.from_crs("EPSG:4326", crs_of(forecast), always_xy=True).transform(lon, lat)
    cf_only = pyproj.Transformer.from_crs("EPSG:4326", from_cf, always_xy=True).transform(lon, lat)
    tolerance = 1e-8 if from_cf.is_geographic else 1e-3
    np.testing.assert_allclose(cf_only, exact, rtol=0, atol=tolerance)


def test_netcdf_metadata_compression_and_chunks(tmp_path):
    forecast = rain_forecast("fmi-stere-sphere")
    path = write_cf_netcdf(forecast, tmp_path / "f.nc", title="Test nowcast", institution="FMI test",
                           references="doi:10.0000/test", checkpoint_hash="sha256:0123abcd")
    import netCDF4

    with netCDF4.Dataset(path) as nc:
        assert nc.Conventions == "CF-1.8"
        assert nc.title == "Test nowcast" and nc.institution == "FMI test"
        assert "stlight-small" in nc.source and "sha256:0123abcd" in nc.source
        assert "write_cf_netcdf" in nc.history and nc.references == "doi:10.0000/test"
        rain = nc["rainrate"]
        assert rain.dtype == np.float32 and rain._FillValue == FILL_VALUE
        assert rain.units == "mm h-1" and rain.standard_name == "rainfall_rate" and rain.grid_mapping == "crs"
        assert rain.filters()["zlib"] and rain.filters()["shuffle"]
        assert rain.chunking() == [1, 1, 24, 32]  # one member, one lead time, whole field
        assert nc["forecast_period"].units == "seconds" and nc["forecast_period"].standard_name == "forecast_period"
        assert nc["time"].units.startswith("seconds since 1970-01-01")
        assert nc["forecast_reference_time"].standard_name == "forecast_reference_time"
        assert "crs" not in rain.coordinates.split()
        assert nc["crs"].grid_mapping_name == "polar_stereographic"
        assert nc["crs"].latitude_of_projection_origin == 90.0
        for name in ("x", "y", "lat", "lon", "time"):
            assert "_FillValue" not in nc[name].ncattrs(), name
        missing = rain[0, 0, :2, :3]
        assert np.ma.getmaskarray(missing).all()


def test_netcdf_written_in_blocks_equals_one_write_and_copies_no_forecast(tmp_path, monkeypatch):
    """A forecast over WRITE_BLOCK_BYTES goes out a few leads at a time, sliced straight from its array:
    dask's from_array would copy it first (of persistence's read-only broadcast view, 12 whole fields)."""
    from nowcast.products import netcdf

    forecast = rain_forecast("fmi-stere-sphere", members=1, leads=4).isel(realization=0, drop=True)
    whole = write_cf_netcdf(forecast, tmp_path / "whole.nc")
    first = forecast["rainrate"].values[:1]
    view = forecast.copy(data={"rainrate": np.broadcast_to(first, (4, 24, 32))})
    monkeypatch.setattr(netcdf, "WRITE_BLOCK_BYTES", 2 * 4 * 24 * 32)  # two leads a block
    blocks = netcdf._in_blocks(view["rainrate"], netcdf._write_chunks(view["rainrate"]))
    assert blocks.chunks[0] == (2, 2)
    big = xr.DataArray(np.broadcast_to(np.ones((1024, 1024), "f4"), (4, 1024, 1024)), dims=("time", "y", "x"))
    tracemalloc.start()
    netcdf._in_blocks(big, {"time": 1})
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 2**20  # the blocks of a 16 MiB forecast cost no copy of it
    written = open_cf_netcdf(write_cf_netcdf(view, tmp_path / "blocks.nc"))
    np.testing.assert_array_equal(written["rainrate"].values, open_cf_netcdf(whole)["rainrate"].values[:1].repeat(4, 0))


def test_traffic_netcdf_keeps_flow_labels(traffic_forecast, tmp_path):
    path = write_cf_netcdf(traffic_forecast, tmp_path / "t.nc")
    with xr.open_dataset(path) as raw:
        assert raw["crowd_flow"].dims == ("flow", "time", "y", "x")
        assert list(raw["flow_label"].values) == ["inflow", "outflow"]
    back = open_cf_netcdf(path)
    assert list(back["flow"].values) == ["inflow", "outflow"]
    np.testing.assert_allclose(back["crowd_flow"].values, traffic_forecast["crowd_flow"].values)
    back.close()


def test_invalid_dataset_writes_nothing(tmp_path):
    broken = rain_forecast("opera-laea").drop_vars("crs")
    with pytest.raises(SchemaError, match="crs"):
        write_cf_netcdf(broken, tmp_path / "f.nc")
    assert list(tmp_path.iterdir()) == []


def test_failed_write_leaves_previous_file_and_no_temporary(tmp_path):
    target = tmp_path / "product.nc"
    target.write_text("previous")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("writer crashed")
    assert target.read_text() == "previous"
    assert [p.name for p in tmp_path.iterdir()] == ["product.nc"]


# --- GeoTIFF -------------------------------------------------------------------------------------------


def _netcdf_bounds(path):
    """(left, bottom, right, top) cell edges from a NetCDF product's x/y centres."""
    with xr.open_dataset(path) as ds:
        x, y = ds["x"].values, ds["y"].values
    dx, dy = abs(x[1] - x[0]), abs(y[1] - y[0])
    return x.min() - dx / 2, y.min() - dy / 2, x.max() + dx / 2, y.max() + dy / 2


def _same_crs(geotiff_crs: rasterio.crs.CRS, netcdf_crs: pyproj.CRS) -> bool:
    # GDAL's and pyproj's EPSG databases may name datum realisations
    # differently (ETRS89 ensemble vs EUREF-FIN): equal EPSG codes count.
    if geotiff_crs.to_epsg() is not None and geotiff_crs.to_epsg() == netcdf_crs.to_epsg():
        return True
    return pyproj.CRS.from_wkt(geotiff_crs.to_wkt()).equals(netcdf_crs, ignore_axis_order=True)


@pytest.mark.parametrize("projection", PROJECTIONS)
def test_geotiff_and_netcdf_agree_on_crs_and_bounds(projection, tmp_path):
    forecast = rain_forecast(projection)
    nc = write_cf_netcdf(forecast, tmp_path / "f.nc")
    with xr.open_dataset(nc) as ds:
        nc_crs = pyproj.CRS.from_wkt(ds["crs"].attrs["crs_wkt"])
    tifs = write_geotiffs(forecast, tmp_path / "tif")
    assert [p.name for p in tifs] == ["rainrate_20240601T1210Z_lead005min.tif",
                                      "rainrate_20240601T1210Z_lead010min.tif"]
    with rasterio.open(tifs[1]) as tif:
        assert _same_crs(tif.crs, nc_crs)
        res = PROJECTIONS[projection][3]
        np.testing.assert_allclose(tuple(tif.bounds), _netcdf_bounds(nc), rtol=0, atol=1e-6 * res)
        assert tif.count == MEMBERS and tif.dtypes == ("float32",) * MEMBERS
        assert tif.nodata == FILL_VALUE
        assert tif.descriptions == ("member 0", "member 1", "member 2")
        assert tif.tags()["valid_time"] == "2024-06-01T12:20:00Z" and tif.tags()["forecast_period"] == "PT10M"
        assert tif.tags()["units"] == "mm h-1" and tif.units == ("mm h-1",) * MEMBERS  # GDAL band unit type
        structure = tif.tags(ns="IMAGE_STRUCTURE")
        assert structure["LAYOUT"] == "COG" and structure["COMPRESSION"] == "DEFLATE"
        assert structure["PREDICTOR"] == "3"
        data = tif.read(masked=True)
    expected = forecast["rainrate"].isel(time=1).values
    np.testing.assert_array_equal(data.mask, np.isnan(expected))
    np.testing.assert_allclose(data.filled(np.nan), expected)


def test_geotiff_has_overviews_and_reads_with_rioxarray(tmp_path):
    forecast = rain_forecast("opera-laea", shape=(600, 700), members=1, leads=1)
    (tif,) = write_geotiffs(forecast.isel(realization=0, drop=True), tmp_path, stem="opera")
    with rasterio.open(tif) as src:
        assert src.overviews(1) == [2, 4]
        assert src.block_shapes[0] == (256, 256)
        assert src.descriptions == ("+5 min (valid 2024-06-01T12:15Z)",)
    da = rioxarray.open_rasterio(tif, masked=True)
    np.testing.assert_array_equal(da["x"].values, forecast["x"].values)
    np.testing.assert_array_equal(da["y"].values, forecast["y"].values)
    assert da.rio.crs.to_wkt() and pyproj.CRS(da.rio.crs.to_wkt()).equals(crs_of(forecast))


def test_observation_geotiffs_are_named_by_valid_time(tmp_path):
    obs = synthetic_traffic(1, size=8, holidays=[]).isel(time=slice(0, 2))
    tifs = write_geotiffs(obs, tmp_path)
    assert [p.name for p in tifs] == ["crowd_flow_20150228T1600Z.tif", "crowd_flow_20150228T1630Z.tif"]
    with rasterio.open(tifs[1]) as tif:
        assert tif.tags()["valid_time"] == "2015-02-28T16:30:00Z" and "forecast_period" not in tif.tags()
        assert tif.descriptions == ("inflow", "outflow")


def test_geotiff_stack_has_one_band_per_lead_time(tmp_path):
    forecast = rain_forecast("bom-albers", members=1, leads=3).isel(realization=0, drop=True)
    path = write_geotiff_stack(forecast, tmp_path / "stack.tif")
    with rasterio.open(path) as tif:
        assert tif.count == 3
        assert tif.descriptions == ("+5 min (valid 2024-06-01T12:15Z)", "+10 min (valid 2024-06-01T12:20Z)",
                                    "+15 min (valid 2024-06-01T12:25Z)")
        assert [tif.tags(b)["forecast_period"] for b in (1, 2, 3)] == ["PT5M", "PT10M", "PT15M"]
        assert tif.tags()["forecast_reference_time"] == "2024-06-01T12:10:00Z"
        np.testing.assert_allclose(tif.read(masked=True).filled(np.nan), forecast["rainrate"].values)


def test_traffic_geotiffs_have_one_band_per_flow(traffic_forecast, tmp_path):
    tifs = write_geotiffs(traffic_forecast, tmp_path)
    assert len(tifs) == 3 and tifs[0].name.endswith("_lead030min.tif")
    with rasterio.open(tifs[0]) as tif:
        assert tif.descriptions == ("inflow", "outflow") and tif.crs.to_epsg() == 32650
        np.testing.assert_allclose(tif.read(), traffic_forecast["crowd_flow"].isel(time=0).values)
    stack = write_geotiff_stack(traffic_forecast, tmp_path / "stack.tif")
    with rasterio.open(stack) as tif:
        assert tif.count == 6
        # The local day 2015-03-01 ends at 16:00 UTC.
        assert tif.descriptions[:2] == ("+30 min (valid 2015-03-01T16:00Z), inflow",
                                        "+30 min (valid 2015-03-01T16:00Z), outflow")
        np.testing.assert_allclose(tif.read(6), traffic_forecast["crowd_flow"].isel(time=2, flow=1).values)


# --- web-map images and palette ------------------------------------------------------------------------


def _pixel_of(world: list[float], lon: float, lat: float) -> tuple[int, int]:
    """(row, col) of the image pixel holding ``lon``/``lat``, from an EPSG:3857 world file."""
    a, _, _, e, cx, cy = world
    x, y = pyproj.Transformer.from_crs("EPSG:4326", "EPSG:3857", always_xy=True).transform(lon, lat)
    return int(round((y - cy) / e)), int(round((x - cx) / a))


@pytest.mark.parametrize("projection", ["fmi-stere-sphere", "mch-somerc", "mrms-lonlat"])
def test_webmap_images_are_placed_by_their_world_files(projection, tmp_path):
    forecast = rain_forecast(projection)
    images = write_webmap_images(forecast, tmp_path)
    assert [p.name for p in images] == ["rainrate_20240601T1210Z_lead005min.png",
                                        "rainrate_20240601T1210Z_lead010min.png"]
    world = [float(v) for v in images[0].with_suffix(".pgw").read_text().split()]
    rgba = np.asarray(Image.open(images[0]))
    manifest = json.loads((tmp_path / "rainrate_20240601T1210Z.json").read_text())
    assert rgba.shape == (manifest["height"], manifest["width"], 4)
    # The rain cell is where the world file says, coloured as its ensemble
    # mean (30 mm/h; members 20, 30, 40 fall in other classes).
    _, lon, lat, _ = PROJECTIONS[projection]
    row, col = _pixel_of(world, lon, lat)
    assert tuple(rgba[row, col]) == tuple(RAIN_RATE.rgba(np.array([30.0]))[0])
    # Outside the grid and in dry cells the image is transparent.
    assert rgba[0, 0, 3] == 0
    assert (rgba[..., 3] == 0).mean() > 0.2
    south_west, north_east = manifest["bounds_lonlat"]
    assert south_west[0] < lat < north_east[0] and south_west[1] < lon < north_east[1]
    assert Image.open(tmp_path / manifest["legend"]).format == "PNG"
    # The CRS travels next to the world file, for QGIS/ArcGIS (.prj) and GDAL (.aux.xml).
    assert pyproj.CRS(images[0].with_suffix(".prj").read_text()).equals(pyproj.CRS("EPSG:3857"))
    with rasterio.open(images[0]) as png:
        assert png.crs == rasterio.crs.CRS.from_epsg(3857)
        np.testing.assert_allclose(png.transform.a, world[0])


def test_webmap_webp_traffic_images(traffic_forecast, tmp_path):
    images = write_webmap_images(traffic_forecast, tmp_path, format="webp", stem="bj")
    assert len(images) == 6 and images[1].name == "bj_lead030min_outflow.webp"
    assert all(p.with_suffix(".wld").exists() for p in images)
    assert Image.open(images[0]).format == "WEBP"
    rgba = np.asarray(Image.open(images[0]).convert("RGBA"))  # an opaque WebP decodes as RGB
    busiest = np.nanmax(traffic_forecast["crowd_flow"].isel(time=0, flow=0).values)
    colours = {tuple(c) for c in rgba.reshape(-1, 4)}
    assert tuple(CROWD_FLOW.rgba(np.array([busiest]))[0]) in colours


def test_webmap_image_size_is_capped(tmp_path):
    forecast = rain_forecast("opera-laea", shape=(300, 400), members=1, leads=1)
    (image,) = write_webmap_images(forecast, tmp_path, max_size=128)
    assert max(Image.open(image).size) == 128


def test_rain_rate_palette_classes():
    values = np.array([np.nan, 0.05, 0.1, 0.15, 1.0, 99.0, 100.0, 1e4])
    rgba = RAIN_RATE.rgba(values)
    assert rgba[0, 3] == 0 and rgba[1, 3] == 0  # missing and dry: transparent
    hex_colours = ["#%02x%02x%02x" % tuple(c[:3]) for c in rgba[2:]]
    assert hex_colours == [RAIN_RATE_COLORS[0], RAIN_RATE_COLORS[0], RAIN_RATE_COLORS[5],
                           RAIN_RATE_COLORS[-2], RAIN_RATE_COLORS[-1], RAIN_RATE_COLORS[-1]]
    cmap, norm = RAIN_RATE.cmap_norm()
    assert norm.boundaries.tolist() == list(RAIN_RATE_LEVELS) and cmap.N == len(RAIN_RATE_LEVELS)
    assert palette_for("rainrate") is RAIN_RATE
    with pytest.raises(ValueError, match="reflectivity"):
        palette_for("reflectivity")


def test_swiss_products_write_without_warnings_and_explain_the_grid_mapping(tmp_path):
    """No per-file pyproj warning for the oblique Mercator, no stray non-CF attributes, the limit documented."""
    import netCDF4

    forecast = rain_forecast("mch-somerc")
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        nc = write_cf_netcdf(forecast, tmp_path / "f.nc")
        write_geotiffs(forecast, tmp_path / "tif")
        write_webmap_images(forecast, tmp_path / "web")
    with netCDF4.Dataset(nc) as ds:
        assert "dtype" not in ds["forecast_period"].ncattrs()
        assert list(ds["forecast_period"][:]) == [300, 600]
        assert "crs_wkt" in ds.getncattr("comment") and "rectified" in ds.getncattr("comment")
    assert open_cf_netcdf(nc)["forecast_period"].values[0] == np.timedelta64(5, "m")
    with netCDF4.Dataset(write_cf_netcdf(rain_forecast("opera-laea"), tmp_path / "laea.nc")) as ds:
        assert "comment" not in ds.ncattrs()


def test_leftovers_of_a_killed_product_writer_are_removed_by_the_next_one(tmp_path):
    """A forecast killed while writing leaves a hidden folder tagged with its host and pid; the next write
    removes it, but never the scratch of a writer that still runs."""
    import subprocess
    import sys

    from nowcast.forecast import write_products
    from nowcast.products.atomic import scratch_tag

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    tag = scratch_tag().split("-")
    killed = tmp_path / f".20240601T1200Z.partial-{tag[0]}-{dead.stdout.strip()}-0badcafe"
    (killed / "geotiff").mkdir(parents=True)
    alive = tmp_path / f".20240601T1205Z.partial-{scratch_tag()}"
    alive.mkdir()
    write_products({"stlight-small": rain_forecast("fmi-stere-sphere")}, tmp_path / "20240601T1210Z",
                   formats=["netcdf"])
    assert not killed.exists() and alive.exists()
    assert (tmp_path / "20240601T1210Z" / "stlight-small.nc").is_file()


def test_bands_are_north_up_and_east_going_whatever_the_grid_order():
    from nowcast.products.fields import to_bands

    fc = synthetic_traffic(2, seed=3).isel(time=slice(0, 1))
    reversed_grid = fc.isel(y=slice(None, None, -1), x=slice(None, None, -1))
    sorted_bands, reversed_bands = to_bands(fc, fc["crowd_flow"]), to_bands(reversed_grid, reversed_grid["crowd_flow"])
    assert sorted_bands.y[0] > sorted_bands.y[-1] and sorted_bands.x[0] < sorted_bands.x[-1]
    for a, b in ((sorted_bands.values, reversed_bands.values), (sorted_bands.x, reversed_bands.x),
                 (sorted_bands.y, reversed_bands.y)):
        np.testing.assert_array_equal(a, b)
