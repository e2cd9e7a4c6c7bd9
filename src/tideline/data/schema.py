"""The bar schema every tideline module agrees on."""

from __future__ import annotations

BAR_COLUMNS: list[str] = ["timestamp", "symbol", "open", "high", "low", "close", "volume"]
"""Required columns of a bars frame, in canonical order."""

PRICE_COLUMNS: list[str] = ["open", "high", "low", "close"]
"""Price columns: must be finite and strictly positive."""

NUMERIC_COLUMNS: list[str] = PRICE_COLUMNS + ["volume"]
"""Columns stored as float64 in a clean frame."""

CSV_SUFFIXES: tuple[str, ...] = (".csv", ".csv.gz")
PARQUET_SUFFIXES: tuple[str, ...] = (".parquet", ".pq")
DATA_SUFFIXES: tuple[str, ...] = CSV_SUFFIXES + PARQUET_SUFFIXES
"""File name endings ``load_bars`` reads."""


def file_kind(name: str) -> str | None:
    """``"csv"``, ``"parquet"`` or None for a file name, by its (case-insensitive) ending."""
    lower = name.lower()
    if lower.endswith(CSV_SUFFIXES):
        return "csv"
    if lower.endswith(PARQUET_SUFFIXES):
        return "parquet"
    return None
