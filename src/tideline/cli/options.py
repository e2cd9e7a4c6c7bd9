"""Command-line options shared by several commands (cycle, pipeline, trigger) and their parsing."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from tideline.config import DEFAULT_FAMILIES, MODEL_FAMILIES
from tideline.errors import ConfigError

DataOpt = Annotated[str | None, typer.Option(
    "--data", help="Bars: CSV/Parquet file, a directory of them, or s3://bucket/prefix.")]
SyntheticOpt = Annotated[bool, typer.Option("--synthetic", help="Use a generated synthetic market.")]
SymbolsOpt = Annotated[int, typer.Option(min=1, max=500, help="Synthetic: number of symbols.")]
BarsOpt = Annotated[int, typer.Option(min=300, max=2_000_000, help="Synthetic: bars per symbol.")]
SeedOpt = Annotated[int, typer.Option(help="Seed for the synthetic market (and the models when training).")]
FamiliesOpt = Annotated[str | None, typer.Option(
    help=f"Comma-separated model families, of {', '.join(MODEL_FAMILIES)} (default: training.families, "
         f"{', '.join(DEFAULT_FAMILIES)} unless set).")]
QuarantineOpt = Annotated[bool, typer.Option(
    "--quarantine", help="Drop bad rows (reported) instead of refusing the data.")]
TuneOpt = Annotated[int | None, typer.Option(
    "--tune", min=0, max=1000, metavar="N",
    help="Tune each family with N Optuna trials inside the purged walk-forward folds before its final fit "
         "(default: training.tune_trials; 0: off). Every trial counts in the deflated Sharpe.")]


def parse_families(families: str | None) -> list[str] | None:
    """``"xgboost,torch"`` -> ``["xgboost", "torch"]``; None when not given; unknown names refused."""
    if not families:
        return None
    fams = [f.strip() for f in families.split(",") if f.strip()]
    bad = sorted(set(fams) - set(MODEL_FAMILIES))
    if bad or not fams:
        raise ConfigError(f"unknown model families {bad}; choose from {', '.join(MODEL_FAMILIES)}")
    return fams


def with_tuning(settings: Any, tune: int | None) -> Any:
    """``settings`` with ``training.tune_trials`` set to ``tune`` (unchanged when ``--tune`` was not given)."""
    if tune is None:
        return settings
    return settings.model_copy(update={"training": settings.training.model_copy(update={"tune_trials": tune})})


def synthetic_spec(synthetic: bool, symbols: int, bars: int, seed: int) -> dict[str, Any] | None:
    """The synthetic market's arguments when ``--synthetic`` was given."""
    return {"n_symbols": symbols, "n_bars": bars, "seed": seed} if synthetic else None


def one_source(data: str | None, synthetic: bool, symbols: int, bars: int, seed: int
               ) -> tuple[str | None, dict[str, Any] | None]:
    """Exactly one of ``--data`` or ``--synthetic``: (source, synthetic arguments)."""
    if bool(data) == synthetic:
        raise ConfigError("give exactly one of --data PATH|s3://bucket/prefix or --synthetic")
    return data, synthetic_spec(synthetic, symbols, bars, seed)
