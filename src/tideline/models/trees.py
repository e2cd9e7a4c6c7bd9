"""Gradient-boosted tree families: XGBoost, LightGBM and scikit-learn's HistGradientBoostingRegressor.

They read the spec's tabular columns only. Defaults favour speed and noisy financial targets: shallow trees
(depth 4, 15 leaves), learning rate 0.05, up to 300 rounds with early stopping (patience 25) on the
validation set when one is given, row/column subsampling, and at least 200 rows per leaf so the trees
cannot chase single outliers. The target is standardised with robust train statistics (median, 1.4826*MAD)
and clipped at ``clip_sigma`` (5) robust std before fitting: squared error on the clipped target behaves
like a Huber loss on the tails while keeping every library on the same, fast objective. Predictions are
mapped back to return units. Fits are deterministic for a given seed and data.

HistGradientBoosting was chosen over RandomForest: histogram boosting is several times faster on 10^5-10^6
rows and supports an external validation set for early stopping.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from tideline.errors import ModelError
from tideline.models.base import Dim, Model, StoredSpec

log = logging.getLogger(__name__)

# Our own keys; everything else in ``params`` goes to the library as is.
_OWN_KEYS = ("num_boost_round", "early_stopping_rounds", "clip_sigma")

# The only types a model.skops file may hold beyond those skops trusts by default.
SKOPS_ALLOWED_TYPES: frozenset[str] = frozenset({
    "sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor",
})


class _TreeModel(Model):
    """Shared by the tree families: tabular columns only."""

    # XGBoost/LightGBM take any of their many native params (and aliases); sklearn's are checked.
    passthrough_params: ClassVar[bool] = True

    @classmethod
    def _check_params(cls, defaults: dict[str, Any], overrides: dict[str, Any]) -> None:
        for key in ("num_boost_round", "early_stopping_rounds"):
            if key in overrides and (not isinstance(overrides[key], int) or overrides[key] < 0):
                raise ModelError(f"{cls.family} param {key} must be a non-negative integer")
        if not cls.passthrough_params:
            super()._check_params(defaults, overrides)

    def _input_columns(self, spec: StoredSpec) -> list[str]:
        return list(spec.tabular)

    def _library_params(self) -> dict[str, Any]:
        return {k: v for k, v in self.params.items() if k not in _OWN_KEYS}


class XGBoostModel(_TreeModel):
    """XGBoost ``hist`` booster, saved in XGBoost's native UBJSON format (model.ubj)."""

    family = "xgboost"
    artifact_files = ("model.ubj",)
    libraries = ("xgboost",)

    @classmethod
    def default_params(cls) -> dict[str, Any]:
        """Defaults of the xgboost family (``hist`` booster, boosting rounds, early stopping, target
        ``clip_sigma``); any other native XGBoost parameter may be passed too.
        """
        return {
            "objective": "reg:squarederror",
            "tree_method": "hist",
            "max_depth": 4,
            "learning_rate": 0.05,
            "subsample": 0.8,
            "colsample_bytree": 0.8,
            "min_child_weight": 200.0,
            "reg_lambda": 1.0,
            "max_bin": 128,
            "num_boost_round": 300,
            "early_stopping_rounds": 25,
            "clip_sigma": 5.0,
        }

    @classmethod
    def search_space(cls) -> dict[str, Dim]:
        """Tree shape, learning rate, leaf size, subsampling and L2 around the defaults."""
        return {
            "max_depth": Dim.integer(2, 6),
            "learning_rate": Dim.real(0.01, 0.2, log=True),
            "min_child_weight": Dim.real(20.0, 2000.0, log=True),
            "subsample": Dim.real(0.5, 1.0),
            "colsample_bytree": Dim.real(0.4, 1.0),
            "reg_lambda": Dim.real(0.01, 100.0, log=True),
        }

    def _fit(self, X: np.ndarray, y: np.ndarray, X_valid: np.ndarray | None, y_valid: np.ndarray | None) -> None:
        import xgboost as xgb

        params = {**self._library_params(), "seed": self.seed, "verbosity": 0}
        if self.n_threads:
            params["nthread"] = self.n_threads
        max_bin = int(params.get("max_bin", 256))
        dtrain = xgb.QuantileDMatrix(X, label=y, max_bin=max_bin)
        evals: list[tuple[Any, str]] = []
        stop = int(self.params["early_stopping_rounds"]) or None
        if X_valid is not None and y_valid is not None:
            evals = [(xgb.QuantileDMatrix(X_valid, label=y_valid, ref=dtrain, max_bin=max_bin), "valid")]
        booster = xgb.train(params, dtrain, num_boost_round=int(self.params["num_boost_round"]), evals=evals,
                            early_stopping_rounds=stop if evals else None, verbose_eval=False)
        if evals and stop:
            best = int(booster.best_iteration)
            booster = booster[: best + 1]
            self.fit_info["best_iteration"] = best + 1
        self.fit_info["n_trees"] = int(booster.num_boosted_rounds())
        self._booster = booster

    def _predict(self, X: np.ndarray) -> np.ndarray:
        return self._booster.inplace_predict(X)

    def _contributions(self, X: np.ndarray) -> np.ndarray | None:
        import xgboost as xgb

        return self._booster.predict(xgb.DMatrix(X), pred_contribs=True)

    def _save_artifacts(self, directory: Path) -> dict[str, Any]:
        self._booster.save_model(str(directory / "model.ubj"))
        return {"n_features": len(self.columns)}

    def _load_artifacts(self, directory: Path, extra: dict[str, Any]) -> None:
        import xgboost as xgb

        booster = xgb.Booster()
        booster.load_model(str(directory / "model.ubj"))
        if booster.num_features() != len(self.columns):
            raise ModelError(f"model.ubj expects {booster.num_features()} features; model.json lists "
                             f"{len(self.columns)} columns")
        if self.n_threads:
            booster.set_param({"nthread": self.n_threads})
        self._booster = booster


class LightGBMModel(_TreeModel):
    """LightGBM GBDT, saved as LightGBM's text model file (model.txt)."""

    family = "lightgbm"
    artifact_files = ("model.txt",)
    libraries = ("lightgbm",)

    @classmethod
    def default_params(cls) -> dict[str, Any]:
        """Defaults of the lightgbm family (GBDT, boosting rounds, early stopping, target ``clip_sigma``);
        any other native LightGBM parameter may be passed too.
        """
        return {
            "objective": "regression",
            "learning_rate": 0.05,
            "num_leaves": 15,
            "max_depth": 4,
            "min_data_in_leaf": 200,
            "feature_fraction": 0.8,
            "bagging_fraction": 0.8,
            "bagging_freq": 1,
            "lambda_l2": 1.0,
            "max_bin": 127,
            "num_boost_round": 300,
            "early_stopping_rounds": 25,
            "clip_sigma": 5.0,
        }

    @classmethod
    def search_space(cls) -> dict[str, Dim]:
        """Leaves, depth, learning rate, leaf size, subsampling and L2 around the defaults."""
        return {
            "num_leaves": Dim.integer(4, 31, log=True),
            "max_depth": Dim.integer(2, 6),
            "learning_rate": Dim.real(0.01, 0.2, log=True),
            "min_data_in_leaf": Dim.integer(20, 2000, log=True),
            "feature_fraction": Dim.real(0.4, 1.0),
            "bagging_fraction": Dim.real(0.5, 1.0),
            "lambda_l2": Dim.real(0.01, 100.0, log=True),
        }

    def _fit(self, X: np.ndarray, y: np.ndarray, X_valid: np.ndarray | None, y_valid: np.ndarray | None) -> None:
        import lightgbm as lgb

        params = {**self._library_params(), "seed": self.seed, "deterministic": True, "force_row_wise": True,
                  "verbosity": -1, "num_threads": self.n_threads}
        dtrain = lgb.Dataset(X, label=y, params={"max_bin": params.get("max_bin", 255), "verbosity": -1})
        valid_sets: list[Any] = []
        callbacks: list[Any] = []
        stop = int(self.params["early_stopping_rounds"])
        if X_valid is not None and y_valid is not None:
            valid_sets = [lgb.Dataset(X_valid, label=y_valid, reference=dtrain)]
            if stop:
                callbacks.append(lgb.early_stopping(stop, verbose=False))
        booster = lgb.train(params, dtrain, num_boost_round=int(self.params["num_boost_round"]),
                            valid_sets=valid_sets, valid_names=["valid"] * len(valid_sets), callbacks=callbacks)
        best = int(booster.best_iteration or 0)
        if best > 0:
            self.fit_info["best_iteration"] = best
        # Keep exactly what gets saved, so predictions before and after a save/load are the same.
        self._model_str = booster.model_to_string(num_iteration=best if best > 0 else -1)
        self._booster = lgb.Booster(model_str=self._model_str)
        self.fit_info["n_trees"] = int(self._booster.num_trees())

    def _predict(self, X: np.ndarray) -> np.ndarray:
        if X.shape[0] == 1 and X.dtype == np.float32 and X.flags.c_contiguous:
            fast = self.__dict__.get("_single_row")
            if fast is None or fast.booster is not self._booster:
                fast = self._single_row = _LightGBMSingleRow(self._booster, X.shape[1])
            if fast.ok:
                return fast.predict(X)
        return self._booster.predict(X, num_threads=self.n_threads)

    def _contributions(self, X: np.ndarray) -> np.ndarray | None:
        return self._booster.predict(X, pred_contrib=True, num_threads=self.n_threads)

    def _save_artifacts(self, directory: Path) -> dict[str, Any]:
        (directory / "model.txt").write_text(self._model_str, encoding="utf-8")
        return {"n_features": len(self.columns)}

    def _load_artifacts(self, directory: Path, extra: dict[str, Any]) -> None:
        import lightgbm as lgb

        text = (directory / "model.txt").read_text(encoding="utf-8")
        if "end of trees" not in text:
            raise ModelError(f"{directory / 'model.txt'} is truncated or not a LightGBM model file")
        booster = lgb.Booster(model_str=text)
        if booster.num_feature() != len(self.columns):
            raise ModelError(f"model.txt expects {booster.num_feature()} features; model.json lists "
                             f"{len(self.columns)} columns")
        self._model_str = text
        self._booster = booster


class _LightGBMSingleRow:
    """One-row prediction through LightGBM's ``LGBM_BoosterPredictForMatSingleRowFast`` C API: the config is
    parsed and the predictor set up once, not per call as ``Booster.predict`` does (~40 us of its ~50 us for
    one row of a small model). This is the serving hot path: most requests carry one bar. Same numbers as
    ``Booster.predict`` (a test compares them); when the C API is not there, ``ok`` is False and callers use
    ``Booster.predict``."""

    _PREDICT_NORMAL = 0  # C_API_PREDICT_NORMAL
    _DTYPE_FLOAT32 = 0  # C_API_DTYPE_FLOAT32

    def __init__(self, booster: Any, n_features: int) -> None:
        import ctypes
        import threading

        self.booster = booster
        self.ok = False
        self._ctypes = ctypes
        self._lock = threading.Lock()  # one FastConfig must not be used by two threads at once
        self._out = np.empty(1, dtype=np.float64)
        self._out_ptr = self._out.ctypes.data_as(ctypes.POINTER(ctypes.c_double))
        self._out_len = ctypes.c_int64(0)
        self._handle = ctypes.c_void_p()
        try:
            from lightgbm.basic import _LIB, _c_str, _safe_call

            _safe_call(_LIB.LGBM_BoosterPredictForMatSingleRowFastInit(
                booster._handle, ctypes.c_int(self._PREDICT_NORMAL), ctypes.c_int(0), ctypes.c_int(-1),
                ctypes.c_int(self._DTYPE_FLOAT32), ctypes.c_int32(n_features), _c_str("num_threads=1"),
                ctypes.byref(self._handle)))
            self._fast = _LIB.LGBM_BoosterPredictForMatSingleRowFast
            self._free = _LIB.LGBM_FastConfigFree
            self._safe_call = _safe_call
            self.ok = True
        except Exception as e:  # pragma: no cover - an older or newer lightgbm without this API
            log.debug("lightgbm single-row fast path unavailable: %s", e)

    def predict(self, X: np.ndarray) -> np.ndarray:
        with self._lock:
            self._safe_call(self._fast(self._handle, X.ctypes.data_as(self._ctypes.c_void_p),
                                       self._ctypes.byref(self._out_len), self._out_ptr))
            if self._out_len.value != 1:  # pragma: no cover - a multi-output model
                raise ModelError(f"lightgbm returned {self._out_len.value} values for one row")
            return self._out.copy()

    def __del__(self) -> None:
        if getattr(self, "ok", False) and self._handle:
            try:
                self._free(self._handle)
            except Exception:  # pragma: no cover - interpreter shutdown
                pass


class _SklearnForest:
    """A HistGradientBoostingRegressor's trees as padded numpy arrays, walked for all trees at once.

    sklearn predicts tree by tree (one Cython call and one OpenMP region per tree: ~3 ms for one row of
    300 trees); for the few rows of a serving request this walks every tree in lock-step instead (~0.1 ms).
    Same rule per node as sklearn (NaN follows ``missing_go_to_left``, else ``x <= num_threshold`` goes
    left) and the same summation order (baseline, then tree 1, 2, ... via a sequential cumsum), so the
    numbers are sklearn's; a test checks it. Categorical splits or anything unexpected -> ``ok`` False and
    sklearn's own ``predict`` is used."""

    MAX_ROWS = 64

    def __init__(self, est: Any) -> None:
        self.est = est
        self.ok = False
        try:
            trees = [p for it in est._predictors for p in it]
            if (getattr(est, "n_trees_per_iteration_", 1) != 1 or not trees
                    or any(t.nodes["is_categorical"].any() for t in trees)):
                return
            n_nodes = max(len(t.nodes) for t in trees)
            shape = (len(trees), n_nodes)
            self.feature = np.zeros(shape, dtype=np.intp)
            self.threshold = np.zeros(shape, dtype=np.float64)
            self.left = np.zeros(shape, dtype=np.intp)
            self.right = np.zeros(shape, dtype=np.intp)
            self.nan_left = np.zeros(shape, dtype=bool)
            self.leaf = np.ones(shape, dtype=bool)  # padding nodes are leaves that are never reached
            self.value = np.zeros(shape, dtype=np.float64)
            for i, t in enumerate(trees):
                nodes, k = t.nodes, len(t.nodes)
                self.feature[i, :k] = nodes["feature_idx"]
                self.threshold[i, :k] = nodes["num_threshold"]
                self.left[i, :k] = nodes["left"]
                self.right[i, :k] = nodes["right"]
                self.nan_left[i, :k] = nodes["missing_go_to_left"].astype(bool)
                self.leaf[i, :k] = nodes["is_leaf"].astype(bool)
                self.value[i, :k] = nodes["value"]
            self.depth = int(max(t.nodes["depth"].max() for t in trees))
            self.baseline = float(np.asarray(est._baseline_prediction).reshape(-1)[0])
            self.n_features = int(est.n_features_in_)
            self.ok = True
        except Exception as e:  # pragma: no cover - sklearn internals changed: use its own predict
            log.debug("vectorised HistGradientBoosting prediction unavailable: %s", e)

    def predict(self, X: np.ndarray) -> np.ndarray:
        X = np.asarray(X, dtype=np.float64)
        n, n_trees = X.shape[0], self.feature.shape[0]
        trees = np.arange(n_trees)[None, :]
        rows = np.arange(n)[:, None]
        node = np.zeros((n, n_trees), dtype=np.intp)
        for _ in range(self.depth):
            x = X[rows, self.feature[trees, node]]
            go_left = np.where(np.isnan(x), self.nan_left[trees, node], x <= self.threshold[trees, node])
            step = np.where(go_left, self.left[trees, node], self.right[trees, node])
            node = np.where(self.leaf[trees, node], node, step)
        values = np.empty((n, n_trees + 1), dtype=np.float64)
        values[:, 0] = self.baseline
        values[:, 1:] = self.value[trees, node]
        return np.cumsum(values, axis=1)[:, -1]  # sequential, like sklearn's raw_predictions += tree


_THREADPOOLS: Any = None


def _openmp_limit(n_threads: int | None) -> Any:
    """``threadpool_limits`` for OpenMP through one cached ``ThreadpoolController``: building a new one
    scans every loaded library (~5 ms), which a one-row prediction cannot afford."""
    global _THREADPOOLS
    if _THREADPOOLS is None:
        from threadpoolctl import ThreadpoolController

        _THREADPOOLS = ThreadpoolController()
    return _THREADPOOLS.limit(limits=n_threads or None, user_api="openmp")


class SklearnModel(_TreeModel):
    """scikit-learn HistGradientBoostingRegressor, saved with skops (model.skops), loaded behind an allow-list."""

    family = "sklearn"
    passthrough_params = False
    artifact_files = ("model.skops",)
    libraries = ("sklearn", "skops")

    @classmethod
    def default_params(cls) -> dict[str, Any]:
        """Defaults of the sklearn family (HistGradientBoostingRegressor arguments plus target
        ``clip_sigma``); an override that is not one of these raises ``ModelError``.
        """
        return {
            "loss": "squared_error",
            "learning_rate": 0.05,
            "max_iter": 300,
            "max_depth": 4,
            "max_leaf_nodes": 15,
            "min_samples_leaf": 200,
            "l2_regularization": 1.0,
            "max_features": 0.8,
            "max_bins": 127,
            "n_iter_no_change": 25,
            "clip_sigma": 5.0,
        }

    def _estimator_params(self) -> dict[str, Any]:
        return {k: v for k, v in self.params.items() if k != "clip_sigma"}

    @classmethod
    def search_space(cls) -> dict[str, Dim]:
        """Leaves, depth, learning rate, leaf size, feature share and L2 around the defaults."""
        return {
            "max_leaf_nodes": Dim.integer(4, 31, log=True),
            "max_depth": Dim.integer(2, 6),
            "learning_rate": Dim.real(0.01, 0.2, log=True),
            "min_samples_leaf": Dim.integer(20, 2000, log=True),
            "max_features": Dim.real(0.4, 1.0),
            "l2_regularization": Dim.real(0.01, 100.0, log=True),
        }

    def _fit(self, X: np.ndarray, y: np.ndarray, X_valid: np.ndarray | None, y_valid: np.ndarray | None) -> None:
        from sklearn.ensemble import HistGradientBoostingRegressor
        has_valid = X_valid is not None and y_valid is not None
        est = HistGradientBoostingRegressor(**self._estimator_params(), early_stopping=has_valid,
                                            random_state=self.seed)
        with _openmp_limit(self.n_threads):
            if has_valid:
                est.fit(X, y, X_val=X_valid, y_val=y_valid)
            else:
                est.fit(X, y)
        self.fit_info["n_trees"] = int(est.n_iter_)
        self._est = est

    def _predict(self, X: np.ndarray) -> np.ndarray:
        if X.shape[0] <= _SklearnForest.MAX_ROWS:
            forest = self.__dict__.get("_forest")
            if forest is None or forest.est is not self._est:
                forest = self._forest = _SklearnForest(self._est)
            if forest.ok:
                return forest.predict(X)
        with _openmp_limit(self.n_threads):
            return self._est.predict(X)

    def _save_artifacts(self, directory: Path) -> dict[str, Any]:
        import skops.io as sio

        sio.dump(self._est, directory / "model.skops")
        return {"n_features": len(self.columns)}

    def _load_artifacts(self, directory: Path, extra: dict[str, Any]) -> None:
        import skops.io as sio
        from sklearn.ensemble import HistGradientBoostingRegressor

        path = directory / "model.skops"
        untrusted = set(sio.get_untrusted_types(file=path))
        refused = sorted(untrusted - SKOPS_ALLOWED_TYPES)
        if refused:
            raise ModelError(f"{path} holds types that are not allowed: {refused}",
                             hint="only HistGradientBoostingRegressor models written by tideline are loaded")
        est = sio.load(path, trusted=sorted(untrusted))
        if not isinstance(est, HistGradientBoostingRegressor):
            raise ModelError(f"{path} holds a {type(est).__name__}, not a HistGradientBoostingRegressor")
        if int(getattr(est, "n_features_in_", -1)) != len(self.columns):
            raise ModelError(f"model.skops expects {getattr(est, 'n_features_in_', '?')} features; model.json "
                             f"lists {len(self.columns)} columns")
        self._est = est
