"""The Diviner Reduced Data Record (RDR) table format, shared by writer and reader.

An RDR table is comma-separated text: optional leading comment lines (``#``
or a PDS-style preamble), one header line naming the columns, then one row per
footprint.  Date and time are quoted strings; missing numeric values are the
fill values -9999 or -9998.  Files may be gzip-compressed (``.gz``).
"""

from __future__ import annotations

__all__ = ["FILL_VALUES", "RDR_COLUMNS", "REQUIRED_COLUMNS"]

#: Column names in the order Diviner writes them.
RDR_COLUMNS: tuple[str, ...] = (
    "date", "utc", "jdate", "orbit", "sundist", "sunlat", "sunlon", "sclk", "sclat",
    "sclon", "scrad", "scalt", "el_cmd", "az_cmd", "af", "orientlat", "orientlon", "c",
    "det", "vlookx", "vlooky", "vlookz", "radiance", "tb", "clat", "clon", "cemis",
    "csunzen", "csunazi", "cloctime", "qca", "qge", "qmi",
)  # fmt: skip

#: Columns ingest needs (matched by name, wherever they stand in the table).
REQUIRED_COLUMNS: tuple[str, ...] = (
    "jdate", "af", "c", "det", "tb", "clat", "clon", "cemis", "cloctime", "qca", "qge", "qmi",
)  # fmt: skip

#: Numeric fill values marking a missing measurement.
FILL_VALUES: tuple[float, ...] = (-9999.0, -9998.0)
