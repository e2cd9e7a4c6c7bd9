"""End-to-end cycles with every model family, on a small synthetic market and on real example data."""

from __future__ import annotations

import io
from pathlib import Path

import pandas as pd
import pytest

from conftest import EXAMPLES, FAST_PARAMS, NO_LUCK_CHECKS
from tideline.config import Settings, load_settings
from tideline.errors import DataError, ValidationError
from tideline.registry import open_registry
from tideline.training.cycle import CycleRunner

pytestmark = pytest.mark.slow

SYN = {"n_symbols": 5, "n_bars": 1500, "seed": 3}


def _settings(tmp_path: Path, **train) -> Settings:
    s = load_settings(registry=(tmp_path / "reg").as_uri())
    return s.model_copy(update={
        "training": s.training.model_copy(update={"params": FAST_PARAMS, **train}),
        "evaluation": s.evaluation.model_copy(update={"n_splits": 3, "bootstrap_samples": 300}),
    })


def test_full_cycle_registers_every_family_and_compares_with_production(tmp_path):
    s = _settings(tmp_path)
    reg = open_registry(s.registry_uri())
    res = CycleRunner(s, reg).run(synthetic=SYN)
    fams = {c.family for c in res.candidates}
    assert fams == {"xgboost", "lightgbm", "sklearn", "torch", "ensemble"}  # the equal-weight ensemble too
    versions = reg.list_versions()
    assert len(versions) == 5
    ens = next(c for c in res.candidates if c.family == "ensemble")
    assert reg.get(ens.version).family == "ensemble" and "members.json" in reg.get(ens.version).artifacts
    for mv in versions:
        assert mv.artifacts and all(len(a.sha256) == 64 for a in mv.artifacts.values())
        assert mv.decision is not None and mv.decision["reasons"]
        assert mv.metrics["n_obs"] > 0
        assert mv.data_hash and mv.feature_config_hash and mv.training_window["n_rows"] > 0
        assert "baselines" in mv.evaluation and "walk_forward" in mv.evaluation
        ref = pd.read_parquet(io.BytesIO(reg.get_attachment(mv.version, "reference.parquet")))
        assert len(ref) > 100 and "prediction" in ref and ref["prediction"].notna().all()
        assert ref["timestamp"].max() <= pd.Timestamp(mv.training_window["end"])  # training rows only
    assert set(res.baselines) >= {"buy_and_hold", "always_long", "last_return_sign"}
    for c in res.candidates:
        assert len(c.folds) == 3
        assert c.decision.approved == all(ch.passed for ch in c.decision.checks)
        # the checks luck cannot pass, on the first promotion too; the figures in the record
        assert {"vs_baseline", "walk_forward", "deflated_sharpe"} <= {ch.name for ch in c.decision.checks}
        d = c.to_dict()
        assert 0.0 <= d["deflated_sharpe"] <= 1.0 and d["evidence"]["n_trials"] == 5
        assert d["pbo"] is not None and 0.0 <= d["pbo"] <= 1.0
        assert d["evidence"]["baseline"] in ("buy_and_hold", "always_long")
        assert len(d["evidence"]["fold_sharpes"]) == 3
        assert reg.get(c.version).evaluation["evidence"] == d["evidence"]
    assert len({c.to_dict()["pbo"] for c in res.candidates}) == 1  # one figure for the cycle's selection
    approved = [c for c in res.candidates if c.decision.approved]
    if approved:  # the promoted one is the best approved by hold-out Sharpe
        best = max(approved, key=lambda c: c.holdout.sharpe)
        assert res.promoted_version == best.version == reg.aliases()["production"]
    else:
        assert res.promoted_version is None and "production" not in reg.aliases()

    # A second cycle is measured against production on the same hold-out window.
    if res.promoted_version:
        res2 = CycleRunner(s, reg).run(synthetic=SYN)
        assert res2.production_version == res.promoted_version
        assert res2.production_metrics is not None
        prod_fam = next(c for c in res.candidates if c.promoted)
        # Same data, same seed, same window: production scores exactly what it scored as a candidate.
        assert res2.production_metrics.sharpe == pytest.approx(prod_fam.holdout.sharpe, rel=1e-9, abs=1e-12)
        assert all(c.p_value is not None for c in res2.candidates)
        assert len(reg.list_versions()) == 10
        for c in res2.candidates:
            assert c.decision.compared_to == res.promoted_version


def test_planted_signal_is_learned_out_of_sample(tmp_path):
    s = _settings(tmp_path, families=["lightgbm"])
    res = CycleRunner(s, open_registry(s.registry_uri())).run(synthetic={"n_symbols": 8, "n_bars": 2500, "seed": 5})
    c = res.candidates[0]
    assert c.holdout.directional_accuracy > 0.515
    assert c.holdout.ic > 0.02


def test_bad_data_registers_nothing_and_leaves_production(tmp_path):
    s = _settings(tmp_path, families=["lightgbm"])
    reg = open_registry(s.registry_uri())
    df = pd.read_csv(EXAMPLES / "GOOG_1d.csv")
    good = tmp_path / "good.csv"
    df.to_csv(good, index=False)
    CycleRunner(s, reg).run(str(good))
    before_versions = [v.version for v in reg.list_versions()]
    before_aliases = reg.aliases()
    bad = df.copy()
    bad.loc[100, "high"] = bad.loc[100, "low"] - 1.0
    bad_path = tmp_path / "bad.csv"
    bad.to_csv(bad_path, index=False)
    with pytest.raises(ValidationError, match="high"):
        CycleRunner(s, reg).run(str(bad_path))
    with pytest.raises(DataError):
        CycleRunner(s, reg).run(str(tmp_path / "missing.csv"))
    assert [v.version for v in reg.list_versions()] == before_versions
    assert reg.aliases() == before_aliases


def test_real_goog_cycle_reports_baselines(tmp_path):
    s = _settings(tmp_path, families=["xgboost", "sklearn"])
    res = CycleRunner(s, open_registry(s.registry_uri())).run(str(EXAMPLES / "GOOG_1d.csv"))
    assert res.data["periods_per_year"] == pytest.approx(252, rel=0.1)
    assert res.data["symbols"] == ["GOOG"]
    assert res.baselines["buy_and_hold"].n_obs == res.candidates[0].holdout.n_obs
    for c in res.candidates:
        assert c.version is not None
        assert -10 < c.holdout.sharpe < 10


def test_corrupted_production_blocks_promotion_and_says_why(tmp_path):
    s = _settings(tmp_path, families=["lightgbm"])
    s = s.model_copy(update={"policy": s.policy.model_copy(update={"min_sharpe": -100.0, "min_trades": 0,
                                                                   "max_drawdown": 10.0, **NO_LUCK_CHECKS})})
    reg = open_registry(s.registry_uri())
    res = CycleRunner(s, reg).run(synthetic=SYN)
    prod = res.promoted_version
    assert prod is not None
    mv = reg.get(prod)
    # corrupt one artifact byte in the file store
    target = tmp_path / "reg" / mv.artifact_prefix.strip("/") / "model.txt"
    assert target.is_file()
    target.write_bytes(b"x" + target.read_bytes()[1:])
    res2 = CycleRunner(s, reg).run(synthetic=SYN)
    assert res2.production_error and "sha256" in res2.production_error.lower()
    assert res2.promoted_version is None
    assert reg.aliases()["production"] == prod


def test_cycle_against_s3_registry(s3_server, monkeypatch):
    """The whole cycle with the registry on a real S3 API (moto's server on loopback), as with MinIO."""
    import boto3

    boto3.client("s3", endpoint_url=s3_server, region_name="us-east-1").create_bucket(Bucket="models")
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server)
    s = load_settings(registry="s3://models/tideline")
    s = s.model_copy(update={
        "training": s.training.model_copy(update={"params": FAST_PARAMS, "families": ["lightgbm", "torch"]}),
        "evaluation": s.evaluation.model_copy(update={"n_splits": 2, "bootstrap_samples": 200}),
        "policy": s.policy.model_copy(update={"min_sharpe": -100.0, "min_trades": 0, "max_drawdown": 10.0,
                                               **NO_LUCK_CHECKS}),
    })
    reg = open_registry(s.registry_uri(), endpoint_url=s.endpoint_url())
    res = CycleRunner(s, reg).run(synthetic={"n_symbols": 3, "n_bars": 900, "seed": 1})
    assert res.promoted_version is not None
    assert {v.version for v in reg.list_versions()} == {c.version for c in res.candidates}
    assert reg.aliases()["production"] == res.promoted_version
    objs = boto3.client("s3", endpoint_url=s3_server).list_objects_v2(Bucket="models", Prefix="tideline/")
    keys = [o["Key"] for o in objs.get("Contents", [])]
    assert any(k.endswith("state.json") for k in keys) and any("/versions/" in k for k in keys)


def test_a_failing_family_does_not_sink_the_cycle(tmp_path):
    from tideline.errors import ModelError

    params = {**FAST_PARAMS, "sklearn": {"max_iter": -5}}  # sklearn refuses it: its training fails
    s = _settings(tmp_path, families=["lightgbm", "sklearn"], params=params)
    reg = open_registry(s.registry_uri())
    res = CycleRunner(s, reg).run(synthetic=SYN)
    assert [c.family for c in res.candidates] == ["lightgbm"] and list(res.failures) == ["sklearn"]
    assert "max_iter" in res.failures["sklearn"] and "\n" not in res.failures["sklearn"]
    assert res.to_dict()["failures"] == res.failures
    assert [mv.family for mv in reg.list_versions()] == ["lightgbm"]  # the others are still registered
    s_all = _settings(tmp_path, families=["sklearn"], params=params)
    with pytest.raises(ModelError, match="every model family failed to train: sklearn: .*max_iter"):
        CycleRunner(s_all, reg).run(synthetic=SYN)
