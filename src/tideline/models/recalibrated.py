"""Production, recalibrated: a warm start from a fitted model after the market changed.

Its prediction is ``a + b * base(x)``: the fitted base model's forecast mapped by an affine line fitted
(least squares) on new rows. After a change that keeps what the base learned but changes its scale or its
sign (a signal that flips, one that weakens), two coefficients are all that must be learned again, and a few
hundred rows pin them down where a fresh model of hundreds of parameters learns little. When the base's
forecast no longer means anything, ``b`` comes out near 0 and the candidate fails the gate like any other.

It is built from a fitted base (``RecalibratedModel.on``) and fitted like any family (``fit`` fits the line
only; the base is never changed), so the purged walk-forward and the hold-out judge it exactly as they
judge a trained family. Saved as one model directory: ``recalibration.json`` (the line, the base's version
and training end, the sha256 of the base's ``model.json``) and the base's own files under ``base/``
(verified by its own ``model.json`` when loaded). A base that is itself recalibrated is unwrapped: a line
of a line is a line, fitted on the same rows to the same values. SHAP values are the base's, times ``b``.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from tideline.errors import ModelError
from tideline.models.base import META_FILE, Model, StoredSpec, load_model

RECALIBRATION_FILE = "recalibration.json"
BASE_DIR = "base"


class RecalibratedModel(Model):
    """``a + b * base(x)`` (see the module docstring)."""

    family = "recalibrated"
    artifact_files: ClassVar[tuple[str, ...]] = (RECALIBRATION_FILE,)

    def __init__(self, *, seed: int = 0, params: dict[str, Any] | None = None, n_threads: int = 0) -> None:
        super().__init__(seed=seed, params=params, n_threads=n_threads)
        self.base: Model | None = None
        self.base_version: str | None = None
        self.base_training_end: str | None = None
        self.intercept = 0.0
        self.slope = 1.0

    @classmethod
    def default_params(cls) -> dict[str, Any]:
        """The line has no hyperparameters."""
        return {}

    @classmethod
    def on(cls, base: Model, *, version: str | None = None, training_end: str | None = None,
           seed: int = 0) -> RecalibratedModel:
        """An unfitted recalibration of the fitted ``base`` (registered as ``version``, trained on rows up to
        ``training_end``); a recalibrated base is unwrapped to its own base."""
        if isinstance(base, RecalibratedModel):
            version, training_end = base.base_version, base.base_training_end
            assert base.base is not None
            base = base.base
        if not base.is_fitted:
            raise ModelError("a recalibration needs a fitted base model")
        if base.family == "torch":
            raise ModelError("a torch model reads sequences of bars, not feature rows: it cannot be recalibrated")
        m = cls(seed=seed)
        m.base, m.base_version, m.base_training_end = base, version, training_end
        return m

    # -- hooks ---------------------------------------------------------------------------------
    def _input_columns(self, spec: StoredSpec) -> list[str]:
        if self.base is None:
            raise ModelError("a recalibration is built on a base model (RecalibratedModel.on)")
        missing = [c for c in self.base.columns if c not in spec.all_columns]
        if missing:
            raise ModelError(f"the base model reads columns these features lack: {missing[:5]}")
        return list(self.base.columns)

    def _fit(self, X: np.ndarray, y: np.ndarray, X_valid: np.ndarray | None, y_valid: np.ndarray | None) -> None:
        assert self.base is not None
        f = self.base.predict_array(X)
        if X_valid is not None and y_valid is not None and len(X_valid):  # a line needs no early stopping
            f = np.concatenate([f, self.base.predict_array(X_valid)])
            y = np.concatenate([y, y_valid])
        var = float(np.var(f))
        if len(f) < 3 or not np.isfinite(var) or var <= 1e-24:
            raise ModelError("the base model's forecasts do not vary on these rows: nothing to recalibrate")
        self.slope = float(np.cov(f, y, bias=True)[0, 1] / var)
        self.intercept = float(np.mean(y) - self.slope * np.mean(f))
        self.fit_info.update({"slope": self.slope, "intercept": self.intercept, "base_version": self.base_version})

    def _predict(self, X: np.ndarray) -> np.ndarray:
        assert self.base is not None
        return self.intercept + self.slope * self.base.predict_array(X)

    def _contributions(self, X: np.ndarray) -> np.ndarray | None:
        assert self.base is not None
        c = self.base.contributions(X)
        if c is None:
            return None
        out = self.slope * c
        out[:, -1] += self.intercept
        return out

    def _save_artifacts(self, directory: Path) -> dict[str, Any]:
        assert self.base is not None
        self.base.save(directory / BASE_DIR)
        doc = {"intercept": self.intercept, "slope": self.slope, "base_family": self.base.family,
               "base_version": self.base_version, "base_training_end": self.base_training_end,
               "base_model_json_sha256": hashlib.sha256((directory / BASE_DIR / META_FILE).read_bytes()).hexdigest()}
        (directory / RECALIBRATION_FILE).write_text(json.dumps(doc, indent=2), encoding="utf-8")
        return {"base_family": self.base.family, "base_version": self.base_version}

    def _load_artifacts(self, directory: Path, extra: dict[str, Any]) -> None:
        doc = json.loads((directory / RECALIBRATION_FILE).read_text(encoding="utf-8"))
        sub = directory / BASE_DIR
        digest = hashlib.sha256((sub / META_FILE).read_bytes()).hexdigest()
        if digest != doc["base_model_json_sha256"]:
            raise ModelError(f"the base model under {sub} is corrupt (sha256 of its {META_FILE} does not match)")
        base = load_model(sub)
        if base.family != doc["base_family"] or base.family in ("recalibrated", "torch"):
            raise ModelError(f"{sub} holds a {base.family!r} model, not {doc['base_family']!r}")
        if list(base.columns) != list(self.columns):
            raise ModelError("the base model's columns do not match the recalibration's model.json")
        self.base = base
        self.base_version, self.base_training_end = doc.get("base_version"), doc.get("base_training_end")
        self.intercept, self.slope = float(doc["intercept"]), float(doc["slope"])
        if not (np.isfinite(self.intercept) and np.isfinite(self.slope)):
            raise ModelError(f"{RECALIBRATION_FILE} holds a line that is not finite")


__all__ = ["RECALIBRATION_FILE", "RecalibratedModel"]
