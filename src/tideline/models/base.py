"""The model interface shared by every family, the on-disk layout and the family registry.

A saved model is a directory holding the family's artifact file(s) plus ``model.json``: family, format
version, params, input columns, the feature spec, the target/input scaler stats, library versions and the
sha256 of every artifact file (checked before anything is parsed). Only safe formats are used: native
XGBoost/LightGBM model files, skops with an explicit type allow-list, and torch weights-only state dicts.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import logging
import os
import platform
import re
import time
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Protocol, runtime_checkable

import numpy as np
import pandas as pd

from tideline.documents import Document
from tideline.errors import ModelError

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
META_FILE = "model.json"
FAMILIES: tuple[str, ...] = ("xgboost", "lightgbm", "sklearn", "torch")
"""The families that forecast the forward return (trained on features and labels alone)."""
POLICY_FAMILIES: tuple[str, ...] = ("rl",)
"""The families that learn a position by trading (they need the ``Market`` their positions earn on)."""
_FAMILY_MODULES = {
    "xgboost": ("tideline.models.trees", "XGBoostModel"),
    "lightgbm": ("tideline.models.trees", "LightGBMModel"),
    "sklearn": ("tideline.models.trees", "SklearnModel"),
    "torch": ("tideline.models.sequence", "SequenceModel"),
    "rl": ("tideline.models.reinforcement", "PolicyModel"),
    "ensemble": ("tideline.models.ensemble", "EnsembleModel"),  # built from trained members, never trained
    "recalibrated": ("tideline.models.recalibrated", "RecalibratedModel"),  # a line on a fitted base model
}


@runtime_checkable
class SpecLike(Protocol):
    """What a model needs from ``tideline.features.FeatureSpec``."""

    tabular: list[str]
    sequence: list[str]
    channels: list[str]
    seq_len: int

    @property
    def all_columns(self) -> list[str]:
        """Every column the spec names: the tabular ones, then the sequence ones."""


@dataclass(frozen=True)
class StoredSpec(Document):
    """The feature spec as read back from ``model.json`` (same fields as ``FeatureSpec``)."""

    tabular: list[str]
    sequence: list[str]
    channels: list[str]
    seq_len: int

    @property
    def all_columns(self) -> list[str]:
        """The tabular columns, then the sequence columns."""
        return [*self.tabular, *self.sequence]

    @classmethod
    def from_spec(cls, spec: SpecLike) -> StoredSpec:
        """A frozen copy of any ``SpecLike`` (e.g. a ``FeatureSpec``); ``ModelError`` if it lacks a field."""
        try:
            return cls(tabular=[str(c) for c in spec.tabular], sequence=[str(c) for c in spec.sequence],
                       channels=[str(c) for c in spec.channels], seq_len=int(spec.seq_len))
        except (AttributeError, TypeError, ValueError) as e:
            raise ModelError(f"feature spec is not usable: {e}") from None

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> StoredSpec:
        """Read back ``to_dict`` output; ``ModelError`` naming the field that is missing or has the wrong type."""
        try:
            return super().from_dict(d)
        except ValueError as e:
            raise ModelError(f"stored feature spec is not valid: {e}") from None


@dataclass(frozen=True)
class Market:
    """What a family that trades needs beside the features, one entry per feature row: the next bar's return
    its position earns, the row's symbol and bar time (episodes walk each symbol's bars in time order) and
    its cost per unit of turnover (``evaluation.cost_bps`` plus the slippage, as the evaluation charges it);
    ``weight`` (optional) makes some rows' episodes likelier to be drawn (experience fine-tuning)."""

    next_return: np.ndarray
    symbol: np.ndarray
    timestamp: np.ndarray
    unit_cost: np.ndarray
    weight: np.ndarray | None = None

    def __post_init__(self) -> None:
        n = len(self.next_return)
        arrays = {"symbol": self.symbol, "timestamp": self.timestamp, "unit_cost": self.unit_cost}
        if self.weight is not None:
            arrays["weight"] = self.weight
        bad = {k: len(v) for k, v in arrays.items() if len(v) != n}
        if bad:
            raise ModelError(f"market arrays disagree in length with its {n} returns: {bad}")

    def __len__(self) -> int:
        return len(self.next_return)


# --------------------------------------------------------------------------- target scaling


def fit_target_scaler(y: np.ndarray) -> tuple[float, float]:
    """Robust (center, scale) of ``y``: median and 1.4826*MAD (std, then 1.0, as fallbacks)."""
    center = float(np.median(y))
    scale = 1.4826 * float(np.median(np.abs(y - center)))
    if not np.isfinite(scale) or scale <= 1e-12:
        scale = float(np.std(y))
    if not np.isfinite(scale) or scale <= 1e-12:
        scale = 1.0
    return center, scale


def scale_target(y: np.ndarray, center: float, scale: float, clip_sigma: float) -> np.ndarray:
    """Standardise with the train stats and clip at ``clip_sigma`` robust std (tames heavy tails)."""
    z = (np.asarray(y, dtype=np.float64) - center) / scale
    if clip_sigma and clip_sigma > 0:
        z = np.clip(z, -clip_sigma, clip_sigma)
    return z


def sha256_file(path: Path) -> str:
    """The hex sha256 of the file at ``path``, read in 1 MiB chunks; ``OSError`` if it cannot be read."""
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def library_versions(modules: tuple[str, ...]) -> dict[str, str]:
    """Versions of python, numpy and the given library modules."""
    out = {"python": platform.python_version(), "numpy": np.__version__}
    for name in modules:
        try:
            out[name] = str(getattr(importlib.import_module(name), "__version__", "unknown"))
        except ImportError:
            out[name] = "missing"
    return out


# --------------------------------------------------------------------------- search spaces


@dataclass(frozen=True)
class Dim(Document):
    """One hyperparameter's range for tuning (``tideline.training.tuning``): ``float`` or ``int`` between
    ``low`` and ``high`` (on a log scale with ``log``), or one of ``choices``."""

    kind: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    choices: list[Any] | None = None

    @classmethod
    def real(cls, low: float, high: float, *, log: bool = False) -> Dim:
        """A real number in [low, high]."""
        return cls("float", low, high, log)

    @classmethod
    def integer(cls, low: int, high: int, *, log: bool = False) -> Dim:
        """An integer in [low, high]."""
        return cls("int", low, high, log)

    @classmethod
    def choice(cls, *choices: Any) -> Dim:
        """One of ``choices``."""
        return cls("choice", choices=list(choices))


# --------------------------------------------------------------------------- the interface


class Model(ABC):
    """A model of the forward return (``output == "return"``), or a policy whose prediction is the position it
    takes (``output == "position"``: the families of ``POLICY_FAMILIES``, trained on a ``Market``). Subclasses
    implement the ``_``-prefixed hooks."""

    family: ClassVar[str]
    artifact_files: ClassVar[tuple[str, ...]]
    libraries: ClassVar[tuple[str, ...]] = ()
    output: ClassVar[str] = "return"
    """What ``predict`` answers: ``return`` (a forecast of the forward return) or ``position`` (in [-1, 1])."""

    def __init__(self, *, seed: int = 0, params: dict[str, Any] | None = None, n_threads: int = 0) -> None:
        defaults = self.default_params()
        overrides = dict(params or {})
        self._check_params(defaults, overrides)
        self.params: dict[str, Any] = {**defaults, **overrides}
        self.seed = int(seed)
        self.n_threads = max(int(n_threads), 0)
        self.columns: list[str] = []
        self.spec: StoredSpec | None = None
        self.spec_dict: dict[str, Any] = {}
        self.y_center = 0.0
        self.y_scale = 1.0
        self.fit_info: dict[str, Any] = {}
        self._fitted = False
        self._market: Market | None = None
        self._valid_market: Market | None = None

    # -- hooks ---------------------------------------------------------------------------------
    @classmethod
    @abstractmethod
    def default_params(cls) -> dict[str, Any]:
        """The family's default hyperparameters."""

    @classmethod
    def search_space(cls) -> dict[str, Dim]:
        """The hyperparameters tuning may change and their ranges (empty: the family is not tuned)."""
        return {}

    @classmethod
    def _check_params(cls, defaults: dict[str, Any], overrides: dict[str, Any]) -> None:
        """Refuse unknown parameters (families that pass them through to the library override this)."""
        unknown = sorted(set(overrides) - set(defaults))
        if unknown:
            raise ModelError(f"unknown {cls.family} params {unknown}; known: {sorted(defaults)}")

    @abstractmethod
    def _input_columns(self, spec: StoredSpec) -> list[str]:
        """The columns (in order) this model reads from X."""

    @abstractmethod
    def _fit(self, X: np.ndarray, y: np.ndarray, X_valid: np.ndarray | None, y_valid: np.ndarray | None) -> None:
        """Fit on float32 inputs and the scaled target."""

    @abstractmethod
    def _predict(self, X: np.ndarray) -> np.ndarray:
        """Predict the scaled target for float32 inputs."""

    def _contributions(self, X: np.ndarray) -> np.ndarray | None:
        """Per-row, per-feature contributions to the scaled prediction (SHAP values: ``n x (k + 1)``, the last
        column the expected value), or None where the family has no exact ones (then permutation is used)."""
        return None

    @abstractmethod
    def _save_artifacts(self, directory: Path) -> dict[str, Any]:
        """Write ``artifact_files`` into ``directory``; return extra metadata for model.json."""

    @abstractmethod
    def _load_artifacts(self, directory: Path, extra: dict[str, Any]) -> None:
        """Read the artifact files back (raise anything; ``load`` turns it into ModelError)."""

    def warm_start(self, previous: Model, version: str = "") -> str | None:
        """Start the next ``fit`` from ``previous`` (an earlier version of this family); None when it will, else why
        not (the fit starts cold). Only policies warm-start (``tideline.models.reinforcement``)."""
        return f"the {self.family} family does not warm-start"

    def fine_tune_on(self, X: pd.DataFrame, market: Market) -> None:
        """After fitting on its training rows, train on these rows too (a policy's experiences)."""
        raise ModelError(f"the {self.family} family does not fine-tune on experiences")

    # -- public API ----------------------------------------------------------------------------
    @property
    def is_fitted(self) -> bool:
        """True once ``fit`` (or ``load``) has given the model its weights."""
        return self._fitted

    def fit(self, X: pd.DataFrame, y: np.ndarray, spec: SpecLike, *, X_valid: pd.DataFrame | None = None,
            y_valid: np.ndarray | None = None, market: Market | None = None,
            valid_market: Market | None = None) -> Model:
        """Fit on ``X`` (needs the spec's columns) and forward returns ``y``; the valid set drives early stopping.
        A policy (``output == "position"``) also needs the ``market`` of the rows of ``X`` (and ``valid_market``
        of the valid rows, when given): its positions are trained on the returns and costs they would earn."""
        stored = StoredSpec.from_spec(spec)
        columns = self._input_columns(stored)
        if not columns:
            raise ModelError(f"{self.family} model: the feature spec gives it no columns to use")
        Xa = _matrix(X, columns, "training")
        ya = _target(y, len(Xa), "training")
        Xv = yv = None
        if (X_valid is None) != (y_valid is None):
            raise ModelError("X_valid and y_valid must be given together")
        if X_valid is not None and len(X_valid) > 0:
            Xv = _matrix(X_valid, columns, "validation")
            yv = _target(y_valid, len(Xv), "validation")
        if self.output == "position":
            if market is None or len(market) != len(Xa):
                raise ModelError(f"{self.family} policy needs the market of its {len(Xa)} training rows "
                                 f"(got {'none' if market is None else len(market)})")
            if Xv is not None and (valid_market is None or len(valid_market) != len(Xv)):
                raise ModelError(f"{self.family} policy needs the market of its {len(Xv)} validation rows")
        self._market, self._valid_market = market, valid_market
        clip = float(self.params.get("clip_sigma", 0.0) or 0.0)
        self.y_center, self.y_scale = fit_target_scaler(ya) if self.output == "return" else (0.0, 1.0)
        ys = scale_target(ya, self.y_center, self.y_scale, clip)
        yvs = scale_target(yv, self.y_center, self.y_scale, clip) if yv is not None else None
        self.columns = columns
        self.spec = stored
        to_dict = getattr(spec, "to_dict", None)
        self.spec_dict = dict(to_dict()) if callable(to_dict) else stored.to_dict()
        t0 = time.perf_counter()
        try:
            self._fit(Xa, ys, Xv, yvs)
        except ModelError:
            raise
        except Exception as e:  # library errors become one-line ModelErrors
            raise ModelError(f"{self.family} model failed to train: {_first_line(e)}") from e
        finally:
            self._market = self._valid_market = None
        self.fit_info["fit_seconds"] = round(time.perf_counter() - t0, 3)
        self.fit_info["train_rows"] = int(len(Xa))
        self.fit_info["valid_rows"] = int(len(Xv)) if Xv is not None else 0
        self._fitted = True
        log.info("fitted %s on %d rows in %.2fs %s", self.family, len(Xa), self.fit_info["fit_seconds"],
                 {k: v for k, v in self.fit_info.items() if k not in ("fit_seconds", "train_rows")})
        return self

    def predict(self, X: pd.DataFrame) -> np.ndarray:
        """Predicted forward return for each row of ``X`` (float64, length ``len(X)``)."""
        if not self._fitted:
            raise ModelError(f"{self.family} model is not fitted")
        return self.predict_array(_matrix(X, self.columns, "prediction"))

    def predict_array(self, X: np.ndarray) -> np.ndarray:
        """``predict`` for a float32 matrix whose columns are ``self.columns`` in that order (no DataFrame:
        the serving hot path)."""
        if not self._fitted:
            raise ModelError(f"{self.family} model is not fitted")
        Xa = np.ascontiguousarray(X, dtype=np.float32)
        if Xa.ndim != 2 or Xa.shape[1] != len(self.columns):
            raise ModelError(
                f"prediction matrix has shape {Xa.shape}; the model needs (n, {len(self.columns)})")
        if len(Xa) == 0:
            return np.zeros(0, dtype=np.float64)
        try:
            z = np.asarray(self._predict(Xa), dtype=np.float64).reshape(-1)
        except Exception as e:
            raise ModelError(f"{self.family} model failed to predict: {_first_line(e)}") from e
        return self.y_center + self.y_scale * z

    def contributions(self, X: np.ndarray) -> np.ndarray | None:
        """Exact SHAP values of ``predict_array(X)`` (tree families: TreeSHAP, by the library itself), one row per
        row of ``X`` and one column per ``self.columns`` plus the expected value last, in prediction units (they
        sum to the prediction); None where the family has none."""
        if not self._fitted:
            raise ModelError(f"{self.family} model is not fitted")
        Xa = np.ascontiguousarray(X, dtype=np.float32)
        try:
            c = self._contributions(Xa)
        except Exception as e:
            raise ModelError(f"{self.family} model failed to explain: {_first_line(e)}") from e
        if c is None:
            return None
        c = np.asarray(c, dtype=np.float64).reshape(len(Xa), len(self.columns) + 1) * self.y_scale
        c[:, -1] += self.y_center
        return c

    def save(self, directory: str | Path) -> list[str]:
        """Write the artifact files and ``model.json`` into ``directory``; return the file names written."""
        if not self._fitted:
            raise ModelError(f"cannot save: {self.family} model is not fitted")
        directory = Path(directory)
        try:
            directory.mkdir(parents=True, exist_ok=True)
            extra = self._save_artifacts(directory)
            files = {name: sha256_file(directory / name) for name in self.artifact_files}
        except OSError as e:
            raise ModelError(f"cannot save {self.family} model to {directory}: {e.strerror or e}") from None
        meta = {
            "family": self.family,
            "output": self.output,
            "format_version": FORMAT_VERSION,
            "seed": self.seed,
            "params": self.params,
            "columns": self.columns,
            "spec": self.spec_dict,
            "spec_fields": self.spec.to_dict() if self.spec else {},
            "target_scaler": {"center": self.y_center, "scale": self.y_scale},
            "fit_info": self.fit_info,
            "extra": extra,
            "files": files,
            "library_versions": library_versions(self.libraries),
        }
        tmp = directory / (META_FILE + ".tmp")
        try:
            tmp.write_text(json.dumps(meta, indent=2, sort_keys=True, default=_json_default), encoding="utf-8")
            os.replace(tmp, directory / META_FILE)
        except OSError as e:
            raise ModelError(f"cannot save {self.family} model to {directory}: {e.strerror or e}") from None
        return [*self.artifact_files, META_FILE]

    @classmethod
    def load(cls, directory: str | Path) -> Model:
        """Load a model saved by ``save``; any problem with the files is a ModelError."""
        directory = Path(directory)
        meta = read_meta(directory)
        if meta["family"] != cls.family:
            raise ModelError(f"{directory} holds a {meta['family']!r} model, not {cls.family!r}")
        return cls._from_meta(directory, meta)

    @classmethod
    def _from_meta(cls, directory: Path, meta: dict[str, Any]) -> Model:
        files = meta.get("files")
        if not isinstance(files, dict) or set(files) != set(cls.artifact_files):
            raise ModelError(f"{directory / META_FILE} does not list the {cls.family} artifact files "
                             f"{list(cls.artifact_files)}")
        for name, digest in files.items():
            path = directory / name
            if not path.is_file():
                raise ModelError(f"model file {path} is missing")
            if sha256_file(path) != digest:
                raise ModelError(f"model file {path} is corrupt (sha256 does not match model.json)")
        try:
            model = cls(seed=int(meta.get("seed", 0)), params=dict(meta["params"]))
            model.columns = [str(c) for c in meta["columns"]]
            model.spec = StoredSpec.from_dict(meta["spec_fields"])
            model.spec_dict = dict(meta.get("spec") or model.spec.to_dict())
            model.y_center = float(meta["target_scaler"]["center"])
            model.y_scale = float(meta["target_scaler"]["scale"])
            model.fit_info = dict(meta.get("fit_info") or {})
        except ModelError:
            raise
        except (KeyError, TypeError, ValueError) as e:
            raise ModelError(f"{directory / META_FILE} is not a valid {cls.family} model description: {e}") from None
        try:
            model._load_artifacts(directory, dict(meta.get("extra") or {}))
        except ModelError:
            raise
        except Exception as e:  # whatever the library raised for a bad file
            raise ModelError(f"cannot load {cls.family} model from {directory}: {_first_line(e)}") from None
        model._fitted = True
        return model


# --------------------------------------------------------------------------- helpers


def _first_line(e: BaseException) -> str:
    """``Type: message`` on one line (library errors often carry stack traces)."""
    lines = str(e).strip().splitlines()
    first = re.sub(r"^\[[\d:]+\] \S+:\d+: ", "", lines[0] if lines else "")  # XGBoost's "[time] file:line: "
    return f"{type(e).__name__}: {first}"[:500]


def _json_default(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def _matrix(X: pd.DataFrame, columns: list[str], what: str) -> np.ndarray:
    if not isinstance(X, pd.DataFrame):
        raise ModelError(f"{what} features must be a pandas DataFrame, got {type(X).__name__}")
    if len(X.columns) == len(columns) and X.columns.tolist() == columns:  # already in order: skip the copy
        try:
            return np.ascontiguousarray(X.to_numpy(dtype=np.float32, na_value=np.nan))
        except (TypeError, ValueError) as e:
            raise ModelError(f"{what} features are not numeric: {e}") from None
    missing = [c for c in columns if c not in X.columns]
    if missing:
        shown = ", ".join(missing[:10]) + (f" (+{len(missing) - 10} more)" if len(missing) > 10 else "")
        raise ModelError(f"{what} features lack {len(missing)} column(s) the model needs: {shown}")
    try:
        return np.ascontiguousarray(X[columns].to_numpy(dtype=np.float32, na_value=np.nan))
    except (TypeError, ValueError) as e:
        raise ModelError(f"{what} features are not numeric: {e}") from None


def _target(y: Any, n: int, what: str) -> np.ndarray:
    ya = np.asarray(y, dtype=np.float64).reshape(-1)
    if len(ya) != n:
        raise ModelError(f"{what} target has {len(ya)} values for {n} feature rows")
    if n == 0:
        raise ModelError(f"{what} set is empty")
    if not np.isfinite(ya).all():
        raise ModelError(f"{what} target has {int((~np.isfinite(ya)).sum())} NaN/inf values")
    return ya


def read_meta(directory: str | Path) -> dict[str, Any]:
    """Read and check ``model.json`` in ``directory``."""
    path = Path(directory) / META_FILE
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ModelError(f"no model at {directory}: {META_FILE} is missing") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ModelError(f"cannot read {path}: {e}") from None
    try:
        meta = json.loads(text)
    except json.JSONDecodeError as e:
        raise ModelError(f"{path} is corrupt: {e}") from None
    if not isinstance(meta, dict) or "family" not in meta:
        raise ModelError(f"{path} is not a tideline model description")
    version = meta.get("format_version")
    if version != FORMAT_VERSION:
        raise ModelError(f"{path} has format version {version!r}; this tideline reads {FORMAT_VERSION}")
    return meta


def model_class(family: str) -> type[Model]:
    """The Model subclass for ``family``."""
    try:
        module_name, cls_name = _FAMILY_MODULES[family]
    except (KeyError, TypeError):
        raise ModelError(f"unknown model family {family!r}; known: {[*FAMILIES, *POLICY_FAMILIES]}") from None
    cls: type[Model] = getattr(importlib.import_module(module_name), cls_name)
    return cls


def output_kind(family: str) -> str:
    """What ``family``'s predictions are: ``return`` forecasts or ``position`` s (``Model.output``); ``return``
    for a family this tideline does not know."""
    try:
        return model_class(family).output
    except ModelError:
        return "return"


def default_params(family: str) -> dict[str, Any]:
    """The default hyperparameters of ``family``."""
    return model_class(family).default_params()


def search_space(family: str) -> dict[str, Dim]:
    """The tuning search space of ``family`` (``Model.search_space``)."""
    return model_class(family).search_space()


def make_model(family: str, *, seed: int, params: dict[str, Any] | None = None, n_threads: int = 0) -> Model:
    """A new, unfitted model of ``family``; ``params`` override the defaults; ``n_threads`` 0 = library default."""
    return model_class(family)(seed=seed, params=params, n_threads=n_threads)


def load_model(directory: str | Path) -> Model:
    """Load whatever model family ``directory`` holds."""
    directory = Path(directory)
    meta = read_meta(directory)
    family = meta["family"]
    if family not in _FAMILY_MODULES:
        raise ModelError(f"{directory} holds an unknown model family {family!r}; known: {[*FAMILIES, *POLICY_FAMILIES]}")
    return model_class(family)._from_meta(directory, meta)
