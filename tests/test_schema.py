"""The data model: construction for every projection family and the validator's messages."""

import numpy as np
import pandas as pd
import pyproj
import pytest

from nowcast.grids import Grid, radar_grid
from nowcast.schema import SchemaError, crs_of, iso_duration, make_dataset, make_forecast, validate

PROJECTIONS = {
    "polar_stereographic": "+proj=stere +lat_0=90 +lat_ts=60 +lon_0=25 +a=6371288 +x_0=380886.31 +y_0=3395677.92",
    "laea": "+proj=laea +lat_0=55 +lon_0=10 +x_0=1950000 +y_0=-2100000 +ellps=WGS84",
    "albers": "+proj=aea +lat_1=-18 +lat_2=-36 +lat_0=-37.852 +lon_0=144.752 +ellps=WGS84",
    "oblique_mercator": "EPSG:21781",
    "utm": "EPSG:3067",
    "latlon": "EPSG:4326",
}


def _dataset(crs="EPSG:3067", n=4, variable="rainrate"):
    crs = pyproj.CRS.from_user_input(crs)
    lon, lat = 25.0, 60.0
    res = 0.01 if crs.is_geographic else 1000.0
    grid = Grid.centred_on(crs, lon, lat, (6, 5), res)
    shape = (n, 2, 6, 5) if variable == "crowd_flow" else (n, 6, 5)
    data = np.random.default_rng(0).gamma(1.0, 1.0, shape).astype("f4")
    return make_dataset(data, times=pd.date_range("2024-06-01", periods=n, freq="5min"), x=grid.x, y=grid.y,
                        crs=crs, variable=variable, source="test", time_step="5min")


@pytest.mark.parametrize("name", PROJECTIONS)
def test_every_projection_round_trips_through_the_crs_variable(name):
    ds = validate(_dataset(PROJECTIONS[name]))
    original = pyproj.CRS.from_user_input(PROJECTIONS[name])
    assert crs_of(ds).equals(original, ignore_axis_order=True)
    assert "crs_wkt" in ds["crs"].attrs and ds["rainrate"].attrs["grid_mapping"] == "crs"
    assert ds["x"].attrs["units"] == ("degrees_east" if original.is_geographic else "m")
    # 2-D lat/lon put the centre cell near the point the grid was built around.
    assert abs(float(ds["lat"][3, 2]) - 60.0) < 0.02 and abs(float(ds["lon"][3, 2]) - 25.0) < 0.05


def test_polar_stereographic_gets_the_origin_cf_requires():
    attrs = _dataset(PROJECTIONS["polar_stereographic"])["crs"].attrs
    assert attrs["grid_mapping_name"] == "polar_stereographic"
    assert attrs["latitude_of_projection_origin"] == 90.0


def test_validator_names_the_missing_crs():
    ds = _dataset().drop_vars("crs")
    with pytest.raises(SchemaError, match="no 'crs' grid-mapping variable"):
        validate(ds)


def test_validator_names_the_variable_without_grid_mapping():
    ds = _dataset()
    del ds["rainrate"].attrs["grid_mapping"]
    with pytest.raises(SchemaError, match="variable 'rainrate' has no grid_mapping"):
        validate(ds)


def test_validator_rejects_time_going_backwards():
    ds = _dataset()
    ds = ds.assign_coords(time=ds["time"].values[::-1])
    with pytest.raises(SchemaError, match="time is not strictly increasing"):
        validate(ds)


def test_validator_rejects_wrong_units_and_non_datetime_time():
    ds = _dataset()
    ds["rainrate"].attrs["units"] = "mm/h"
    with pytest.raises(SchemaError, match="units 'mm/h', expected 'mm h-1'"):
        validate(ds)
    ds = _dataset().assign_coords(time=np.arange(4))
    with pytest.raises(SchemaError, match="expected datetime64"):
        validate(ds)


def test_traffic_needs_the_flow_dim():
    ds = validate(_dataset(variable="crowd_flow"))
    assert list(ds["flow"].values) == ["inflow", "outflow"]
    with pytest.raises(SchemaError, match="no 'flow' dim"):
        validate(ds.isel(flow=0))


def test_forecast_coordinates_are_consistent():
    obs = _dataset()
    fc = make_forecast(np.zeros((3, 6, 5), "f4"), like=obs, reference_time=obs["time"].values[-1], source="p")
    assert fc["forecast_period"].values.astype("timedelta64[m]").astype(int).tolist() == [5, 10, 15]
    assert (fc["time"].values[0] - obs["time"].values[-1]) == np.timedelta64(5, "m")
    with pytest.raises(SchemaError, match="observations must not carry"):
        validate(fc, forecast=False)
    broken = fc.assign_coords(forecast_period=("time", fc["forecast_period"].values * 2))
    with pytest.raises(SchemaError, match="forecast_period is not time - forecast_reference_time"):
        validate(broken)


def test_iso_durations():
    assert iso_duration("5min") == "PT5M"
    assert iso_duration("30min") == "PT30M"
    assert iso_duration("1D") == "P1D"
    assert iso_duration(pd.Timedelta(hours=1, seconds=30)) == "PT1H30S"


def test_radar_grid_is_centred_on_vantaa():
    grid = radar_grid(64)
    lon, lat = pyproj.Transformer.from_crs(grid.crs, "EPSG:4326", always_xy=True).transform(
        grid.x.mean(), grid.y.mean())
    assert abs(lon - 24.869) < 0.01 and abs(lat - 60.2706) < 0.01
    assert grid.resolution == (1000.0, 1000.0) and grid.y[0] > grid.y[-1]
