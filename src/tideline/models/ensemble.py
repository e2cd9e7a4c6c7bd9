"""An equal-weight ensemble of fitted models: its prediction is the mean of its members' predictions.

It is built from members that are already trained (``EnsembleModel.of``), never fitted itself, and saved as
one model directory: ``members.json`` (each member's family, folder and the sha256 of its ``model.json``)
plus each member's own files under ``member-<family>/`` (each verified by its own ``model.json`` when
loaded). Its columns are the union of its members' (in first-seen order); each member reads its own.
SHAP values are additive, so where every member has exact ones the ensemble's are their mean.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from tideline.errors import ModelError
from tideline.models.base import META_FILE, Model, StoredSpec, load_model

MEMBERS_FILE = "members.json"


class EnsembleModel(Model):
    """The mean of its members' predictions (see the module docstring)."""

    family = "ensemble"
    artifact_files: ClassVar[tuple[str, ...]] = (MEMBERS_FILE,)

    def __init__(self, *, seed: int = 0, params: dict[str, Any] | None = None, n_threads: int = 0) -> None:
        super().__init__(seed=seed, params=params, n_threads=n_threads)
        self.members: list[Model] = []
        self._index: list[np.ndarray] = []

    @classmethod
    def default_params(cls) -> dict[str, Any]:
        """An ensemble has no hyperparameters of its own (its members keep theirs)."""
        return {}

    @classmethod
    def of(cls, members: list[Model], *, seed: int = 0) -> EnsembleModel:
        """The equal-weight ensemble of fitted ``members`` (at least two, each family at most once)."""
        if len(members) < 2:
            raise ModelError("an ensemble needs at least two fitted members")
        families = [m.family for m in members]
        if len(set(families)) != len(families) or "ensemble" in families:
            raise ModelError(f"an ensemble takes each family once, and no ensemble: {families}")
        if any(not m.is_fitted for m in members):
            raise ModelError("an ensemble is built from fitted members")
        ens = cls(seed=seed)
        ens._set_members(members)
        first = members[0]
        ens.spec, ens.spec_dict = first.spec, dict(first.spec_dict)
        ens.fit_info = {"members": families}
        ens._fitted = True
        return ens

    def _set_members(self, members: list[Model]) -> None:
        columns: list[str] = []
        for m in members:
            columns += [c for c in m.columns if c not in columns]
        pos = {c: i for i, c in enumerate(columns)}
        self.members = list(members)
        self.columns = columns
        self._index = [np.array([pos[c] for c in m.columns], dtype=np.intp) for m in members]

    # -- hooks ---------------------------------------------------------------------------------
    def _input_columns(self, spec: StoredSpec) -> list[str]:
        return list(self.columns)

    def _fit(self, X: np.ndarray, y: np.ndarray, X_valid: np.ndarray | None, y_valid: np.ndarray | None) -> None:
        raise ModelError("an ensemble is not fitted: build it from fitted members (EnsembleModel.of)")

    def _predict(self, X: np.ndarray) -> np.ndarray:
        out = np.zeros(len(X), dtype=np.float64)
        for m, idx in zip(self.members, self._index, strict=True):
            out += m.predict_array(np.ascontiguousarray(X[:, idx]))
        return out / len(self.members)

    def _contributions(self, X: np.ndarray) -> np.ndarray | None:
        total = np.zeros((len(X), len(self.columns) + 1), dtype=np.float64)
        for m, idx in zip(self.members, self._index, strict=True):
            c = m.contributions(np.ascontiguousarray(X[:, idx]))
            if c is None:
                return None
            total[:, idx] += c[:, :-1]
            total[:, -1] += c[:, -1]
        return total / len(self.members)

    def _save_artifacts(self, directory: Path) -> dict[str, Any]:
        listed = []
        for m in self.members:
            sub = f"member-{m.family}"
            m.save(directory / sub)
            listed.append({"family": m.family, "dir": sub,
                           "model_json_sha256": hashlib.sha256((directory / sub / META_FILE).read_bytes()).hexdigest()})
        (directory / MEMBERS_FILE).write_text(json.dumps({"members": listed}, indent=2), encoding="utf-8")
        return {"members": [m.family for m in self.members]}

    def _load_artifacts(self, directory: Path, extra: dict[str, Any]) -> None:
        doc = json.loads((directory / MEMBERS_FILE).read_text(encoding="utf-8"))
        members = []
        for entry in doc["members"]:
            sub = directory / str(entry["dir"])
            if sub.parent != directory or not str(entry["dir"]).startswith("member-"):
                raise ModelError(f"{MEMBERS_FILE} names a member outside the model: {entry['dir']!r}")
            digest = hashlib.sha256((sub / META_FILE).read_bytes()).hexdigest()
            if digest != entry["model_json_sha256"]:
                raise ModelError(f"member {entry['dir']} is corrupt (sha256 of its {META_FILE} does not match)")
            m = load_model(sub)
            if m.family != entry["family"] or m.family == "ensemble":
                raise ModelError(f"member {entry['dir']} holds a {m.family!r} model, not {entry['family']!r}")
            members.append(m)
        if len(members) < 2:
            raise ModelError(f"{MEMBERS_FILE} lists fewer than two members")
        stored = list(self.columns)
        self._set_members(members)
        if self.columns != stored:
            raise ModelError("the members' columns do not match the ensemble's model.json")
        self.y_center, self.y_scale = 0.0, 1.0


__all__ = ["MEMBERS_FILE", "EnsembleModel"]
