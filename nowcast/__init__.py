"""nowcast: radar precipitation and crowd-flow nowcasting with georeferenced products.

Modules, in the order data flows through them: ``schema`` (the data model),
``grids``, ``sources`` (readers) and ``synthetic``, ``archive`` (Zarr),
``windows`` (torch datasets), ``models``, ``training`` / ``forecast`` and
``baselines``, ``products`` and ``verification``, ``maps``.
"""

from nowcast.runtime import configure_offline

configure_offline()

from nowcast.schema import SchemaError, make_dataset, validate  # noqa: E402

__all__ = ["SchemaError", "make_dataset", "validate", "configure_offline"]
__version__ = "0.1.0"
