import math

from tideline.config import PolicyConfig
from tideline.policy import PolicyDecision, decide

GOOD = {"sharpe": 1.2, "n_trades": 500, "max_drawdown": 0.1, "directional_accuracy": 0.55,
        "profit_factor": 1.3}


def _names(d: PolicyDecision, passed: bool) -> set[str]:
    return {c.name for c in d.checks if c.passed is passed}


def test_first_model_passes_on_absolute_checks():
    d = decide(GOOD, PolicyConfig())
    assert d.approved
    assert _names(d, False) == set()
    assert "vs_production" not in {c.name for c in d.checks}


def test_each_absolute_check_can_fail_with_a_reason():
    cfg = PolicyConfig()
    for field, value, check in [("sharpe", 0.2, "min_sharpe"), ("n_trades", 3, "min_trades"),
                                ("max_drawdown", 0.8, "max_drawdown"), ("sharpe", math.nan, "finite_metrics")]:
        d = decide({**GOOD, field: value}, cfg)
        assert not d.approved
        assert check in _names(d, False)
        assert d.reasons and all(isinstance(r, str) and r for r in d.reasons)


def test_must_beat_production_significantly():
    cfg = PolicyConfig()
    prod = {**GOOD, "sharpe": 1.0}
    assert decide({**GOOD, "sharpe": 1.2}, cfg, production=prod, production_version="v1", p_value=0.01).approved
    d = decide({**GOOD, "sharpe": 1.02}, cfg, production=prod, production_version="v1", p_value=0.01)
    assert not d.approved and "vs_production" in _names(d, False)
    assert "v1" in " ".join(d.reasons)
    d = decide({**GOOD, "sharpe": 1.2}, cfg, production=prod, production_version="v1", p_value=0.4)
    assert not d.approved and _names(d, False) == {"significance"}


def test_tolerance_accepts_an_equal_fresher_model_without_significance():
    cfg = PolicyConfig(tolerance=0.1)
    prod = {**GOOD, "sharpe": 1.0}
    d = decide({**GOOD, "sharpe": 0.95}, cfg, production=prod, production_version="v1", p_value=0.5)
    assert d.approved, d.reasons
    d = decide({**GOOD, "sharpe": 0.85}, cfg, production=prod, production_version="v1", p_value=0.5)
    assert not d.approved


def test_key_metric_floor():
    cfg = PolicyConfig()
    prod = {**GOOD, "sharpe": 1.0, "directional_accuracy": 0.60}
    d = decide({**GOOD, "sharpe": 1.5, "directional_accuracy": 0.50}, cfg, production=prod,
               production_version="v1", p_value=0.01)
    assert not d.approved and _names(d, False) == {"key_metric_floor"}
    assert "directional_accuracy" in " ".join(d.reasons)


def test_unevaluable_production_blocks_automatic_promotion():
    d = decide(GOOD, PolicyConfig(), production_version="v3", production_error="checksum mismatch")
    assert not d.approved and "checksum mismatch" in " ".join(d.reasons)


def test_round_trip():
    d = decide(GOOD, PolicyConfig())
    assert PolicyDecision.from_dict(d.to_dict()).to_dict() == d.to_dict()
