"""Market data: load bars (files, directories, S3), validate/quarantine them, or synthesise a market.

A seeded synthetic market, written to a CSV file, read back (as raw strings) and validated; then one broken
bar, which ``quarantine`` mode sets aside and ``strict`` mode (the default) refuses:

    >>> import tempfile
    >>> from pathlib import Path
    >>> bars = synthetic_market(n_symbols=3, n_bars=300, seed=1)
    >>> bars.shape, list(bars.columns)
    ((900, 7), ['timestamp', 'symbol', 'open', 'high', 'low', 'close', 'volume'])
    >>> tmp = tempfile.TemporaryDirectory()
    >>> raw = load_bars(write_bars(bars, Path(tmp.name) / "bars.csv"))
    >>> report = validate_bars(raw)
    >>> report.ok, report.n_clean, str(report.clean["timestamp"].dtype)
    (True, 900, 'datetime64[ns]')
    >>> raw.loc[5, "high"] = raw.loc[5, "low"] - 1.0
    >>> report = validate_bars(raw, mode="quarantine")
    >>> report.n_clean, report.n_quarantined, report.headline()
    (899, 1, '1 problem: high_below_low (1 row: 6)')
    >>> validate_bars(raw)
    Traceback (most recent call last):
    ...
    tideline.errors.ValidationError: market data failed validation: 1 problem: high_below_low (1 row: 6)
    >>> tmp.cleanup()
"""

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
