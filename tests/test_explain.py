"""Feature importance per version (issue 22, part 3): exact TreeSHAP for lightgbm/xgboost, permutation for the
others, and the change between two importances."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from tideline.errors import DataError
from tideline.models import StoredSpec, make_model
from tideline.models.explain import Importance, compare, importance


def _data(n: int = 3000) -> tuple[pd.DataFrame, np.ndarray, StoredSpec]:
    rng = np.random.default_rng(0)
    cols = ["strong", "weak", "noise1", "noise2"]
    X = pd.DataFrame(rng.standard_normal((n, 4)).astype(np.float32), columns=cols)
    y = 1e-3 * (1.0 * X["strong"] + 0.3 * X["weak"]).to_numpy(np.float64) + 1e-4 * rng.standard_normal(n)
    return X, y, StoredSpec(cols, [], [], 0)


FAST = {"xgboost": {"num_boost_round": 80}, "lightgbm": {"num_boost_round": 80, "min_data_in_leaf": 20},
        "sklearn": {"max_iter": 80}}


@pytest.mark.parametrize("family", ["lightgbm", "xgboost", "sklearn"])
def test_the_feature_that_drives_the_target_ranks_first(family: str) -> None:
    X, y, spec = _data()
    m = make_model(family, seed=0, params=FAST[family], n_threads=1).fit(X.iloc[:2500], y[:2500], spec)
    imp = importance(m, X.iloc[2500:])
    assert imp.method == ("permutation" if family == "sklearn" else "tree_shap")
    assert [c for c, _ in imp.top(2)] == ["strong", "weak"] and imp.n_rows == 500
    assert imp.values["strong"] > 2 * imp.values["weak"] > 0
    assert Importance.from_dict(imp.to_dict()) == imp  # stored and read back as JSON


@pytest.mark.parametrize("family", ["lightgbm", "xgboost"])
def test_tree_shap_values_sum_to_the_prediction(family: str) -> None:
    """The exact SHAP values of the libraries, scaled back into prediction units (the target scaler)."""
    X, y, spec = _data()
    m = make_model(family, seed=0, params=FAST[family], n_threads=1).fit(X, y, spec)
    rows = X.iloc[:50][m.columns].to_numpy(np.float32)
    c = m.contributions(rows)
    assert c is not None and c.shape == (50, 5)
    np.testing.assert_allclose(c.sum(axis=1), m.predict_array(rows), rtol=1e-4, atol=1e-9)


def test_compare_names_what_moved() -> None:
    before = Importance("tree_shap", {"a": 4.0, "b": 3.0, "c": 2.0, "d": 1.0}, 100)
    assert compare(before, before).rank_correlation == pytest.approx(1.0)
    after = Importance("tree_shap", {"d": 4.0, "c": 3.0, "b": 2.0, "a": 1.0}, 100)
    ch = compare(before.to_dict(), after, top=2)
    assert ch.rank_correlation == pytest.approx(-1.0)
    assert ch.top_before == ["a", "b"] and ch.top_after == ["d", "c"]
    moved = {m["feature"]: (m["before"], m["after"]) for m in ch.moved}
    assert moved == {"a": pytest.approx((0.4, 0.1)), "d": pytest.approx((0.1, 0.4))}
    assert "rank correlation -1.00" in ch.summary() and "a 40% -> 10%" in ch.summary()
    with pytest.raises(DataError, match="fewer than two features"):
        compare({"values": {"x": 1.0}}, after)


def test_rows_without_the_models_columns_are_a_one_line_error() -> None:
    X, y, spec = _data(600)
    m = make_model("lightgbm", seed=0, params=FAST["lightgbm"], n_threads=1).fit(X, y, spec)
    with pytest.raises(DataError, match="lack the model's columns"):
        importance(m, X.drop(columns=["strong"]))
    with pytest.raises(DataError, match="no rows"):
        importance(m, X.iloc[:0])


# ---- the ensemble model ------------------------------------------------------------------------------------
def test_an_ensemble_predicts_its_members_mean_and_survives_a_save(tmp_path) -> None:  # noqa: ANN001
    from tideline.errors import ModelError
    from tideline.models import load_model
    from tideline.models.ensemble import EnsembleModel

    X, y, spec = _data(1500)
    members = [make_model(f, seed=0, params=FAST[f], n_threads=1).fit(X, y, spec) for f in ("lightgbm", "xgboost")]
    ens = EnsembleModel.of(members)
    rows = X.iloc[:100]
    want = np.mean([m.predict(rows) for m in members], axis=0)
    np.testing.assert_allclose(ens.predict(rows), want, rtol=1e-6)
    c = ens.contributions(rows[ens.columns].to_numpy(np.float32))  # SHAP is additive: the members' mean
    assert c is not None
    np.testing.assert_allclose(c.sum(axis=1), want, rtol=1e-4, atol=1e-9)
    files = ens.save(tmp_path / "e")
    assert files == ["members.json", "model.json"] and (tmp_path / "e" / "member-xgboost" / "model.json").exists()
    back = load_model(tmp_path / "e")
    assert back.family == "ensemble" and back.columns == ens.columns
    np.testing.assert_allclose(back.predict(rows), want, rtol=1e-6)
    # a member's file changed after the save: refused, never served
    meta = tmp_path / "e" / "member-lightgbm" / "model.json"
    meta.write_text(meta.read_text().replace('"seed": 0', '"seed": 1'))
    with pytest.raises(ModelError, match="member member-lightgbm is corrupt"):
        load_model(tmp_path / "e")
    with pytest.raises(ModelError, match="at least two"):
        EnsembleModel.of(members[:1])
    sk = make_model("sklearn", seed=0, params=FAST["sklearn"], n_threads=1).fit(X, y, spec)
    assert EnsembleModel.of([members[0], sk]).contributions(rows[ens.columns].to_numpy(np.float32)) is None
