"""Market data: load bars (files, directories, S3), validate/quarantine them, or synthesise a market."""

from tideline.data.schema import BAR_COLUMNS, PRICE_COLUMNS
from tideline.data.sources import SourceFile, list_source_files, load_bars, read_bars_bytes, write_bars
from tideline.data.synthetic import synthetic_market
from tideline.data.validation import Problem, ValidationReport, validate_bars

__all__ = [
    "BAR_COLUMNS",
    "PRICE_COLUMNS",
    "Problem",
    "SourceFile",
    "ValidationReport",
    "list_source_files",
    "load_bars",
    "read_bars_bytes",
    "synthetic_market",
    "validate_bars",
    "write_bars",
]
