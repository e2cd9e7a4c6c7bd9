import math

from tideline.config import PolicyConfig
from tideline.policy import Evidence, PolicyDecision, decide

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


STRONG = Evidence(deflated_sharpe=0.99, n_trials=4, fold_sharpes=[1.0, 0.4, -0.2, 0.8], baseline="always_long",
                  baseline_sharpe=0.3, p_value_vs_baseline=0.01, pbo=0.1)


def test_the_checks_luck_cannot_pass_apply_to_the_first_promotion_too():
    d = decide(GOOD, PolicyConfig(), evidence=STRONG)
    assert d.approved and d.compared_to is None
    assert {"vs_baseline", "walk_forward", "deflated_sharpe"} <= _names(d, True)
    assert "overfitting" not in {c.name for c in d.checks}  # PBO is reported; it gates only when max_pbo is set
    for change, check in [({"deflated_sharpe": 0.9}, "deflated_sharpe"),
                          ({"p_value_vs_baseline": 0.3}, "vs_baseline"),
                          ({"baseline_sharpe": 1.5}, "vs_baseline"),  # significant, but the baseline did better
                          ({"p_value_vs_baseline": None}, "vs_baseline"),
                          ({"fold_sharpes": [1.0, -0.5, -0.1, 0.2]}, "walk_forward"),  # 2 of 4: not a majority
                          ({"fold_sharpes": [3.0, -0.5, -0.6, 0.2]}, "walk_forward"),
                          ({"fold_sharpes": [-2.0, 0.1, 0.1, 0.1]}, "walk_forward"),  # majority, mean < 0
                          ({"fold_sharpes": []}, "walk_forward")]:
        ev = Evidence.from_dict({**STRONG.to_dict(), **change})
        d = decide(GOOD, PolicyConfig(), evidence=ev)
        assert not d.approved and _names(d, False) == {check}, (change, d.reasons)
        assert all(r for r in d.reasons)
    # the LightGBM of issue 19: hold-out Sharpe 1.05, the best of four, walk-forward 0.03 +- 0.35
    lucky = Evidence(deflated_sharpe=0.62, n_trials=4, fold_sharpes=[0.4, -0.3, 0.2, -0.2], baseline="buy_and_hold",
                     baseline_sharpe=0.7, p_value_vs_baseline=0.31)
    d = decide({**GOOD, "sharpe": 1.05}, PolicyConfig(), evidence=lucky)
    assert not d.approved and _names(d, False) == {"vs_baseline", "walk_forward", "deflated_sharpe"}


def test_each_evidence_check_can_be_configured_off_or_on():
    weak = Evidence(deflated_sharpe=0.5, n_trials=4, fold_sharpes=[1.0, 1.0], baseline="always_long",
                    baseline_sharpe=2.0, p_value_vs_baseline=0.5, pbo=0.6)
    off = PolicyConfig(min_deflated_sharpe=0, require_baseline=False)
    assert decide(GOOD, off, evidence=weak).approved
    d = decide(GOOD, off.model_copy(update={"max_pbo": 0.5}), evidence=weak)
    assert not d.approved and _names(d, False) == {"overfitting"}
    d = decide(GOOD, off.model_copy(update={"max_pbo": 0.5}),
               evidence=Evidence.from_dict({**weak.to_dict(), "pbo": None}))
    assert not d.approved and "n/a" in d.reasons[0]  # a PBO that could not be measured does not pass a limit


def test_evidence_round_trips_with_the_decision():
    d = decide(GOOD, PolicyConfig(), evidence=STRONG)
    assert PolicyDecision.from_dict(d.to_dict()) == d
    assert Evidence.from_dict(STRONG.to_dict()) == STRONG


def test_win_rate_and_profit_factor_floors_are_off_unless_set():
    cand = {"sharpe": 1.2, "n_trades": 80, "max_drawdown": 0.1, "directional_accuracy": 0.53,
            "win_rate": 0.47, "profit_factor": 1.08}
    assert decide(cand, PolicyConfig()).approved
    d = decide(cand, PolicyConfig(min_win_rate=0.5, min_profit_factor=1.1))
    assert not d.approved and [c.name for c in d.checks if not c.passed] == ["min_win_rate", "min_profit_factor"]
    assert d.reasons == ["hold-out win rate 0.470 < floor 0.5", "hold-out profit factor 1.080 < floor 1.1"]
    assert decide(cand, PolicyConfig(min_win_rate=0.45, min_profit_factor=1.05)).approved
    missing = {k: v for k, v in cand.items() if k != "win_rate"}
    assert not decide(missing, PolicyConfig(min_win_rate=0.1)).approved  # a missing figure fails its floor
