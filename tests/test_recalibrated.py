"""Production recalibrated (issue 23): a warm start after a change — the line ``a + b * production(x)`` as one
more candidate, fitted and judged like a family, and offered only when production never saw the window."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import FAST_PARAMS
from tideline.config import load_settings
from tideline.data import synthetic_market
from tideline.errors import ModelError
from tideline.models import StoredSpec, load_model, make_model
from tideline.models.recalibrated import RecalibratedModel
from tideline.registry import open_registry
from tideline.training.cycle import CycleRunner, min_history


def _data(n: int, sign: float, seed: int = 0) -> tuple[pd.DataFrame, np.ndarray, StoredSpec]:
    rng = np.random.default_rng(seed)
    cols = ["strong", "weak", "noise"]
    X = pd.DataFrame(rng.standard_normal((n, 3)).astype(np.float32), columns=cols)
    y = sign * 1e-3 * (X["strong"] + 0.3 * X["weak"]).to_numpy(np.float64) + 3e-4 * rng.standard_normal(n)
    return X, y, StoredSpec(cols, [], [], 0)


def _base() -> tuple[object, StoredSpec]:
    X, y, spec = _data(2000, +1.0)
    return make_model("lightgbm", seed=0, params={"num_boost_round": 60}, n_threads=1).fit(X, y, spec), spec


def test_the_line_learns_a_flipped_sign_from_few_rows_and_survives_a_save(tmp_path: Path) -> None:
    base, spec = _base()
    X, y, _ = _data(300, -1.0, seed=1)  # the signal flipped: 300 rows of the new regime
    m = RecalibratedModel.on(base, version="v1", training_end="2020-01-01T00:00:00").fit(X, y, spec)
    assert m.slope < 0 and m.fit_info["base_version"] == "v1"
    Xt, yt, _ = _data(2000, -1.0, seed=2)
    hit = np.mean(np.sign(m.predict(Xt)) == np.sign(yt))
    fresh = make_model("lightgbm", seed=0, params={"num_boost_round": 60}, n_threads=1).fit(X, y, spec)
    assert hit > 0.8 and hit > np.mean(np.sign(fresh.predict(Xt)) == np.sign(yt)) + 0.05
    np.testing.assert_allclose(m.predict(Xt), m.y_center + m.y_scale * (m.intercept + m.slope * base.predict(Xt)))
    c = m.contributions(Xt[m.columns].to_numpy(np.float32)[:50])  # the base's SHAP values, times the slope
    assert c is not None
    np.testing.assert_allclose(c.sum(axis=1), m.predict(Xt.iloc[:50]), rtol=1e-4, atol=1e-9)

    assert m.save(tmp_path / "r") == ["recalibration.json", "model.json"]
    back = load_model(tmp_path / "r")
    assert back.family == "recalibrated" and back.base_version == "v1" and back.base.family == "lightgbm"
    np.testing.assert_allclose(back.predict(Xt), m.predict(Xt))
    # a line of a line is a line: recalibrating it again starts from the same base, with the same fitted values
    again = RecalibratedModel.on(back).fit(X, y, spec)
    assert again.base.family == "lightgbm" and again.base_version == "v1"
    np.testing.assert_allclose(again.predict(Xt), m.predict(Xt), rtol=1e-6, atol=1e-12)
    # the base's files changed after the save: refused, never served
    meta = tmp_path / "r" / "base" / "model.json"
    meta.write_text(meta.read_text().replace('"seed": 0', '"seed": 1'))
    with pytest.raises(ModelError, match="base model under .* is corrupt"):
        load_model(tmp_path / "r")


def test_a_base_that_predicts_a_constant_cannot_be_recalibrated() -> None:
    base, spec = _base()
    X, y, _ = _data(300, -1.0)
    X[:] = 0.0
    with pytest.raises(ModelError, match="do not vary"):
        RecalibratedModel.on(base).fit(X, y, spec)
    with pytest.raises(ModelError, match="built on a base"):
        RecalibratedModel().fit(X, y, spec)


def _settings(tmp_path: Path):  # noqa: ANN202
    s = load_settings(registry=(tmp_path / "reg").as_uri())
    return s.model_copy(update={
        "training": s.training.model_copy(update={"params": FAST_PARAMS, "families": ["lightgbm"], "n_threads": 1}),
        "evaluation": s.evaluation.model_copy(update={"n_splits": 3, "bootstrap_samples": 300}),
    })


@pytest.mark.slow
def test_a_cycle_after_a_flip_offers_production_recalibrated_only_on_a_window_it_never_saw(tmp_path: Path) -> None:
    s = _settings(tmp_path)
    reg = open_registry(s.registry_uri())
    bars = synthetic_market(6, 1500, seed=7, shifts=[900], signal_strength=0.6)
    ts = np.sort(bars["timestamp"].unique())
    w = min_history(s.features)
    pre = bars[bars["timestamp"] < ts[700]]
    pre.to_parquet(tmp_path / "pre.parquet")
    first = CycleRunner(s, reg).run(tmp_path / "pre.parquet")
    assert first.promoted_version and "recalibrated" not in {c.family for c in first.candidates}  # no production

    # the window overlaps production's training rows, or only the hold-out that chose it: a recalibration would
    # be scored on rows that fitted or picked it
    mv = reg.get(first.promoted_version)
    assert pd.Timestamp(mv.training_window["end"]) < ts[580 + w] < pd.Timestamp(mv.evaluation["holdout"]["end"])
    for start in (500, 580):
        bars[bars["timestamp"] >= ts[start]].to_parquet(tmp_path / "overlap.parquet")
        res = CycleRunner(s, reg).run(tmp_path / "overlap.parquet", promote=False)
        assert "recalibrated" not in {c.family for c in res.candidates}, start

    # the window starts after the flip: production recalibrated is one more candidate, counted as a trial
    bars[bars["timestamp"] >= ts[900 - w]].to_parquet(tmp_path / "post.parquet")
    res = CycleRunner(s, reg).run(tmp_path / "post.parquet", promote=False)
    by = {c.family: c for c in res.candidates}
    assert set(by) == {"lightgbm", "recalibrated"}
    rc = by["recalibrated"]
    assert rc.evidence is not None and rc.evidence.n_trials == by["lightgbm"].evidence.n_trials
    mv = reg.get(rc.version)
    assert mv.family == "recalibrated" and mv.parent_version == first.promoted_version
    model = load_model(reg.fetch(rc.version, tmp_path / "fetched"))
    assert model.slope < 0  # it learned that the signal flipped
    assert rc.holdout.directional_accuracy > 0.6 > res.production_metrics.directional_accuracy


def test_the_best_approved_candidate_is_chosen_over_every_out_of_sample_block() -> None:
    from types import SimpleNamespace

    from tideline.training.cycle import choose_best, out_of_sample_sharpe

    def cand(name: str, hold: float, folds: list[float], approved: bool = True) -> SimpleNamespace:
        return SimpleNamespace(family=name, version=name, decision=SimpleNamespace(approved=approved),
                               holdout=SimpleNamespace(sharpe=hold), folds=[{"sharpe": f} for f in folds])

    lucky = cand("fresh", 37.6, [-5.0, 10.0, 20.0, 38.0])  # the best hold-out, by a short hold-out's luck
    steady = cand("recalibrated", 32.0, [40.0, 38.0, 41.0, 42.0])
    assert out_of_sample_sharpe(steady) == pytest.approx((32 + 40 + 38 + 41 + 42) / 5)
    assert choose_best([lucky, steady]).family == "recalibrated"
    assert choose_best([lucky, cand("rejected", 99.0, [99.0], approved=False)]).family == "fresh"
    assert choose_best([cand("x", 1.0, [float("nan")])]).family == "x"  # a fold without a Sharpe is left out
    assert choose_best([cand("x", 1.0, [], approved=False)]) is None


def test_a_recalibration_that_fails_leaves_the_other_candidates_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    from types import SimpleNamespace

    from tideline.training import cycle

    def boom(*a: object, **k: object) -> None:
        raise ValueError("numbers went wrong")

    monkeypatch.setattr(cycle, "train_family", boom)
    monkeypatch.setattr(cycle, "_base_training_end", lambda m, mv: pd.Timestamp("2000-01-01"))
    s = load_settings()
    ds = SimpleNamespace(meta=pd.DataFrame({"timestamp": pd.date_range("2024-01-01", periods=3, freq="h")}))
    prod = cycle.ProductionScore("v1", model=object(), manifest=SimpleNamespace(version="v1"))  # type: ignore[arg-type]
    assert cycle.recalibrated_result(prod, ds, None, s) is None  # type: ignore[arg-type]
