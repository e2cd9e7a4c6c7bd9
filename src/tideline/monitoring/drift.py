"""Drift: are the features (and predictions) the production model sees now still like its training data?

Two checks:

* **Distribution drift** of a current window against the ``reference.parquet`` sample stored with every
  version (:func:`check_drift`, :func:`drift_report_html`, :func:`run_drift_check`). Statistics are
  Evidently's stat tests, called directly per column on row samples of both sides (fast: no report
  machinery); the Evidently HTML report (one ``Report`` with a ``ValueDrift`` per column and a
  ``DriftedColumnsCount``) is built only when asked for, from the same rows, methods and thresholds, so
  its figures are the ones returned.
* **Change detection on live outcomes** (:class:`PerformanceMonitor`): river's ADWIN and Page-Hinkley
  detectors on a stream of realized errors or strategy returns of the live model.

Why distances with thresholds by default: with tens of thousands of rows a p-value test calls every
negligible difference a drift (markets always differ a little), which means constant false alarms. The
normed Wasserstein distance (``W1 / std(reference)``, in units of the reference's standard deviation) says
*how much* a feature moved; 0.1 is a tenth of a standard deviation. On small samples distances are noisy,
so ``auto`` switches to the KS test there (its p-value accounts for the sample size).
"""

from __future__ import annotations

import collections
import io
import json
import logging
import math
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import pandas as pd

from tideline.clock import aware, utcnow
from tideline.config import DRIFT_DISTANCE_METHODS, DRIFT_PVALUE_METHODS, DriftConfig, FeatureConfig
from tideline.errors import ConfigError, DataError, ModelError, RegistryError

if TYPE_CHECKING:
    from tideline.registry import Registry

log = logging.getLogger(__name__)

REFERENCE_ATTACHMENT = "reference.parquet"  # written by tideline.training.cycle.register_candidate
LATEST_ATTACHMENT = "drift-latest.json"
META_COLUMNS: tuple[str, ...] = ("timestamp", "symbol")
DEFAULT_PREDICTION_COLUMN = "prediction"


# ---- results -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ColumnDrift:
    """Drift of one column: ``drifted`` is ``score >= threshold`` for a distance, ``score <= threshold``
    for a p-value test (``kind`` says which)."""

    column: str
    method: str
    kind: str  # "distance" | "p_value"
    score: float
    threshold: float
    drifted: bool

    @property
    def severity(self) -> float:
        """How far past its threshold (>= 1 means drifted), comparable across methods."""
        if self.kind == "distance":
            return self.score / self.threshold if self.threshold > 0 else math.inf
        p = max(self.score, 1e-300)
        return math.log(p) / math.log(self.threshold)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready column result, with its ``severity`` rounded to 4 places."""
        return {**asdict(self), "severity": round(self.severity, 4)}


@dataclass
class DriftResult:
    """Per-column drift of a current window against a reference, and the dataset verdict."""

    columns: list[ColumnDrift]
    drift_share_threshold: float
    prediction: ColumnDrift | None
    n_reference: int
    n_current: int
    n_reference_sampled: int
    n_current_sampled: int
    seconds: float
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def n_drifted(self) -> int:
        """How many tested columns drifted."""
        return sum(c.drifted for c in self.columns)

    @property
    def drifted_share(self) -> float:
        """The share of tested columns that drifted (0.0 when none was tested)."""
        return self.n_drifted / len(self.columns) if self.columns else 0.0

    @property
    def dataset_drifted(self) -> bool:
        """True when columns were tested and ``drifted_share >= drift_share_threshold``."""
        return bool(self.columns) and self.drifted_share >= self.drift_share_threshold

    @property
    def prediction_drifted(self) -> bool | None:
        """Whether the prediction column drifted; None when it was not tested."""
        return None if self.prediction is None else self.prediction.drifted

    def drifted_columns(self) -> list[ColumnDrift]:
        """Drifted columns, the most severe first."""
        return sorted((c for c in self.columns if c.drifted), key=lambda c: -c.severity)

    def top(self, k: int = 10) -> list[ColumnDrift]:
        """The ``k`` columns furthest past (or nearest to) their threshold."""
        return sorted(self.columns, key=lambda c: -c.severity)[:k]

    def column(self, name: str) -> ColumnDrift:
        """The result of column ``name``; ``KeyError`` when it was not tested."""
        for c in self.columns:
            if c.column == name:
                return c
        raise KeyError(name)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready result: the verdict, counts, the prediction drift, every column, plus ``extra``'s keys."""
        return {
            "dataset_drifted": self.dataset_drifted,
            "drifted_share": round(self.drifted_share, 6),
            "n_drifted": self.n_drifted,
            "n_columns": len(self.columns),
            "drift_share_threshold": self.drift_share_threshold,
            "prediction_drift": self.prediction.to_dict() if self.prediction else None,
            "n_reference": self.n_reference,
            "n_current": self.n_current,
            "n_reference_sampled": self.n_reference_sampled,
            "n_current_sampled": self.n_current_sampled,
            "seconds": round(self.seconds, 4),
            "columns": [c.to_dict() for c in self.columns],
            **self.extra,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DriftResult:
        """Read back ``to_dict`` output (keys it does not know go to ``extra``); ``KeyError``/``ValueError`` for
        a document that lacks or mistypes a field.
        """
        def col(x: dict[str, Any]) -> ColumnDrift:
            return ColumnDrift(x["column"], x["method"], x["kind"], float(x["score"]), float(x["threshold"]),
                               bool(x["drifted"]))

        known = {"dataset_drifted", "drifted_share", "n_drifted", "n_columns", "drift_share_threshold",
                 "prediction_drift", "n_reference", "n_current", "n_reference_sampled", "n_current_sampled",
                 "seconds", "columns"}
        return cls([col(c) for c in d["columns"]], float(d["drift_share_threshold"]),
                   col(d["prediction_drift"]) if d.get("prediction_drift") else None,
                   int(d["n_reference"]), int(d["n_current"]), int(d["n_reference_sampled"]),
                   int(d["n_current_sampled"]), float(d["seconds"]),
                   {k: v for k, v in d.items() if k not in known})

    def summary(self, top: int = 5) -> list[str]:
        """Human-readable lines."""
        verdict = "DRIFTED" if self.dataset_drifted else "no dataset drift"
        lines = [
            f"{verdict}: {self.n_drifted}/{len(self.columns)} columns drifted "
            f"({self.drifted_share:.0%}; dataset threshold {self.drift_share_threshold:.0%})",
            f"reference {self.n_reference} rows (sampled {self.n_reference_sampled}), current {self.n_current} "
            f"rows (sampled {self.n_current_sampled}), {self.seconds:.2f} s",
        ]
        for c in self.drifted_columns()[:top]:
            lines.append(f"  {c.column}: {c.method} {c.score:.4g} (threshold {c.threshold:g})")
        if self.prediction is not None:
            p = self.prediction
            lines.append(f"prediction drift: {'yes' if p.drifted else 'no'} ({p.method} {p.score:.4g}, "
                         f"threshold {p.threshold:g})")
        return lines


# ---- the statistics ----------------------------------------------------------------------------------
def _kind(method: str) -> str:
    if method in DRIFT_DISTANCE_METHODS:
        return "distance"
    if method in DRIFT_PVALUE_METHODS:
        return "p_value"
    raise ConfigError(f"unknown drift method {method!r}")


def choose_method(reference: np.ndarray, current: np.ndarray, cfg: DriftConfig) -> str:
    """The stat test for one column (``cfg.method`` unless it is ``auto``); inputs are NaN-free."""
    if cfg.method != "auto":
        return cfg.method
    if min(len(reference), len(current)) < cfg.min_rows_for_distance:
        return "ks"
    n_unique = len(np.unique(np.concatenate([reference[:5000], current[:5000]])))
    if n_unique <= cfg.discrete_max_unique and len(np.unique(np.concatenate([reference, current]))) <= \
            cfg.discrete_max_unique:
        return "jensenshannon"
    return "wasserstein"


def _threshold(method: str, cfg: DriftConfig) -> float:
    if method in cfg.thresholds:
        return float(cfg.thresholds[method])
    return float(DriftConfig().thresholds[method])


def _stattest(method: str) -> Any:
    from evidently.legacy.calculations.stattests.registry import get_registered_stattest
    from evidently.legacy.core import ColumnType

    return get_registered_stattest(method, ColumnType.Numerical)


def _column_drift(name: str, ref: pd.Series, cur: pd.Series, cfg: DriftConfig) -> ColumnDrift:
    from evidently.legacy.core import ColumnType

    r = pd.to_numeric(ref, errors="coerce").astype("float64").dropna()
    c = pd.to_numeric(cur, errors="coerce").astype("float64").dropna()
    r = r[np.isfinite(r.to_numpy())].reset_index(drop=True)
    c = c[np.isfinite(c.to_numpy())].reset_index(drop=True)
    if len(r) < 2 or len(c) < 2:
        side = "reference" if len(r) < 2 else "current"
        raise DataError(f"column {name!r} has fewer than 2 finite values in the {side} data")
    method = choose_method(r.to_numpy(), c.to_numpy(), cfg)
    threshold = _threshold(method, cfg)
    res = _stattest(method)(r, c, ColumnType.Numerical, threshold)
    return ColumnDrift(name, method, _kind(method), float(res.drift_score), threshold, bool(res.drifted))


def _sample(df: pd.DataFrame, n: int, seed: int) -> pd.DataFrame:
    if len(df) <= n:
        return df.reset_index(drop=True)
    rng = np.random.default_rng(seed)
    pick = np.sort(rng.choice(len(df), size=n, replace=False))
    return df.iloc[pick].reset_index(drop=True)


def drift_columns(reference: pd.DataFrame, current: pd.DataFrame, columns: Sequence[str] | None,
                  cfg: DriftConfig, prediction_column: str | None = DEFAULT_PREDICTION_COLUMN) -> list[str]:
    """The columns to test: ``columns`` (all must exist on both sides) or every numeric column both frames
    share, minus timestamp/symbol, the prediction column and ``cfg.ignore_columns``."""
    if columns is not None:
        cols = list(columns)
        for side, df in (("reference", reference), ("current", current)):
            missing = [c for c in cols if c not in df.columns]
            if missing:
                raise DataError(f"{len(missing)} drift column(s) missing from the {side} data, e.g. {missing[0]!r}")
    else:
        skip = {*META_COLUMNS, *cfg.ignore_columns}
        if prediction_column:
            skip.add(prediction_column)
        cur_cols = set(current.columns)
        cols = [c for c in reference.columns if c not in skip and c in cur_cols
                and pd.api.types.is_numeric_dtype(reference[c]) and pd.api.types.is_numeric_dtype(current[c])]
        missing = [c for c in reference.columns if c not in skip and c not in cur_cols]
        if missing:
            raise DataError(f"{len(missing)} reference column(s) missing from the current data, e.g. {missing[0]!r}",
                            hint="compute the current window with the version's feature config")
    if not cols:
        raise DataError("no columns to test for drift")
    return cols


def _check_sampled(ref: pd.DataFrame, cur: pd.DataFrame, cols: list[str], cfg: DriftConfig,
                   prediction_column: str | None, n_ref: int, n_cur: int, t0: float) -> DriftResult:
    results = [_column_drift(c, ref[c], cur[c], cfg) for c in cols]
    pred = None
    if cfg.prediction_drift and prediction_column and prediction_column in ref and prediction_column in cur:
        pred = _column_drift(prediction_column, ref[prediction_column], cur[prediction_column], cfg)
    return DriftResult(results, cfg.drift_share_threshold, pred, n_ref, n_cur, len(ref), len(cur),
                       time.perf_counter() - t0)


def check_drift(reference: pd.DataFrame, current: pd.DataFrame, *, columns: list[str] | None = None,
                cfg: DriftConfig | None = None, prediction_column: str | None = DEFAULT_PREDICTION_COLUMN
                ) -> DriftResult:
    """Per-column drift of ``current`` against ``reference`` (both sampled to ``cfg.sample_size`` rows).

    Prediction drift is tested too when both frames have ``prediction_column`` (and
    ``cfg.prediction_drift``); it does not count towards the drifted share.
    """
    cfg = cfg or DriftConfig()
    t0 = time.perf_counter()
    cols = drift_columns(reference, current, columns, cfg, prediction_column)
    keep = [*cols, *([prediction_column] if prediction_column and prediction_column in reference
                     and prediction_column in current and prediction_column not in cols else [])]
    ref = _sample(reference[keep], cfg.sample_size, cfg.seed)
    cur = _sample(current[keep], cfg.sample_size, cfg.seed + 1)
    res = _check_sampled(ref, cur, cols, cfg, prediction_column, len(reference), len(current), t0)
    log.info("drift: %d/%d columns drifted in %.2f s", res.n_drifted, len(cols), res.seconds)
    return res


def build_report(result: DriftResult, drift_share: float) -> Any:
    """An Evidently ``Report``: one ``ValueDrift`` per column (its method and threshold from ``result``),
    the prediction's, and a ``DriftedColumnsCount`` over the feature columns."""
    from evidently import Report
    from evidently.metrics import DriftedColumnsCount, ValueDrift

    metrics: list[Any] = [ValueDrift(column=c.column, method=c.method, threshold=c.threshold) for c in result.columns]
    if result.prediction is not None:
        p = result.prediction
        metrics.insert(0, ValueDrift(column=p.column, method=p.method, threshold=p.threshold))
    metrics.append(DriftedColumnsCount(
        columns=[c.column for c in result.columns], drift_share=drift_share,
        per_column_method={c.column: c.method for c in result.columns},
        per_column_threshold={c.column: c.threshold for c in result.columns},
    ))
    return Report(metrics)


def drift_report_html(reference: pd.DataFrame, current: pd.DataFrame, path: str | Path, *,
                      columns: list[str] | None = None, cfg: DriftConfig | None = None,
                      prediction_column: str | None = DEFAULT_PREDICTION_COLUMN) -> DriftResult:
    """Write Evidently's HTML drift report to ``path`` and return the figures it shows.

    Both sides are sampled to ``cfg.report_sample_size`` (or ``sample_size``) rows; the returned result
    is computed on exactly those rows with the methods and thresholds the report uses.
    """
    from evidently import DataDefinition, Dataset

    cfg = cfg or DriftConfig()
    t0 = time.perf_counter()
    result, ref, cur = _report_sample(reference, current, columns, cfg, prediction_column)
    definition = DataDefinition(numerical_columns=list(ref.columns))
    snapshot = build_report(result, cfg.drift_share_threshold).run(
        Dataset.from_pandas(cur, data_definition=definition), Dataset.from_pandas(ref, data_definition=definition))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    snapshot.save_html(str(path))
    result.seconds = time.perf_counter() - t0
    result.extra["report_values"] = report_values(snapshot)
    return result


def report_figures(reference: pd.DataFrame, current: pd.DataFrame, *, columns: list[str] | None = None,
                   cfg: DriftConfig | None = None, prediction_column: str | None = DEFAULT_PREDICTION_COLUMN
                   ) -> DriftResult:
    """The figures ``drift_report_html`` would show (the same rows, methods and thresholds), without building
    Evidently's report: for a check whose HTML nobody reads (a replay's loop)."""
    t0 = time.perf_counter()
    result, _, _ = _report_sample(reference, current, columns, cfg or DriftConfig(), prediction_column)
    result.seconds = time.perf_counter() - t0
    return result


def _report_sample(reference: pd.DataFrame, current: pd.DataFrame, columns: list[str] | None, cfg: DriftConfig,
                   prediction_column: str | None) -> tuple[DriftResult, pd.DataFrame, pd.DataFrame]:
    """Both sides sampled to ``cfg.report_sample_size`` (or ``sample_size``) rows, and the figures on them."""
    t0 = time.perf_counter()
    size = min(cfg.sample_size, cfg.report_sample_size or cfg.sample_size)
    cols = drift_columns(reference, current, columns, cfg, prediction_column)
    has_pred = bool(cfg.prediction_drift and prediction_column and prediction_column in reference
                    and prediction_column in current and prediction_column not in cols)
    keep = [*cols, *([prediction_column] if has_pred else [])]
    ref = _sample(reference[keep], size, cfg.seed).astype("float64")
    cur = _sample(current[keep], size, cfg.seed + 1).astype("float64")
    result = _check_sampled(ref, cur, cols, cfg, prediction_column if has_pred else None,
                            len(reference), len(current), t0)
    return result, ref, cur


def report_values(snapshot: Any) -> dict[str, float]:
    """Each ``ValueDrift`` column's score as the Evidently snapshot holds it (for cross-checking)."""
    out: dict[str, float] = {}
    for m in snapshot.dict().get("metrics", []):
        conf = m.get("config", {})
        if conf.get("type", "").endswith(":ValueDrift"):
            out[str(conf["column"])] = float(m["value"])
    return out


# ---- the current window -------------------------------------------------------------------------------
class VersionLike(Protocol):
    """What the current window needs of a registered version: its feature config and feature names."""
    feature_config: dict[str, Any]
    features: list[str]


def current_window_from_bars(bars: pd.DataFrame, version: VersionLike, *, model_dir: Path | None = None,
                             max_rows: int | None = None, model: Any = None) -> pd.DataFrame:
    """Features of ``bars`` computed with the version's own feature config: ``timestamp``, ``symbol``, the
    tabular features, and ``prediction`` from the model in ``model_dir`` when given (a directory from
    ``registry.fetch``), or from ``model`` (a loaded ``Model``) when given. Only fully warmed-up rows; the latest
    ``max_rows`` when set."""
    from tideline.features import build_inference_frame

    try:
        cfg = FeatureConfig.model_validate(version.feature_config)
    except Exception as e:  # noqa: BLE001 - pydantic error -> one line
        raise ConfigError(f"the version's feature config is not valid: {e}") from None
    X, meta, spec = build_inference_frame(bars, cfg)
    if len(X) == 0:
        raise DataError("no fully warmed-up rows in the current bars", hint="give more history per symbol")
    need = list(version.features or [])
    missing = [c for c in need if c not in X.columns]
    if missing:
        raise DataError(f"cannot compute {len(missing)} features the model needs, e.g. {missing[0]}",
                        hint="cross-sectional features need at least 3 symbols")
    if max_rows is not None and len(X) > max_rows:
        X, meta = X.iloc[-max_rows:].reset_index(drop=True), meta.iloc[-max_rows:].reset_index(drop=True)
    frame = X[spec.tabular].copy()
    frame.insert(0, "timestamp", meta["timestamp"].to_numpy())
    frame.insert(1, "symbol", meta["symbol"].to_numpy())
    if model is None and model_dir is not None:
        from tideline.models import load_model

        model = load_model(Path(model_dir))
    if model is not None:
        frame[DEFAULT_PREDICTION_COLUMN] = model.predict(X)
    return frame


def amplify_moves(bars: pd.DataFrame, factor: float) -> pd.DataFrame:
    """Bars whose every log-price move (close to close, and within each bar) is ``factor`` times larger:
    a volatility regime change, for demos and tests. Per symbol, prices ``p`` become
    ``p0 * (p / p0) ** factor`` with ``p0`` the symbol's first open; OHLC order and volume are kept."""
    if not factor > 0:
        raise ConfigError("amplify_moves needs factor > 0")
    out = bars.copy()
    anchor = out.groupby("symbol", sort=False)["open"].transform("first").to_numpy(dtype=np.float64)
    for col in ("open", "high", "low", "close"):
        out[col] = anchor * np.exp(factor * np.log(out[col].to_numpy(dtype=np.float64) / anchor))
    return out


# ---- against the registry -----------------------------------------------------------------------------
@dataclass
class DriftCheckOutcome:
    """One drift check of a registered version: the result and where it was stored."""

    version: str
    result: DriftResult
    checked_at: str
    attachments: dict[str, str] = field(default_factory=dict)  # kind ("json", "html", "latest") -> name

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready outcome: version, check time, attachment names and the result's fields."""
        return {"version": self.version, "checked_at": self.checked_at, "attachments": self.attachments,
                **self.result.to_dict()}


def load_reference(registry: Registry, version: str) -> pd.DataFrame:
    """The ``reference.parquet`` attachment of a version; RegistryError when it has none."""
    if REFERENCE_ATTACHMENT not in registry.attachments(version):
        raise RegistryError(
            f"{version} has no {REFERENCE_ATTACHMENT} attachment: it cannot be checked for drift",
            hint="versions registered by a cycle since reference samples were added have one; retrain",
        )
    data = registry.get_attachment(version, REFERENCE_ATTACHMENT)
    try:
        return pd.read_parquet(io.BytesIO(data))
    except Exception as e:  # noqa: BLE001 - pyarrow raises many types
        raise RegistryError(f"{REFERENCE_ATTACHMENT} of {version} cannot be read: {e}") from None


def attachment_stamp(now: datetime) -> str:
    """``20261123T101500Z``: a UTC time that fits the registry's attachment-name rule."""
    if now.tzinfo is None:
        now = now.replace(tzinfo=UTC)
    return now.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")


def run_drift_check(registry: Registry, bars: pd.DataFrame, *, version: str = "production",
                    cfg: DriftConfig | None = None, write: bool = True, now: datetime | None = None,
                    html_out: str | Path | None = None, html: bool = True) -> DriftCheckOutcome:
    """Check ``bars`` (recent, validated) against a registered version's reference sample.

    Loads ``reference.parquet``, fetches the model (sha256 verified) to predict on the current window,
    runs the check and, with ``write``, stores ``drift-<UTC>.json``, ``drift-<UTC>.html`` and
    ``drift-latest.json`` as attachments of that version. With ``write`` (or ``html_out``) the figures are
    those of the HTML report (``cfg.report_sample_size`` rows per side), else of :func:`check_drift`.
    ``html=False`` (a replay: seconds saved a check) stores the same figures without building the HTML
    report (``report_figures``; no ``drift-<UTC>.html``).
    """
    cfg = cfg or DriftConfig()
    now = now or utcnow()
    mv = registry.get(version)
    v = mv.version
    reference = load_reference(registry, v)
    with tempfile.TemporaryDirectory(prefix="tideline-drift-") as tmp:
        from tideline.models import load_model

        model = load_model(registry.fetch(v, Path(tmp) / "model"))
        try:
            current = current_window_from_bars(bars, mv, model=model)
        except (KeyError, ValueError) as e:
            raise ModelError(f"the model of {v} cannot predict on the current window: {e}") from None
        ref_cols = [c for c in reference.columns if c not in META_COLUMNS and c != DEFAULT_PREDICTION_COLUMN
                    and c not in cfg.ignore_columns]
        outcome_at = aware(now).isoformat()
        stamp = attachment_stamp(now)
        html_path = Path(tmp) / "report.html"
        if (write or html_out is not None) and (html or html_out is not None):
            result = drift_report_html(reference, current, html_path, columns=ref_cols, cfg=cfg)
        elif write:
            result = report_figures(reference, current, columns=ref_cols, cfg=cfg)
        else:
            result = check_drift(reference, current, columns=ref_cols, cfg=cfg)
        result.extra.update({
            "version": v, "checked_at": outcome_at,
            "reference_window": {"start": str(reference["timestamp"].min()), "end": str(reference["timestamp"].max())}
            if "timestamp" in reference else None,
            "current_window": {"start": str(current["timestamp"].min()), "end": str(current["timestamp"].max()),
                               "symbols": sorted(map(str, current["symbol"].unique()))},
        })
        if result.dataset_drifted:  # drift detected: what the model rests on now, against its own
            change = importance_change(registry, v, model, current)
            if change is not None:
                result.extra["importance_change"] = change
        outcome = DriftCheckOutcome(v, result, outcome_at)
        if html_out is not None:
            dest = Path(html_out)
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(html_path.read_bytes())
        if write:
            names = {"json": f"drift-{stamp}.json", "latest": LATEST_ATTACHMENT}
            if html_path.exists():
                names["html"] = f"drift-{stamp}.html"
            outcome.attachments = names
            payload = json.dumps(outcome.to_dict(), indent=1, default=str).encode()
            if "html" in names:
                registry.put_attachment(v, names["html"], html_path.read_bytes(), actor="drift")
            registry.put_attachment(v, names["json"], payload, actor="drift")
            registry.put_attachment(v, names["latest"], payload, actor="drift")
    return outcome


def importance_change(registry: Registry, version: str, model: Any, current: pd.DataFrame
                      ) -> dict[str, Any] | None:
    """The version's feature importance (``model``, loaded) measured again on ``current`` (its features)
    against its own stored ``importance.json``: ``ImportanceChange.to_dict()`` plus a ``summary`` line;
    ``{"error": ...}`` when it cannot be measured; None when the version has no stored importance (an older
    one)."""
    from tideline.models.explain import IMPORTANCE_ATTACHMENT, compare, importance

    try:
        stored = json.loads(registry.get_attachment(version, IMPORTANCE_ATTACHMENT))
    except (RegistryError, ValueError):
        return None
    try:
        change = compare(stored, importance(model, current))
    except (DataError, ModelError) as e:
        return {"error": str(e)}
    return {"summary": change.summary(), **change.to_dict()}


# ---- change detection on live outcomes ----------------------------------------------------------------
@dataclass(frozen=True)
class ChangePoint:
    """A detected change in a live-outcome stream: position, time (when known), detector, details."""

    index: int
    timestamp: pd.Timestamp | None
    detector: str
    detail: dict[str, float]
    series: str = ""
    """what was monitored, e.g. ``abs_error`` or ``hit`` (set by the caller)."""
    start: pd.Timestamp | None = None
    """when the change most likely began (``estimate_start``), earlier than the detection itself; None when
    unknown."""

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready change point (the timestamps as strings, or None)."""
        return {"index": self.index, "timestamp": None if self.timestamp is None else str(self.timestamp),
                "start": None if self.start is None else str(self.start),
                "detector": self.detector, "series": self.series, "detail": self.detail}


def estimate_start(values: Sequence[float], recent: int = 50) -> int:
    """Where a shift in the mean of ``values`` (standardized against the level before it: mean 0) most likely
    began, after it was detected at the end: Page's CUSUM towards the shift seen in the last ``recent`` values
    (drift allowance half of it), and the index after the last time it stood at zero: the classic estimate of a
    CUSUM's change time. A long stable stretch before the change keeps resetting it, so the estimate does not
    wander back over it. 0 for fewer than two values or no shift.

    >>> estimate_start([0.0] * 30 + [1.0] * 10)
    30
    >>> estimate_start([0.1, -0.1] * 200 + [-1.0] * 20)
    400
    """
    x = np.asarray(values, dtype=np.float64)
    if len(x) < 2:
        return 0
    shift = float(np.mean(x[-min(int(recent), len(x)):]))
    if not math.isfinite(shift) or shift == 0.0:
        return 0
    y = np.sign(shift) * x - abs(shift) / 2
    c, last_zero = 0.0, 0
    for i, v in enumerate(y):
        c = max(0.0, c + v)
        if c == 0.0:
            last_zero = i + 1
    return min(last_zero, len(x) - 1)


class PerformanceMonitor:
    """Streaming change detection on a live model's outcomes (realized errors, strategy returns).

    Values are standardized with the mean and standard deviation of the first ``warmup`` values (the
    detectors' thresholds are then in units of the normal spread, whatever the scale of the outcome),
    then fed to river's ``ADWIN`` (adaptive window; a change when two sub-windows' means differ beyond a
    bound with confidence ``adwin_delta``) and/or ``PageHinkley`` (cumulative deviation from the running
    mean beyond ``ph_threshold`` standard deviations, ignoring drifts below ``ph_delta``; ``ph_alpha`` 1 means
    no forgetting: river's default 0.9999 lets the cumulative sums mean-revert, which on long stationary
    streams gives a false alarm every ~10-20k values). After an alarm
    the monitor starts over (new warm-up, fresh detectors): the changed regime becomes the new normal, so
    one change gives one alarm. ``update`` returns whether a detector fired on that value.
    """

    DETECTORS: tuple[str, ...] = ("adwin", "page_hinkley")
    SEEN_MAX = 20_000
    """values kept to date where a detected change began (``ChangePoint.start``)."""

    def __init__(self, detectors: Iterable[str] = DETECTORS, *, warmup: int = 100, adwin_delta: float = 0.002,
                 adwin_clock: int = 8, ph_threshold: float = 50.0, ph_delta: float = 0.2,
                 ph_min_instances: int = 30, ph_alpha: float = 1.0) -> None:
        from river import drift as river_drift

        names = list(detectors)
        unknown = sorted(set(names) - set(self.DETECTORS))
        if unknown or not names:
            raise ConfigError(f"unknown change detectors {unknown or names}; known: {list(self.DETECTORS)}")
        if warmup < 2:
            raise ConfigError("PerformanceMonitor needs warmup >= 2")
        self.warmup = warmup
        self._factories = {
            "adwin": lambda: river_drift.ADWIN(delta=adwin_delta, clock=adwin_clock),
            "page_hinkley": lambda: river_drift.PageHinkley(min_instances=ph_min_instances, delta=ph_delta,
                                                            threshold=ph_threshold, alpha=ph_alpha),
        }
        self.detectors = {n: self._factories[n]() for n in names}
        self.n = 0
        self.changes: list[ChangePoint] = []
        self._buffer: list[tuple[float, pd.Timestamp | None]] = []
        # standardized values since calibration (the latest SEEN_MAX): where a detected change began
        self._seen: collections.deque[tuple[float, pd.Timestamp | None]] = collections.deque(maxlen=self.SEEN_MAX)
        self._center: float | None = None
        self._scale: float = 1.0

    def reset(self) -> None:
        """Forget everything (after a retrain, the new model's outcomes start a new stream)."""
        self.detectors = {n: self._factories[n]() for n in self.detectors}
        self.n = 0
        self.changes = []
        self._buffer = []
        self._seen.clear()
        self._center, self._scale = None, 1.0

    @property
    def calibrated(self) -> bool:
        """True once the warm-up is over and values are standardized (False again after an alarm)."""
        return self._center is not None

    def update(self, value: float, timestamp: Any = None) -> bool:
        """Add one outcome; True when a detector signals a change at this value. Non-finite values are
        skipped (they still count as a position)."""
        idx = self.n
        self.n += 1
        x = float(value)
        if not math.isfinite(x):
            return False
        ts = None if timestamp is None else pd.Timestamp(timestamp)
        if self._center is None:
            self._buffer.append((x, ts))
            if len(self._buffer) < self.warmup:
                return False
            vals = np.array([b[0] for b in self._buffer])
            self._center = float(vals.mean())
            sd = float(vals.std(ddof=1))
            self._scale = sd if sd > 0 and math.isfinite(sd) else 1.0
            first = idx - len(self._buffer) + 1
            buffered, self._buffer = self._buffer, []
            for k, (bx, bts) in enumerate(buffered):
                if self._feed(first + k, bx, bts):  # fired inside the warm-up: the rest starts a new one
                    for rx, rts in buffered[k + 1:]:
                        self._buffer.append((rx, rts))
                    return True
            return False
        return self._feed(idx, x, ts)

    def _feed(self, idx: int, x: float, ts: pd.Timestamp | None) -> bool:
        assert self._center is not None
        z = (x - self._center) / self._scale
        self._seen.append((z, ts))
        fired = False
        start = None
        for name, det in self.detectors.items():
            det.update(z)
            if det.drift_detected:
                detail: dict[str, float] = {"value": x, "z": z, "baseline_mean": self._center,
                                            "baseline_std": self._scale}
                if name == "adwin":
                    detail.update({"window": float(det.width), "window_mean_z": float(det.estimation)})
                if start is None:  # the values since calibration: where did the new level begin?
                    seen = list(self._seen)
                    start = seen[estimate_start([v for v, _ in seen])][1]
                self.changes.append(ChangePoint(idx, ts, name, detail, start=start))
                fired = True
        if fired:  # start over: re-learn the baseline from the values after the change
            self.detectors = {n: self._factories[n]() for n in self.detectors}
            self._center, self._scale = None, 1.0
            self._seen.clear()
        return fired

    def detect(self, series: pd.Series | Sequence[float] | np.ndarray) -> list[ChangePoint]:
        """Feed a whole series (a ``pd.Series`` with a DatetimeIndex gives timestamps); returns the changes
        found in it. Indices count from the start of the monitor's stream."""
        before = len(self.changes)
        if isinstance(series, pd.Series):
            stamps: Iterable[Any] = series.index if isinstance(series.index, pd.DatetimeIndex) else [None] * len(series)
            values: Iterable[Any] = series.to_numpy(dtype=np.float64)
        else:
            values = np.asarray(series, dtype=np.float64)
            stamps = [None] * len(values)  # type: ignore[arg-type]
        for x, ts in zip(values, stamps, strict=True):
            self.update(x, ts)
        return self.changes[before:]
