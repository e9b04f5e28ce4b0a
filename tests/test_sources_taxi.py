"""ST-ResNet-style crowd-flow files: slot decoding, time zones, de-duplication, gaps, channels, georeference.

The real TaxiNYC 2010-2014 files are ingested whole (they are small); the
TaxiBJ / BikeNYC slot conventions are checked on small files written here in
the same layout (the TaxiBJ tensors themselves are not obtainable offline).
"""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pyproj
import pytest

from nowcast import archive
from nowcast.grids import Grid, beijing_grid
from nowcast.ingest import ingest
from nowcast.schema import validate
from nowcast.sources import SourceError
from nowcast.sources.taxibj import nyc_grid, open_taxibj

NYC_YEARS = range(2010, 2015)


def nyc_file(shared_data: Path, year: int) -> Path:
    return shared_data / "taxinyc" / f"NYC{year % 100:02d}_Taxi_M16x8_T60_InOut.h5"


def write_h5(path: Path, dates: list[str], data: np.ndarray) -> Path:
    with h5py.File(path, "w") as f:
        f["date"] = np.array([d.encode() for d in dates])
        f["data"] = data
    return path


@pytest.fixture(scope="module")
def taxinyc_archive(shared_data, tmp_path_factory):
    store = tmp_path_factory.mktemp("taxinyc") / "taxinyc.zarr"
    report = ingest("taxibj", [shared_data / "taxinyc"], store,
                    holidays=shared_data / "taxinyc" / "NY_Holiday.txt")
    assert report.ok and len(report.ingested) == 5
    return store, report


@pytest.mark.realdata
def test_taxinyc_2010_2014_ingests_sorted_unique_with_september_gaps(taxinyc_archive, shared_data):
    store, report = taxinyc_archive
    ds = archive.open_archive(store)
    times = pd.DatetimeIndex(ds["time"].values)
    assert times.is_monotonic_increasing and times.is_unique
    assert report.frames_added == times.size
    assert ds.attrs["time_step"] == "PT1H" and ds.attrs["timezone"] == "America/New_York"
    local = times.tz_localize("UTC").tz_convert("America/New_York")
    for year in NYC_YEARS:
        september = (local >= pd.Timestamp(f"{year}-09-02", tz="America/New_York")) & \
                    (local < pd.Timestamp(f"{year}-10-01", tz="America/New_York"))
        assert not september.any(), f"{year}: slots inside the 2-30 September gap"
        # The gap stays a gap: one step of about four weeks, no filled frames.
        steps = np.diff(times[local.year == year].values)
        assert steps.max() >= np.timedelta64(29 * 24, "h")
    # No frame is a filler: every archived frame has trips somewhere.
    flows = ds["crowd_flow"].values
    assert np.isfinite(flows).all() and (flows.reshape(times.size, -1).sum(axis=1) > 0).all()
    # Duplicated slots were collapsed, not dropped: per year, one frame per distinct usable slot.
    with h5py.File(nyc_file(shared_data, 2013), "r") as f:
        distinct = len(set(f["date"][...]))
    assert distinct - 30 <= int((local.year == 2013).sum()) <= distinct


@pytest.mark.realdata
def test_taxinyc_channels_times_and_holidays(taxinyc_archive, shared_data):
    store, _ = taxinyc_archive
    ds = archive.open_archive(store)
    with h5py.File(nyc_file(shared_data, 2012), "r") as f:
        dates = [d.decode() for d in f["date"][...]]
        raw = f["data"][dates.index("2012061508")]
    # 08:00 EDT = 12:00 UTC; channel 0 ("new-flow", trips starting) is outflow.
    frame = ds["crowd_flow"].sel(time="2012-06-15T12:00").values
    np.testing.assert_array_equal(frame[1], raw[0])
    np.testing.assert_array_equal(frame[0], raw[1])
    assert list(ds["flow"].values) == ["inflow", "outflow"]
    # The spring-forward hour does not exist in local time; the fall-back hour is kept once.
    local = pd.DatetimeIndex(ds["time"].values).tz_localize("UTC").tz_convert("America/New_York")
    assert not ((local.date == pd.Timestamp("2012-03-11").date()) & (local.hour == 2)).any()
    assert ((local.date == pd.Timestamp("2012-11-04").date()) & (local.hour == 1)).sum() == 1
    listed = (shared_data / "taxinyc" / "NY_Holiday.txt").read_text().split()
    holidays = ds.attrs["holidays"].split(",")
    assert len(holidays) == len(set(listed)) and "2014-07-04" in holidays and "2010-01-01" in holidays


@pytest.mark.realdata
def test_taxinyc_georeference_covers_manhattan(shared_data):
    ds = open_taxibj(nyc_file(shared_data, 2014))
    validate(ds)
    assert ds.sizes["y"] == 16 and ds.sizes["x"] == 8
    assert ds["crs"].attrs["projected_crs_name"] == "WGS 84 / UTM zone 18N"
    left, bottom, right, top = Grid.of(ds).bounds
    to_utm = pyproj.Transformer.from_crs("EPSG:4326", "EPSG:32618", always_xy=True)
    # Manhattan's ends, the Battery (40.7005N 74.0170W) and Inwood Hill (40.8720N 73.9260W), fall
    # inside; rows run north to south.
    for lon, lat in ((-74.0170, 40.7005), (-73.9260, 40.8720)):
        x, y = to_utm.transform(lon, lat)
        assert left < x < right and bottom < y < top
    assert ds["lat"].values[0].mean() > ds["lat"].values[-1].mean()
    assert nyc_grid().same_as(nyc_grid((16, 8))) is None


def test_taxibj_slots_are_decoded_sorted_deduplicated_and_gaps_kept(tmp_path):
    # 1-based 30-min slots in Beijing time, unsorted, one exact duplicate, one slot
    # duplicated by an all-zero placeholder, one missing slot (a gap).
    rng = np.random.default_rng(0)
    dates = ["2015110103", "2015110101", "2015110102", "2015110101", "2015110105", "2015110103", "2015110148"]
    data = rng.integers(1, 50, (len(dates), 2, 32, 32)).astype("f8")
    data[3] = data[1]  # exact copy of slot 01
    data[5] = 0.0  # placeholder for slot 03
    ds = open_taxibj(write_h5(tmp_path / "BJ15_M32x32_T30_InOut.h5", dates, data))
    validate(ds)
    local = pd.DatetimeIndex(ds["time"].values).tz_localize("UTC").tz_convert("Asia/Shanghai").tz_localize(None)
    assert list(local) == list(pd.to_datetime(["2015-11-01 00:00", "2015-11-01 00:30", "2015-11-01 01:00",
                                               "2015-11-01 02:00", "2015-11-01 23:30"]))
    assert pd.Timestamp(ds["time"].values[0]) == pd.Timestamp("2015-10-31 16:00")  # UTC
    np.testing.assert_array_equal(ds["crowd_flow"].values[2], data[0])  # slot 03: the non-zero frame
    np.testing.assert_array_equal(ds["crowd_flow"].values[0, 0], data[1, 0])  # TaxiBJ channel 0 = inflow
    assert "1 exact copies" in ds.attrs["cleaning"]
    assert ds.attrs["time_step"] == "PT30M"
    assert beijing_grid().same_as(Grid.of(ds)) is None


def test_bikenyc_one_based_hour_slots_and_bad_slots(tmp_path):
    data = np.ones((3, 2, 16, 8))
    ds = open_taxibj(write_h5(tmp_path / "NYC14_M16x8_T60_NewEnd.h5", ["2014040101", "2014040102", "2014040124"],
                              data))
    local = pd.DatetimeIndex(ds["time"].values).tz_localize("UTC").tz_convert("America/New_York")
    assert list(local.hour) == [0, 1, 23]
    with pytest.raises(SourceError, match="slot numbers"):
        open_taxibj(write_h5(tmp_path / "NYC14_M16x8_T60_x.h5", ["2014040101", "2014040125"], data[:2]))
    with pytest.raises(SourceError, match="shape"):
        open_taxibj(write_h5(tmp_path / "NYC13_M16x8_T60_y.h5", ["2014040101"], np.ones((1, 3, 16, 8))))
