"""Speed of the verification pieces behind docstring claims, against the obvious alternative.

* Power spectrum: ``nowcast.verification.rapsd`` (one FFT batch, one
  ``bincount`` per field) against ``pysteps.utils.spectral.rapsd`` (a mask per
  ring) on square fields of the FMI composite's width.
* Map drawing: a 1226 x 760 composite on its own projection with
  ``imshow`` (what ``nowcast.maps`` does) against ``pcolormesh``, both with
  coastlines, saved to PNG.

Run: ``python bench/verification.py [--fields 4] [--size 760]``; prints seconds
and the ratio to the alternative measured in the same process.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

import nowcast  # noqa: F401  (offline defaults)


def best_of(fn, repeat: int = 3) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def spectra(n_fields: int, size: int) -> None:
    from pysteps.utils.spectral import rapsd as pysteps_rapsd

    from nowcast.verification import rapsd

    rng = np.random.default_rng(0)
    fields = rng.gamma(0.5, 2.0, (n_fields, size, size))
    ours = best_of(lambda: rapsd(fields))
    theirs = best_of(lambda: [pysteps_rapsd(f, fft_method=np.fft) for f in fields], repeat=1)
    np.testing.assert_allclose(rapsd(fields[:1])[0][0], pysteps_rapsd(fields[0], fft_method=np.fft)[1:], rtol=1e-9)
    print(f"power spectrum, {n_fields} fields of {size} x {size}: nowcast {ours:.3f} s, pysteps {theirs:.3f} s "
          f"({theirs / ours:.1f}x)")


def maps() -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from nowcast.grids import FMI_COMPOSITE_CRS
    from nowcast.maps import _add_geography, map_projection
    from nowcast.products.palette import RAIN_RATE
    from nowcast.schema import make_dataset

    x = 0.005 + (np.arange(760) + 0.5) * 999.674
    y = 1225544.659 - (np.arange(1226) + 0.5) * 999.629
    rain = np.random.default_rng(1).gamma(0.3, 3.0, (1, 1226, 760)).astype("f4")
    ds = make_dataset(rain, times=["2016-09-28 16:00"], x=x, y=y, crs=FMI_COMPOSITE_CRS, source="bench",
                      time_step="5min")
    projection = map_projection(ds)
    cmap, norm = RAIN_RATE.cmap_norm()
    edges_x = np.concatenate([x - 499.837, x[-1:] + 499.837])
    edges_y = np.concatenate([y + 499.815, y[-1:] - 499.815])

    def draw(method: str) -> None:
        fig = plt.figure(figsize=(4, 6))
        ax = fig.add_subplot(projection=projection)
        if method == "imshow":
            ax.imshow(rain[0], extent=(edges_x[0], edges_x[-1], edges_y[-1], edges_y[0]), transform=projection,
                      origin="upper", interpolation="nearest", cmap=cmap, norm=norm)
        else:
            ax.pcolormesh(edges_x, edges_y, rain[0], transform=projection, cmap=cmap, norm=norm)
        _add_geography(ax)
        with tempfile.TemporaryDirectory() as tmp:
            fig.savefig(Path(tmp) / "map.png", dpi=110)
        plt.close(fig)

    ours = best_of(lambda: draw("imshow"))
    theirs = best_of(lambda: draw("pcolormesh"))
    print(f"map of a 1226 x 760 composite: imshow {ours:.2f} s, pcolormesh {theirs:.2f} s ({theirs / ours:.1f}x)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fields", type=int, default=4)
    parser.add_argument("--size", type=int, default=760)
    args = parser.parse_args()
    spectra(args.fields, args.size)
    maps()
