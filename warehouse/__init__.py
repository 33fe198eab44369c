"""The warehouse tables every stage reads: schemas, Parquet I/O, synthetic data, converters."""

from warehouse.schema import SCHEMAS, TABLES, WarehouseSchemaError, validate_table
from warehouse.tables import Warehouse, WarehouseMissingError

__all__ = ["SCHEMAS", "TABLES", "Warehouse", "WarehouseMissingError", "WarehouseSchemaError", "validate_table"]
