"""The overfitting statistics the gate will use: expected maximum Sharpe, PSR, deflated Sharpe, PBO (CSCV).

Checked against the papers' worked examples and by simulation (seeded): the deflated Sharpe of the best of N
skill-less strategies passes 0.95 about as rarely as a 5% test should, where the undeflated one does not.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from tideline.errors import DataError
from tideline.evaluation import (
    deflated_sharpe,
    expected_max_sharpe,
    pbo_cscv,
    probabilistic_sharpe,
    sharpe_difference_test,
)


def test_expected_max_sharpe_matches_the_paper_and_simulation():
    # Bailey & Lopez de Prado (2014), section 4: N = 100, V[SR] = 1/2 a year on daily bars -> SR* = 0.1132.
    assert expected_max_sharpe(0.5 / 250, 100) == pytest.approx(0.1132, abs=5e-5)
    assert expected_max_sharpe(0.01, 1) == 0.0 and expected_max_sharpe(0.0, 50) == 0.0
    rng = np.random.default_rng(0)
    for n in (10, 100, 1000):
        simulated = rng.standard_normal((2000, n)).max(axis=1).mean()  # E[max of n standard normals]
        assert expected_max_sharpe(1.0, n) == pytest.approx(simulated, rel=0.03), n
    assert expected_max_sharpe(1.0, 10) < expected_max_sharpe(1.0, 100) < expected_max_sharpe(4.0, 100)


def test_probabilistic_sharpe():
    sr0 = expected_max_sharpe(0.5 / 250, 100)
    # the 2014 paper: annual SR 2.5 over 5 years, skew -3, kurtosis 10 -> DSR 0.9004
    assert probabilistic_sharpe(2.5 / math.sqrt(250), 1250, -3, 10, sr0) == pytest.approx(0.9004, abs=1e-4)
    assert probabilistic_sharpe(0.1, 500, 0, 3, benchmark=0.1) == pytest.approx(0.5)
    # fat left tails widen the estimate's error: a lower probability for the same positive Sharpe
    assert probabilistic_sharpe(0.1, 500, -2, 9) < probabilistic_sharpe(0.1, 500, 0, 3)
    assert probabilistic_sharpe(0.1, 1) == 0.0 and probabilistic_sharpe(float("nan"), 100) == 0.0


def test_deflated_sharpe_of_the_best_of_many_lucky_strategies_is_rarely_significant():
    rng = np.random.default_rng(7)
    n_trials, n_obs, seeds = 20, 500, 300
    deflated_pass = naive_pass = 0
    for _ in range(seeds):
        r = rng.normal(0.0, 0.01, (n_obs, n_trials))  # no skill anywhere
        sharpes = r.mean(axis=0) / r.std(axis=0, ddof=1)
        best = int(np.argmax(sharpes))
        d = deflated_sharpe(r[:, best], sharpes)
        assert d.n_trials == n_trials and d.n_obs == n_obs and d.benchmark > 0
        deflated_pass += d.value >= 0.95
        naive_pass += probabilistic_sharpe(d.sharpe, n_obs, d.skew, d.kurtosis) >= 0.95
    assert deflated_pass / seeds <= 0.05  # no more than a 5% test lets through (it is conservative: 0 of 300 here)
    assert naive_pass / seeds >= 0.4  # without deflation the winner of 20 looks significant most of the time


def test_deflated_sharpe_finds_real_skill_and_handles_degenerate_input():
    rng = np.random.default_rng(3)
    r = rng.normal(0.0, 0.01, (1000, 4))
    r[:, 0] += 0.002  # about 3 a year
    sharpes = r.mean(axis=0) / r.std(axis=0, ddof=1)
    assert deflated_sharpe(r[:, 0], sharpes).value > 0.95
    flat = deflated_sharpe(np.zeros(100), [0.1, 0.0])
    assert flat.value == 0.0 and flat.sharpe == 0.0
    one = deflated_sharpe(np.array([0.01, np.nan, 0.02, 0.0, 0.01]), [0.5])
    assert one.n_obs == 4 and one.n_trials == 1 and one.benchmark == 0.0  # one trial: nothing was selected
    assert deflated_sharpe(r[:, 0], sharpes).to_dict()["n_trials"] == 4


def test_pbo_is_about_a_half_for_noise_and_zero_for_real_skill():
    rng = np.random.default_rng(11)
    pbos = [pbo_cscv(rng.normal(0.0, 0.01, (600, 8))).pbo for _ in range(20)]
    assert all(p is not None for p in pbos)
    assert 0.3 <= float(np.mean(pbos)) <= 0.7
    skill = rng.normal(0.0, 0.01, (600, 8))
    skill[:, 3] += 0.004
    res = pbo_cscv(skill)
    assert res.pbo == 0.0 and res.median_logit is not None and res.median_logit > 0
    assert res.n_blocks == 16 and res.n_splits == math.comb(16, 8) and res.n_strategies == 8


def test_pbo_catches_a_strategy_that_only_fit_its_in_sample_half():
    # a strategy that was great in the first half and lost in the second, beside honest noise: whenever
    # the first half is in sample it wins there and ranks last out of sample
    rng = np.random.default_rng(5)
    m = rng.normal(0.0, 0.01, (800, 5))
    m[:400, 0] += 0.01
    m[400:, 0] -= 0.01
    assert pbo_cscv(m).pbo > 0.6


def test_pbo_edge_cases():
    rng = np.random.default_rng(2)
    one = pbo_cscv(rng.normal(size=(100, 1)))
    assert one.pbo is None and "two strategies" in one.reason
    short = pbo_cscv(rng.normal(size=(3, 4)))
    assert short.pbo is None and "too few" in short.reason
    few = pbo_cscv(rng.normal(size=(10, 3)))
    assert few.n_blocks == 4 and few.pbo is not None  # at least two rows a block, an even count
    with_nan = rng.normal(size=(200, 3))
    with_nan[5, 1] = np.nan
    assert pbo_cscv(with_nan).pbo is not None
    with pytest.raises(DataError, match="2-d"):
        pbo_cscv(np.zeros(10))


def test_sharpe_difference_test_compares_risk_adjusted_returns():
    rng = np.random.default_rng(4)
    market = rng.normal(0.0008, 0.01, 750)
    same = sharpe_difference_test(market, market, n_samples=300)
    assert same.p_value > 0.5 and same.mean_diff == 0.0
    worse = sharpe_difference_test(rng.normal(0.0, 0.002, 750), market, n_samples=300)
    assert worse.p_value > 0.5 and worse.mean_diff < 0
    assert sharpe_difference_test(market[:2], market[:2]).p_value == 1.0
    with pytest.raises(DataError, match="differ in length"):
        sharpe_difference_test(market, market[:-1])
