"""Readers of the real radar files: data model, true CRS, north-up, units, no-data/undetect, georeference.

Known points (documented corners, the radar site at a projection origin) are
checked against each file's lat/lon within one grid cell; values are checked
against pysteps' own importers where pysteps decodes them right.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pyproj
import pytest
import xarray as xr

from nowcast.schema import crs_of, validate
from nowcast.sources import SOURCES, SourceError, detect, get_reader, get_source

pytestmark = pytest.mark.realdata
GEOD = pyproj.Geod(ellps="WGS84")

# One real file per radar source (paths relative to shared/data).
FILES = {
    "fmi": "radar/fmi/pgm/20160928/201609281600_fmi.radar.composite.lowest_FIN_SUOMI1.pgm.gz",
    "fmi-geotiff": "radar/fmi/geotiff/20160928/201609281600_FINUTM.tif",
    "mch": "radar/mch/20160711/AQC161932100V_00005.801.gif",
    "knmi": "radar/KNMI/2010/08/RAD_NL25_RAP_5min_201008260320.h5",
    "bom": "radar/bom/prcp-cscn/2/2018/06/16/2_20180616_120000.prcp-cscn.nc",
    "odim": "radar/OPERA/20180824/T_PAAH21_C_EUOC_20180824180000.hdf",
    "mrms": "radar/mrms/2019/06/10/PrecipRate_00.00_20190610-000000.grib2",
    "taxibj": "taxinyc/NYC12_Taxi_M16x8_T60_InOut.h5",
}
# Reader options that keep the tests fast (the 36 M-cell GeoTIFF at 1 km).
FAST = {"fmi-geotiff": {"coarsen": 4}}
GRID_MAPPING = {
    "fmi": "polar_stereographic", "fmi-geotiff": "transverse_mercator", "mch": "oblique_mercator",
    "knmi": "polar_stereographic", "bom": "albers_conical_equal_area",
    "odim": "lambert_azimuthal_equal_area", "mrms": "latitude_longitude", "taxibj": "transverse_mercator",
}
VALID_TIME = {
    "fmi": "2016-09-28 16:00", "fmi-geotiff": "2016-09-28 16:00", "mch": "2016-07-11 21:00",
    "knmi": "2010-08-26 03:20", "bom": "2018-06-16 12:00", "odim": "2018-08-24 18:00", "mrms": "2019-06-10 00:00",
}


@pytest.fixture(scope="module")
def read(shared_data):
    cache = {}

    def _read(name: str, **options):
        key = (name, tuple(sorted(options.items())))
        if key not in cache:
            cache[key] = get_reader(name)(shared_data / FILES[name], **{**FAST.get(name, {}), **options})
        return cache[key]

    return _read


def distance_m(lon1, lat1, lon2, lat2) -> float:
    return float(GEOD.inv(lon1, lat1, lon2, lat2)[2])


def cell_diagonal_m(ds) -> float:
    """Diagonal of one grid cell in metres (degrees converted at the grid's mid-latitude)."""
    dx, dy = abs(float(ds.x[1] - ds.x[0])), abs(float(ds.y[1] - ds.y[0]))
    if crs_of(ds).is_geographic:
        lat = float(ds.y.mean())
        dx, dy = dx * 111_320 * np.cos(np.radians(lat)), dy * 110_570
    return float(np.hypot(dx, dy))


def assert_near(ds, row: int, col: int, lon: float, lat: float, cells: float = 1.0) -> None:
    """The cell (row, col) of ``ds`` lies within ``cells`` cell diagonals of (lon, lat)."""
    d = distance_m(float(ds.lon[row, col]), float(ds.lat[row, col]), lon, lat)
    assert d <= cells * cell_diagonal_m(ds), f"cell ({row}, {col}) is {d:.0f} m from ({lon}, {lat})"


def nearest_cell(ds, lon: float, lat: float) -> tuple[int, int]:
    x, y = pyproj.Transformer.from_crs("EPSG:4326", crs_of(ds), always_xy=True).transform(lon, lat)
    return int(np.abs(ds.y.values - y).argmin()), int(np.abs(ds.x.values - x).argmin())


def make_bad(src: Path, dst: Path, kind: str) -> Path:
    """A damaged copy of a real file: ``empty``, ``truncated`` (half), or ``flipped`` (64 bytes
    inverted inside the compressed data: HDF5 chunk, or 60 % into the file)."""
    raw = bytearray(src.read_bytes())
    if kind == "empty":
        raw = bytearray()
    elif kind == "truncated":
        raw = raw[: len(raw) // 2]
    elif kind == "flipped":
        at = int(len(raw) * 0.6)
        if raw[:4] == b"\x89HDF":
            with h5py.File(src, "r") as f:
                name = next(n for n in ("image1/image_data", "dataset1/data1/data", "precipitation", "data")
                            if n in f)
                info = f[name].id.get_chunk_info(0)
                at = info.byte_offset + info.size // 2
        raw[at:at + 64] = bytes(b ^ 0xFF for b in raw[at:at + 64])
    else:
        raise ValueError(kind)
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.write_bytes(bytes(raw))
    return dst


@pytest.mark.parametrize("name", sorted(FILES))
def test_reader_gives_the_data_model_with_the_true_crs_north_up(read, name):
    ds = read(name)
    validate(ds, forecast=False)
    assert ds["crs"].attrs["grid_mapping_name"] == GRID_MAPPING[name]
    assert np.all(np.diff(ds.y.values) < 0) and np.all(np.diff(ds.x.values) > 0)
    if crs_of(ds).is_projected:
        assert ds.x.attrs["units"] == "m" and cell_diagonal_m(ds) > 100  # metres, not km
    assert np.all(np.abs(ds.lat.values) <= 90)
    if name in VALID_TIME:
        assert ds.sizes["time"] == 1 and pd.Timestamp(ds.time.values[0]) == pd.Timestamp(VALID_TIME[name])


@pytest.mark.parametrize("name", ["mch", "knmi", "bom", "odim", "mrms"])
def test_rain_rates_are_mm_per_hour_with_nan_for_no_data_and_zero_for_undetect(read, name):
    ds = read(name)
    rate = ds["rainrate"].values
    assert ds["rainrate"].attrs["units"] == "mm h-1"
    if name != "bom":  # the Melbourne square lies wholly inside the radar's range
        assert np.isnan(rate).any(), "no-data cells must be NaN"
    assert (rate == 0).any(), "undetect / dry cells must be 0"
    assert np.nanmin(rate) >= 0 and 1 < np.nanmax(rate) < 2000  # OPERA keeps some clutter spikes


def test_bom_fill_values_become_nan(shared_data, tmp_path):
    import netCDF4

    copy = tmp_path / Path(FILES["bom"]).name
    shutil.copyfile(shared_data / FILES["bom"], copy)
    with netCDF4.Dataset(copy, "a") as nc:
        nc["precipitation"][:10, :20] = np.ma.masked
    rate = get_reader("bom")(copy)["rainrate"].values[0]
    assert np.isnan(rate[:10, :20]).all() and np.isfinite(rate[10:]).all()


@pytest.mark.parametrize("name, pysteps_call, factor", [
    ("knmi", ("import_knmi_hdf5", {"qty": "ACRR", "accutime": 5}), 12.0),
    ("bom", ("import_bom_rf3", {}), 10.0),
    ("odim", ("import_odim_hdf5", {"qty": "RATE"}), 1.0),
    ("mch", ("import_mch_gif", {"product": "AQC", "unit": "mm", "accutime": 5}), 12.0),
])
def test_values_match_pysteps_in_mm_per_hour(read, shared_data, name, pysteps_call, factor):
    from pysteps.io import importers

    function, kwargs = pysteps_call
    expected, _, meta = getattr(importers, function)(str(shared_data / FILES[name]), **kwargs)
    ours = read(name)["rainrate"].values[0]
    np.testing.assert_array_equal(np.isnan(ours), np.isnan(expected))
    np.testing.assert_allclose(ours, expected * factor, rtol=1e-5, atol=1e-4)
    if factor != 1.0:  # an accumulation: the rate is per hour, the period is stated
        assert pd.Timedelta(read(name).attrs["accumulation_period"]) * factor == pd.Timedelta("1h")


# Readers that decode natively what pysteps' importer decodes: importer and options, our variable and units,
# pysteps' units, pysteps' values -> ours (float32, converted exactly as the reader converts), a second file.
NATIVE = {
    "fmi": ("import_fmi_pgm", {"gzipped": True}, "reflectivity", "dBZ", "dBZ", lambda v: v.astype("f4"),
            "201609281800_fmi.radar.composite.lowest_FIN_SUOMI1.pgm.gz"),
    "mch": ("import_mch_gif", {"product": "AQC", "unit": "mm", "accutime": 5}, "rainrate", "mm h-1", "mm",
            lambda v: v.astype("f4") * np.float32(12), "AQC161940000V_00005.801.gif"),
    "bom": ("import_bom_rf3", {}, "rainrate", "mm h-1", "mm", lambda v: v.astype("f4") * np.float32(10),
            "2_20180616_160000.prcp-cscn.nc"),
    "odim": ("import_odim_hdf5", {"qty": "RATE"}, "rainrate", "mm h-1", "mm/h", lambda v: v.astype("f4"),
             "T_PAAH21_C_EUOC_20180824234500.hdf"),
    "mrms": ("import_mrms_grib", {"window_size": 1}, "rainrate", "mm h-1", "mm/h", lambda v: v.astype("f4"), None),
}


@pytest.mark.parametrize("name", sorted(NATIVE))
def test_native_decoders_give_exactly_pysteps_values(shared_data, name):
    from pysteps.io import importers

    function, kwargs, variable, units, their_units, convert, extra = NATIVE[name]
    paths = [shared_data / FILES[name]] + ([(shared_data / FILES[name]).with_name(extra)] if extra else [])
    for path in paths:
        expected, _, meta = getattr(importers, function)(str(path), **kwargs)
        ours = get_reader(name)(path)[variable]
        assert ours.attrs["units"] == units and meta["unit"] == their_units
        np.testing.assert_array_equal(ours.values[0], convert(expected), err_msg=str(path))


@pytest.mark.filterwarnings("ignore:Image.Image.getdata is deprecated")  # in pysteps' colour-table loop
def test_mch_colour_table_products_match_pysteps(tmp_path):
    """RZC/AZC (none in the shared data): a GIF painted with pysteps' colour tables, one unknown colour."""
    from PIL import Image
    from pysteps.io import importers

    rows = np.genfromtxt(Path(importers.__file__).parent / "mch_lut_8bit_Metranet_v103.txt", skip_header=1)
    palette = np.concatenate([rows[:250, 1:4].astype(int), [[1, 2, 3]] * 6]).ravel().tolist()
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (640, 710)).astype("u1"), "P")
    image.putpalette(palette)
    for product, factor in (("RZC", 1), ("AZC", 12)):
        path = tmp_path / f"{product}161932100V_00005.801.gif"
        image.save(path)
        expected, _, _ = importers.import_mch_gif(str(path), product=product, unit="mm/h", accutime=5)
        ours = get_reader("mch")(path)["rainrate"].values[0]
        assert np.isnan(ours).any() and np.isfinite(ours).mean() > 0.5
        np.testing.assert_array_equal(ours, expected.astype("f4") * np.float32(factor))


def test_fmi_plain_pgm_reads_like_the_gzipped_one(read, shared_data, tmp_path):
    import gzip

    plain = tmp_path / Path(FILES["fmi"]).name.removesuffix(".gz")
    plain.write_bytes(gzip.decompress((shared_data / FILES["fmi"]).read_bytes()))
    xr.testing.assert_identical(get_reader("fmi")(plain), read("fmi"))


def test_mrms_png_decoder_equals_ecCodes(shared_data):
    from nowcast.sources.mrms import _eccodes_values, _first_message, _grib_bytes, _png_values

    raw = _grib_bytes(shared_data / FILES["mrms"])
    msg = _first_message(raw)
    ours, eccodes = _png_values(raw, msg), _eccodes_values(msg)
    np.testing.assert_array_equal(ours, eccodes)
    assert np.array_equal(np.signbit(ours), np.signbit(eccodes))


def test_knmi_chunk_inflated_by_zlib_equals_hdf5s_read(shared_data):
    from nowcast.sources.knmi import _inflated

    folder = (shared_data / FILES["knmi"]).parent
    for name in ("RAD_NL25_RAP_5min_201008260000.h5", "RAD_NL25_RAP_5min_201008260735.h5"):
        with h5py.File(folder / name, "r") as f:
            image = f["image1/image_data"]
            ours = _inflated(image)
            np.testing.assert_array_equal(ours, image[...])
            assert ours.dtype == image.dtype


def test_frames_of_one_grid_share_its_coordinates(shared_data):
    from nowcast.sources.common import _grid

    folder = (shared_data / FILES["knmi"]).parent
    first, second = (get_reader("knmi")(folder / name) for name in ("RAD_NL25_RAP_5min_201008260000.h5",
                                                                     "RAD_NL25_RAP_5min_201008260005.h5"))
    assert first.lat.values is second.lat.values and first.time.values[0] != second.time.values[0]
    second.x.attrs["changed"] = second.attrs["changed"] = second.rainrate.attrs["changed"] = True
    assert not any("changed" in attrs for attrs in (first.x.attrs, first.attrs, first.rainrate.attrs))
    assert _grid.cache_info().hits >= 1


def test_mrms_matches_pysteps_block_average_and_documented_corners(read, shared_data):
    from pysteps.io.importers import import_mrms_grib

    coarse = read("mrms", coarsen=4)
    expected, _, _ = import_mrms_grib(str(shared_data / FILES["mrms"]), window_size=4)
    np.testing.assert_allclose(coarse["rainrate"].values[0], expected, rtol=1e-5, atol=1e-4)
    full = read("mrms")
    assert full.sizes["x"] == 7000 and full.sizes["y"] == 3500
    # README: first point 54.995N 230.005E (= 129.995W), last 20.005N 299.995E (= 60.005W).
    assert_near(full, 0, 0, -129.995, 54.995)
    assert_near(full, -1, -1, -60.005, 20.005)
    assert "6378160" in full["crs"].attrs["crs_wkt"]  # GRIB shape of the earth 2 (IAU 1965)


def test_fmi_pgm_corners_and_radar_site_match_the_header(read, shared_data):
    from nowcast.sources.fmi import radar_sites

    ds = read("fmi")
    assert ds["reflectivity"].attrs["units"] == "dBZ"
    # Header: bottom-left 18.600E 57.930N, top-right 34.903E 69.005N (outer corners).
    assert_near(ds, -1, 0, 18.600, 57.930)
    assert_near(ds, 0, -1, 34.903, 69.005)
    lon, lat = radar_sites(shared_data / FILES["fmi"])["VAN"]
    assert_near(ds, *nearest_cell(ds, lon, lat), lon, lat)
    # Vantaa sees rain around it at 16:00: cells near the site are measured (not NaN).
    row, col = nearest_cell(ds, lon, lat)
    assert np.isfinite(ds["reflectivity"].values[0, row - 5:row + 6, col - 5:col + 6]).all()


def test_fmi_reflectivity_converts_with_the_stated_zr_relation(read):
    dbz = read("fmi")["reflectivity"].values[0]
    rate_ds = read("fmi", zr="source")
    rate = rate_ds["rainrate"].values[0]
    assert rate_ds.attrs["zr_relation"] == "Z = 223 R^1.53"
    undetect = dbz == -32.0
    assert undetect.any() and np.all(rate[undetect] == 0)
    np.testing.assert_array_equal(np.isnan(rate), np.isnan(dbz))
    wet = dbz >= 20
    np.testing.assert_allclose(rate[wet], (10 ** (dbz[wet] / 10) / 223.0) ** (1 / 1.53), rtol=1e-5)
    mp = read("fmi", zr="marshall-palmer")
    assert mp.attrs["zr_relation"] == "Z = 200 R^1.6"
    assert not np.allclose(mp["rainrate"].values[0][wet], rate[wet])


def test_fmi_geotiff_corner_and_decoding(read, shared_data):
    import rasterio

    ds = read("fmi-geotiff")
    # README: upper-left corner (-196593.004, 8084432.005) m in EPSG:3067.
    lon, lat = pyproj.Transformer.from_crs("EPSG:3067", "EPSG:4326", always_xy=True).transform(
        -196593.004, 8084432.005)
    assert_near(ds, 0, 0, lon, lat)
    assert crs_of(ds).to_epsg() == 3067
    with rasterio.open(shared_data / FILES["fmi-geotiff"]) as src:
        counts = src.read(1, window=((4000, 4004), (2000, 2004)))
    block = np.where(counts == 255, np.nan, counts / 2.0 - 32.0).mean()
    assert ds["reflectivity"].values[0, 1000, 500] == pytest.approx(block, abs=1e-4, nan_ok=True)


def test_mch_extent_and_the_lv03_origin(read):
    ds = read("mch")
    assert crs_of(ds).to_epsg() == 21781
    to_ll = pyproj.Transformer.from_crs("EPSG:21781", "EPSG:4326", always_xy=True)
    # Documented CCS4 extent x 255..965 km, y -160..480 km (outer edges).
    assert_near(ds, 0, 0, *to_ll.transform(255000, 480000))
    assert_near(ds, -1, -1, *to_ll.transform(965000, -160000))
    # LV03 (600 km, 200 km) is the old Bern observatory, 46.9524N 7.4396E.
    row, col = int(np.abs(ds.y.values - 200000).argmin()), int(np.abs(ds.x.values - 600000).argmin())
    assert_near(ds, row, col, 7.439583, 46.952406)
    assert ds.attrs["accumulation_period"] == "PT5M"


def test_knmi_grid_in_metres_matches_the_file_corners_and_radars(read, shared_data):
    ds = read("knmi")
    with h5py.File(shared_data / FILES["knmi"], "r") as f:
        corners = f["geographic"].attrs["geo_product_corners"].reshape(4, 2)  # LL, UL, UR, LR (lon, lat)
        sites = [tuple(f[g].attrs["radar_location"]) for g in ("radar1", "radar2")]
    for (lon, lat), (row, col) in zip(corners, [(-1, 0), (0, 0), (0, -1), (-1, -1)]):
        assert_near(ds, row, col, float(lon), float(lat))
    for lon, lat in sites:
        assert_near(ds, *nearest_cell(ds, float(lon), float(lat)), float(lon), float(lat))
    assert ds.x.values[0] == 500.0 and ds.y.values[0] == -3650500.0  # metres, not km


def test_bom_grid_is_centred_on_the_radar(read, shared_data):
    import xarray as xr

    ds = read("bom")
    with xr.open_dataset(shared_data / FILES["bom"]) as raw:
        lon0 = float(raw["proj"].attrs["longitude_of_central_meridian"])
        lat0 = float(raw["proj"].attrs["latitude_of_projection_origin"])
    centre = ds.sizes["y"] // 2, ds.sizes["x"] // 2
    assert_near(ds, *centre, lon0, lat0)
    assert ds.attrs["accumulation_period"] == "PT6M" and ds.attrs["time_step"] == "PT6M"
    # The stored x/y are cell edges: centres lie half a cell inside, symmetric about the radar.
    assert float(ds["x"].mean()) == pytest.approx(0.0, abs=1e-6)
    assert float(ds["y"].mean()) == pytest.approx(0.0, abs=1e-6)
    assert float(ds["x"][0]) == -127750.0 and float(ds["y"][0]) == 127750.0


def test_bom_cell_centres_match_pysteps(read, shared_data):
    from pysteps.io.importers import import_bom_rf3

    _, _, meta = import_bom_rf3(str(shared_data / FILES["bom"]))
    ds = read("bom")
    assert float(ds["x"][0]) == pytest.approx(meta["x1"] + meta["xpixelsize"] / 2, abs=1.0)
    assert float(ds["y"][0]) == pytest.approx(meta["y2"] - meta["ypixelsize"] / 2, abs=1.0)


def test_odim_corners_are_the_files_corner_pixels(read, shared_data):
    ds = read("odim")
    with h5py.File(shared_data / FILES["odim"], "r") as f:
        where = f["where"].attrs
        corners = {k: (float(where[f"{k}_lon"]), float(where[f"{k}_lat"])) for k in ("UL", "UR", "LL", "LR")}
    for key, (row, col) in {"UL": (0, 0), "UR": (0, -1), "LL": (-1, 0), "LR": (-1, -1)}.items():
        assert_near(ds, row, col, *corners[key])
    assert ds.x.values[0] == 1000.0 and ds.sizes["x"] == 1900 and ds.sizes["y"] == 2200


@pytest.mark.parametrize("name", sorted(FILES))
def test_detect_by_name_and_by_content(shared_data, tmp_path, name):
    src = shared_data / FILES[name]
    assert detect(src) == name
    renamed = tmp_path / "renamed.bin"
    shutil.copyfile(src, renamed)
    assert detect(renamed) == name
    assert get_source(name).time_of(renamed) == get_source(name).time_of(src)


@pytest.mark.parametrize("kind", ["empty", "truncated", "flipped"])
@pytest.mark.parametrize("name", ["fmi", "mch", "knmi", "bom", "odim", "mrms", "taxibj"])
def test_bad_files_raise_source_error_naming_the_file(shared_data, tmp_path, name, kind):
    bad = make_bad(shared_data / FILES[name], tmp_path / kind / Path(FILES[name]).name, kind)
    with pytest.raises(SourceError) as err:
        get_reader(name)(bad)
    assert str(bad) in str(err.value) and err.value.reason


def test_registry_lists_every_source_with_formats_and_aliases():
    from nowcast.sources import ALIASES

    assert {"fmi", "fmi-geotiff", "mch", "knmi", "bom", "odim", "mrms", "taxibj", "synthetic-radar",
            "synthetic-traffic"} <= set(SOURCES)
    assert get_source("opera").name == "odim" and ALIASES["opera"] == "odim"
    assert all(s.formats and s.description for s in SOURCES.values())
    with pytest.raises(ValueError, match="unknown source"):
        get_source("radolan")


def test_detect_refuses_unknown_content(tmp_path):
    other = tmp_path / "notes.txt"
    other.write_text("not radar data\n")
    with pytest.raises(SourceError, match="not recognised"):
        detect(other)


def test_synthetic_sources_come_through_the_registry():
    radar = get_reader("synthetic-radar")(n_times=3, size=32, seed=1)
    traffic = get_reader("synthetic-traffic")(n_days=1, size=8, seed=1)
    validate(radar)
    validate(traffic)
    assert radar.sizes["time"] == 3 and "crowd_flow" in traffic
