"""One process-wide lock around every netCDF-C / HDF5 call made through netCDF4-python.

netCDF-C and the HDF5 build bundled in the netCDF4 wheel are not thread-safe:
two threads opening Rainfields files at once crashed the process (SIGSEGV or
SIGBUS in libhdf5/libnetcdf) or made a valid file fail with "NetCDF: Can't
open HDF5 attribute". xarray's netcdf4 backend locks opens and data reads, but
not the attribute and variable metadata reads that follow an open, so every
open, read and write of a NetCDF file in nowcast holds :data:`NETCDF_LOCK`
from open to close, and lazily opened files hand the same lock to xarray
(``lock=NETCDF_LOCK``) for their later data reads.

Why a lock and not the thread-safe h5py route (h5netcdf): reading the 61 BoM
files of the shared data with 2 threads, netCDF4 under this lock decoded 66
files/s and h5netcdf 11 files/s (same values; median of 5 alternating rounds,
2-core machine). Decoding (scaling, flipping, building the dataset) runs
outside the lock, so threads still overlap.

h5py (KNMI, ODIM, TaxiBJ readers) keeps its own global lock and its own HDF5
copy: ``LD_DEBUG=bindings`` shows libnetcdf bound to netCDF4's libhdf5 and
h5py bound to h5py's, so the two libraries share no state and need no common
lock.
"""

from __future__ import annotations

import threading


class _ProcessLock:
    """A re-entrant lock that pickles as "this process's lock" (dask ships lazy datasets between processes).

    Re-entrant because a thread holding it for an open also passes it to
    xarray, which takes it again for the reads inside that open. Hand-written
    since xarray's ``SerializableLock`` is not re-entrant.
    """

    _lock = threading.RLock()

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        return self._lock.acquire(blocking, timeout)

    def release(self) -> None:
        self._lock.release()

    def __enter__(self) -> bool:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()

    def __reduce__(self):
        return (_process_lock, ())


def _process_lock() -> _ProcessLock:
    return NETCDF_LOCK


NETCDF_LOCK = _ProcessLock()

__all__ = ["NETCDF_LOCK"]
