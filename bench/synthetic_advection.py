"""Cost of one periodic advection step of the synthetic radar generator.

Compares pysteps' semi-Lagrangian step (``map_coordinates_mode="grid-wrap"``)
with the OpenCV remap that ``nowcast.synthetic`` uses, on the generator's
512 x 512 periodic domain, and times a default 36-frame sequence.

Run: ``python bench/synthetic_advection.py``
"""

from __future__ import annotations

import time

import numpy as np

from nowcast.synthetic import _advect_periodic, synthetic_radar


def best_of(func, repeat: int = 10) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        func()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    from pysteps.extrapolation.semilagrangian import extrapolate

    rng = np.random.default_rng(0)
    field = rng.standard_normal((512, 512))
    velocity = np.stack([np.full((512, 512), 2.3), np.full((512, 512), -1.7)])
    pysteps_s = best_of(lambda: extrapolate(field, velocity, 1, map_coordinates_mode="grid-wrap"))
    remap_s = best_of(lambda: _advect_periodic(field, velocity))
    print(f"pysteps extrapolate, 1 step 512x512: {pysteps_s * 1e3:7.1f} ms")
    print(f"cv2.remap bicubic,   1 step 512x512: {remap_s * 1e3:7.1f} ms  ({pysteps_s / remap_s:.0f}x faster)")
    synthetic_radar(2)  # imports and caches
    sequence_s = best_of(lambda: synthetic_radar(36), repeat=3)
    print(f"synthetic_radar(36) at 256x256:      {sequence_s:7.2f} s")


if __name__ == "__main__":
    main()
