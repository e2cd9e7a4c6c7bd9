"""Rollout analysis: metrics in, verdict out. Pure (no I/O, no clock).

The predictor processes expose cumulative Prometheus counters (``tideline_requests_total{model,version,
role,code}`` and the ``tideline_request_duration_seconds`` histogram, see docs/CONTRACTS.md). A
``MetricsSnapshot`` is one reading of them, keyed by ``(version, role)``; ``delta(prev, cur)`` is what
happened during one analysis interval (counter resets from a restarted process are handled the way
Prometheus' ``increase`` does: a series that went down counts from zero). ``analyze`` turns the
interval's numbers for the candidate and the active model, plus optional live outcomes (errors and
direction hits once the market has revealed them) and paired predictions on shadowed requests, into
one ``AnalysisResult``:

* ``fail``          some check failed (the machine counts consecutive failures against ``failure_limit``);
* ``inconclusive``  too little traffic to judge error rate and latency (like Argo Rollouts'
                    inconclusive: never a failure by itself);
* ``pass``          traffic checks passed; outcome checks passed or had too few labelled samples (those
                    are reported as inconclusive checks, and the shadow gate separately waits for
                    ``min_labelled`` samples).

With ``superiority_alpha`` set, a passing result may also say the candidate is **clearly better**
(``AnalysisResult.clearly_better``; the machine then promotes at once from a canary step instead of walking
the remaining ones): a sequential test on the paired outcomes of the rollout so far (the same requests,
shadowed) that stays valid when it is looked at every interval. Per bar, ``d_t`` = the candidate's hit rate
minus the active model's over the bar's symbols (they share the bar's market: one step). Consecutive bars
are averaged in blocks as long as the series' dependence (``dependence_block``: one plus twice the sum of
its positive autocorrelations, the inflation of the variance of a mean of autocorrelated steps), so that the
blocks are close to independent. Under "the candidate is no better" every ``prod (1 + lambda d_b)`` is a
nonnegative supermartingale, and so is their mixture over a grid of ``lambda`` (``e_process``); by Ville's
inequality it ever reaches ``1 / superiority_alpha`` with chance at most ``superiority_alpha``. A clear
winner crosses within a few intervals; a close call never does, and walks every step.

**Net PnL on the same requests** (``net_pnl``, when the live outcomes carry each paired row's net return): per bar,
the candidate's mean net return minus the active model's, averaged in dependence blocks as above; the check
fails when the candidate is significantly worse (the blocks' mean below ``-PNL_Z`` standard errors).

**Models whose outputs differ in kind** (a policy answering positions against a model forecasting returns,
``LiveOutcomes.kinds``): only what both have is compared — direction hit rate, the sequential test on hits,
and net PnL on the same requests. Error distributions (``error_ks``) and prediction distributions
(``prediction_divergence``) are reported as not compared, never as a pass or a failure.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from scipy import stats
from scipy.spatial import distance

from tideline.config import ROLLOUT_DEFAULTS as _D
from tideline.documents import Document
from tideline.monitoring.outcomes import LiveOutcomes, PairedOutcomes

Verdict = Literal["pass", "fail", "inconclusive"]

REQUESTS_METRIC = "tideline_requests_total"
DURATION_METRIC = "tideline_request_duration_seconds"


# ---- thresholds ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Thresholds(Document):
    """Limits a candidate must stay within during each analysis interval (defaults: ``[loop.rollout]`` settings)."""

    max_error_rate: float = _D.max_error_rate
    """share of the candidate's requests answered with a 5xx."""
    max_p99_latency_ms: float = _D.max_p99_latency_ms
    accuracy_margin: float = _D.accuracy_margin
    """candidate live directional accuracy may be below the active model's by at most this."""
    max_ks: float = _D.max_ks
    """two-sample Kolmogorov-Smirnov statistic of candidate vs active live absolute errors."""
    max_prediction_divergence: float = _D.max_prediction_divergence
    """Jensen-Shannon distance (base 2, 0..1) of candidate vs active predictions on the same requests."""
    min_requests: int = _D.min_requests
    """fewer candidate requests in an interval: error rate and latency are inconclusive."""
    min_labelled: int = _D.min_outcomes
    """fewer labelled outcomes (or prediction pairs) per side: accuracy/KS/divergence are inconclusive."""
    superiority_alpha: float | None = _D.superiority_alpha
    """false-promotion bound of the sequential test that ends a canary early for a clear winner (None: off)."""

    def __post_init__(self) -> None:
        for name in ("max_error_rate", "accuracy_margin"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} must be within [0, 1]")
        for name in ("max_ks", "max_prediction_divergence"):
            if not 0 < getattr(self, name) <= 1:
                raise ValueError(f"{name} must be within (0, 1]")
        if self.max_p99_latency_ms <= 0:
            raise ValueError("max_p99_latency_ms must be positive")
        if self.min_requests < 1 or self.min_labelled < 1:
            raise ValueError("min_requests and min_labelled must be at least 1")
        if self.superiority_alpha is not None and not 0 < self.superiority_alpha < 1:
            raise ValueError("superiority_alpha must be in (0, 1)")


# ---- metrics snapshots ---------------------------------------------------------------------------------
@dataclass
class SeriesMetrics:
    """Counters of one (version, role): requests by class and the latency histogram (cumulative buckets)."""

    requests: float = 0.0
    errors: float = 0.0
    """5xx responses (the server's fault)."""
    client_errors: float = 0.0
    """4xx responses (the caller's fault: not held against the model)."""
    buckets: dict[float, float] = field(default_factory=dict)
    """upper bound in seconds (``inf`` for +Inf) -> cumulative count, Prometheus style."""
    latency_count: float = 0.0
    latency_sum: float = 0.0

    def add(self, other: SeriesMetrics) -> SeriesMetrics:
        """The sum of two series' counters (buckets added bound by bound); neither operand changes."""
        b = dict(self.buckets)
        for le, c in other.buckets.items():
            b[le] = b.get(le, 0.0) + c
        return SeriesMetrics(self.requests + other.requests, self.errors + other.errors,
                             self.client_errors + other.client_errors, b,
                             self.latency_count + other.latency_count, self.latency_sum + other.latency_sum)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready counters; buckets as sorted ``[bound, count]`` pairs, ``+Inf`` for the last."""
        return {"requests": self.requests, "errors": self.errors, "client_errors": self.client_errors,
                "buckets": [[_le_str(le), c] for le, c in sorted(self.buckets.items())],
                "latency_count": self.latency_count, "latency_sum": self.latency_sum}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> SeriesMetrics:
        """Read back ``to_dict`` output (missing counters are 0); ``ValueError`` for a value that is not a number."""
        return cls(float(d.get("requests", 0)), float(d.get("errors", 0)), float(d.get("client_errors", 0)),
                   {float(le): float(c) for le, c in d.get("buckets", [])},
                   float(d.get("latency_count", 0)), float(d.get("latency_sum", 0)))


def _le_str(le: float) -> str:
    return "+Inf" if math.isinf(le) else repr(le)


@dataclass
class MetricsSnapshot:
    """One reading of the predictors' cumulative counters, keyed by (version, role)."""

    series: dict[tuple[str, str], SeriesMetrics] = field(default_factory=dict)

    @classmethod
    def parse(cls, text: str, *, model: str | None = None) -> MetricsSnapshot:
        """Parse Prometheus text exposition (``GET /metrics`` of a predictor). Unknown metrics are ignored."""
        from prometheus_client.parser import text_string_to_metric_families

        snap = cls()
        for fam in text_string_to_metric_families(text):
            for s in fam.samples:
                lab = s.labels
                if model is not None and lab.get("model", model) != model:
                    continue
                version, role = lab.get("version"), lab.get("role")
                if not version or not role or s.value is None or math.isnan(s.value):
                    continue
                key = (version, role)
                if s.name == REQUESTS_METRIC:
                    m = snap.series.setdefault(key, SeriesMetrics())
                    m.requests += s.value
                    code = str(lab.get("code", ""))
                    if code.startswith("5"):
                        m.errors += s.value
                    elif code.startswith("4"):
                        m.client_errors += s.value
                elif s.name == DURATION_METRIC + "_bucket":
                    m = snap.series.setdefault(key, SeriesMetrics())
                    le = float(lab.get("le", "+Inf"))
                    m.buckets[le] = m.buckets.get(le, 0.0) + s.value
                elif s.name == DURATION_METRIC + "_count":
                    snap.series.setdefault(key, SeriesMetrics()).latency_count += s.value
                elif s.name == DURATION_METRIC + "_sum":
                    snap.series.setdefault(key, SeriesMetrics()).latency_sum += s.value
        return snap

    def merge(self, other: MetricsSnapshot) -> MetricsSnapshot:
        """Sum of two snapshots (e.g. the active and the candidate process)."""
        out = {k: SeriesMetrics().add(v) for k, v in self.series.items()}
        for k, v in other.series.items():
            out[k] = out[k].add(v) if k in out else SeriesMetrics().add(v)
        return MetricsSnapshot(out)

    def select(self, version: str, roles: Iterable[str] | None = None) -> SeriesMetrics:
        """Sum over the series of ``version`` (optionally only the given roles)."""
        wanted = set(roles) if roles is not None else None
        acc = SeriesMetrics()
        for (v, r), m in self.series.items():
            if v == version and (wanted is None or r in wanted):
                acc = acc.add(m)
        return acc

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready snapshot: one entry per (version, role) series, sorted."""
        return {"series": [{"version": v, "role": r, **m.to_dict()} for (v, r), m in sorted(self.series.items())]}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> MetricsSnapshot:
        """Read back ``to_dict`` output (None or {} gives an empty snapshot); ``KeyError`` for a series without keys."""
        out: dict[tuple[str, str], SeriesMetrics] = {}
        for s in (d or {}).get("series", []):
            out[(s["version"], s["role"])] = SeriesMetrics.from_dict(s)
        return cls(out)


def _series_delta(prev: SeriesMetrics | None, cur: SeriesMetrics) -> SeriesMetrics:
    if prev is None:
        return SeriesMetrics().add(cur)
    reset = (cur.requests < prev.requests or cur.latency_count < prev.latency_count
             or cur.errors < prev.errors or cur.client_errors < prev.client_errors
             or any(c < prev.buckets.get(le, 0.0) for le, c in cur.buckets.items()))
    if reset:  # the process restarted: everything it counted since is this interval's increase
        return SeriesMetrics().add(cur)
    return SeriesMetrics(
        cur.requests - prev.requests, cur.errors - prev.errors, cur.client_errors - prev.client_errors,
        {le: c - prev.buckets.get(le, 0.0) for le, c in cur.buckets.items()},
        cur.latency_count - prev.latency_count, cur.latency_sum - prev.latency_sum,
    )


def delta(prev: MetricsSnapshot | None, cur: MetricsSnapshot) -> MetricsSnapshot:
    """Increase of every counter between two snapshots; a series that went down was reset (restart)."""
    prev_series = prev.series if prev is not None else {}
    return MetricsSnapshot({k: _series_delta(prev_series.get(k), m) for k, m in cur.series.items()})


def p99_from_histogram(buckets: Mapping[float, float], q: float = 0.99) -> float | None:
    """Quantile ``q`` (seconds) from cumulative buckets, interpolated like PromQL's histogram_quantile.

    None when the histogram is empty. A quantile in the +Inf bucket returns the largest finite bound.
    """
    if not 0 < q < 1:
        raise ValueError("q must be within (0, 1)")
    items = sorted(buckets.items())
    if not items:
        return None
    total = items[-1][1] if math.isinf(items[-1][0]) else max(c for _, c in items)
    if total <= 0:
        return None
    rank = q * total
    prev_le, prev_c = 0.0, 0.0
    for le, c in items:
        if c >= rank:
            if math.isinf(le):
                finite = [b for b, _ in items if not math.isinf(b)]
                return finite[-1] if finite else None
            if c == prev_c:
                return le
            return prev_le + (le - prev_le) * (rank - prev_c) / (c - prev_c)
        prev_le, prev_c = le, c
    return items[-1][0] if not math.isinf(items[-1][0]) else prev_le


# ---- analysis ------------------------------------------------------------------------------------------
@dataclass
class AnalysisInput:
    """What one analysis interval saw."""

    candidate: SeriesMetrics
    active: SeriesMetrics
    outcomes: LiveOutcomes | None = None
    paired_predictions: tuple[Sequence[float], Sequence[float]] | None = None
    """(candidate, active) predictions for the same shadowed requests, index-aligned."""
    candidate_up: bool | None = None
    """False when the backend could not reach a candidate it had deployed."""


@dataclass
class Check(Document):
    """One check of an analysis: its value against the threshold, and ``passed`` (None: too little data to judge)."""
    name: str
    value: float | None
    threshold: float
    passed: bool | None
    """None: inconclusive (too little data)."""
    reason: str


@dataclass
class AnalysisResult(Document):
    """The verdict of one analysis interval (``pass``, ``fail`` or ``inconclusive``), every check, the
    reasons in words and the labelled outcomes seen.
    """
    verdict: Verdict
    checks: list[Check]
    reasons: list[str]
    labelled: int = 0
    """labelled live outcomes available for the candidate (the shadow gate waits for min_labelled)."""
    at: float | None = None

    @property
    def passed(self) -> bool:
        """True when the verdict is ``pass``."""
        return self.verdict == "pass"

    @property
    def clearly_better(self) -> bool:
        """True when the verdict is ``pass`` and the sequential test found the candidate better (``superiority``)."""
        return self.passed and any(c.name == SUPERIORITY and c.passed for c in self.checks)


def ks_statistic(a: Sequence[float], b: Sequence[float]) -> float:
    """Two-sample Kolmogorov-Smirnov statistic (``scipy.stats.ks_2samp``): the largest gap between the two
    empirical CDFs. ``ValueError`` when a sample is empty."""
    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if x.size == 0 or y.size == 0:
        raise ValueError("both samples must be non-empty")
    return float(stats.ks_2samp(x, y).statistic)


def js_distance(a: Sequence[float], b: Sequence[float], bins: int = 20) -> float:
    """Jensen-Shannon distance (``scipy.spatial.distance.jensenshannon``, base 2, in [0, 1]) between the
    histograms of two samples.

    Bins are the pooled sample's quantiles, so the figure does not depend on the predictions' scale.
    ``ValueError`` when a sample has no finite value.
    """
    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    x, y = x[np.isfinite(x)], y[np.isfinite(y)]
    if x.size == 0 or y.size == 0:
        raise ValueError("both samples must have finite values")
    pooled = np.concatenate([x, y])
    edges = np.unique(np.quantile(pooled, np.linspace(0, 1, bins + 1)))
    if edges.size < 2:  # every value identical on both sides
        return 0.0
    p = np.histogram(np.clip(x, edges[0], edges[-1]), bins=edges)[0] / x.size
    q = np.histogram(np.clip(y, edges[0], edges[-1]), bins=edges)[0] / y.size
    d = float(distance.jensenshannon(p, q, base=2))
    return 0.0 if math.isnan(d) else d  # identical histograms can round to sqrt(-1e-17)


SUPERIORITY = "superiority"
LAMBDAS: tuple[float, ...] = (0.05, 0.1, 0.2, 0.35, 0.5)
"""bets of the mixture e-process (each < 1, so every factor stays positive on steps in [-1, 1])."""
SUPERIORITY_LAMBDAS: tuple[float, ...] = (0.1, 0.2, 0.35, 0.5, 0.7)
"""the superiority test's bets: bolder than the guard's, since it looks for a large difference quickly."""


def bar_differences(times: Sequence[Any], a_hits: Sequence[float], b_hits: Sequence[float]) -> np.ndarray:
    """``d_t`` = ``a``'s hit rate minus ``b``'s over each bar's rows, one per bar, in bar order (rows with a
    missing hit are left out), clipped to [-1, 1]."""
    if not len(times):
        return np.zeros(0)
    t = np.asarray(times)
    d = np.asarray(a_hits, dtype=float) - np.asarray(b_hits, dtype=float)
    ok = np.isfinite(d)
    t, d = t[ok], d[ok]
    if not len(d):
        return np.zeros(0)
    uniq, inv = np.unique(t, return_inverse=True)  # sorted bar labels: bar order
    sums = np.bincount(inv, weights=d, minlength=len(uniq))
    counts = np.bincount(inv, minlength=len(uniq))
    return np.clip(sums / counts, -1.0, 1.0)


def dependence_block(d: Sequence[float]) -> int:
    """How many consecutive steps to average so that the averages are close to independent: the factor by
    which autocorrelation inflates the variance of a mean, ``1 + 2 sum_k w_k rho_k`` (``rho`` the sample
    autocorrelations, Bartlett weights ``w_k = 1 - k / (L + 1)`` over ``L = floor(4 (n / 100) ** (2 / 9))``
    lags, at least 2: the Newey-West long-run variance), rounded up; 1 for a short, constant or
    anti-correlated series.

    >>> dependence_block([1.0, -1.0] * 20)
    1
    >>> dependence_block(np.repeat([1.0, -1.0, 0.5, -0.5], 10)) > 1
    True
    """
    x = np.asarray(d, dtype=float)
    x = x[np.isfinite(x)]
    lags = min(max(2, int(4 * (len(x) / 100) ** (2 / 9))), len(x) // 4)
    if lags < 1 or not x.std() > 0:
        return 1
    x = x - x.mean()
    denom = float(x @ x)
    factor = 1 + 2 * sum((1 - k / (lags + 1)) * float(x[:-k] @ x[k:]) / denom for k in range(1, lags + 1))
    return max(1, math.ceil(factor - 1e-9))


def block_means(d: Sequence[float], block: int) -> np.ndarray:
    """Means of consecutive, non-overlapping blocks of ``block`` steps (a shorter last block is dropped)."""
    x = np.asarray(d, dtype=float)
    n = (len(x) // max(int(block), 1)) * max(int(block), 1)
    return x[:n].reshape(-1, max(int(block), 1)).mean(axis=1) if n else np.zeros(0)


def e_process(d: Sequence[float], lambdas: Sequence[float] = LAMBDAS) -> np.ndarray:
    """The mixture e-process after each step: ``mean_k prod_{s<=t} (1 + lambda_k d_s)`` (t = 1..n)."""
    x = np.asarray(d, dtype=float)
    if not len(x):
        return np.ones(0)
    lam = np.asarray(lambdas, dtype=float)
    logw = np.cumsum(np.log1p(np.outer(x, lam)), axis=0)
    return np.exp(logw).mean(axis=1)


def superiority_check(paired: PairedOutcomes | None, alpha: float, min_labelled: int) -> Check:
    """The sequential test of the module docstring on the rollout's paired outcomes so far: passed (True) when
    the candidate is clearly better, None otherwise (never a failure: a candidate that is no better walks the
    canary steps, and a worse one fails the other checks)."""
    bound = 1 / alpha
    n = len(paired.times) if paired is not None else 0
    if paired is None or n < min_labelled:
        return Check(SUPERIORITY, None, bound, None,
                     f"only {n} paired outcomes (< {min_labelled}) for the sequential test")
    d = bar_differences(paired.times, paired.candidate_hits, paired.active_hits)
    block = dependence_block(d)
    e = e_process(block_means(d, block), SUPERIORITY_LAMBDAS)
    e_max = float(e.max()) if len(e) else 1.0
    better = e_max >= bound
    cand = float(np.nanmean(np.asarray(paired.candidate_hits, dtype=float)))
    act = float(np.nanmean(np.asarray(paired.active_hits, dtype=float)))
    return Check(SUPERIORITY, e_max, bound, True if better else None,
                 f"sequential test over {len(d)} bars (blocks of {block}; {n} paired outcomes): candidate "
                 f"{cand:.3f} vs active {act:.3f} directional accuracy on the same requests, e-value {e_max:.2f} "
                 + (f">= {bound:g}: clearly better (alpha {alpha})" if better else f"< {bound:g}"))


NET_PNL = "net_pnl"
PNL_Z = 2.0
"""``net_pnl`` fails when the candidate's paired net PnL is below the active model's by more than this many
standard errors."""


def net_pnl_check(paired: PairedOutcomes | None, min_labelled: int) -> Check | None:
    """The ``net_pnl`` check of the module docstring; None when the outcomes carry no net returns."""
    if paired is None or not len(paired.candidate_net):
        return None
    c, a = np.asarray(paired.candidate_net, dtype=float), np.asarray(paired.active_net, dtype=float)
    ok = np.isfinite(c) & np.isfinite(a)
    n = int(ok.sum())
    if n < min_labelled:
        return Check(NET_PNL, None, -PNL_Z, None, f"only {n} paired net returns (< {min_labelled})")
    uniq, inv = np.unique(np.asarray(paired.times)[ok], return_inverse=True)
    d = np.bincount(inv, weights=(c - a)[ok], minlength=len(uniq)) / np.bincount(inv, minlength=len(uniq))
    block = dependence_block(d)
    m = block_means(d, block)
    text = (f"net PnL on the same requests: candidate {c[ok].mean() * 1e4:+.2f} vs active {a[ok].mean() * 1e4:+.2f} "
            f"bps per prediction over {len(d)} bars (blocks of {block})")
    if len(m) < 2:
        return Check(NET_PNL, None, -PNL_Z, None, text + ": too few blocks to judge")
    sd = float(m.std(ddof=1))
    z = float(m.mean() / (sd / math.sqrt(len(m)))) if sd > 0 else (0.0 if m.mean() == 0 else math.copysign(
        math.inf, float(m.mean())))
    worse = z < -PNL_Z
    return Check(NET_PNL, z, -PNL_Z, not worse,
                 text + f", paired z {z:+.2f} " + (f"< {-PNL_Z:g}: significantly worse" if worse else f">= {-PNL_Z:g}"))


def _finite(xs: Sequence[float]) -> np.ndarray:
    arr = np.asarray(xs, dtype=float)
    return arr[np.isfinite(arr)]


def analyze(inp: AnalysisInput, thr: Thresholds) -> AnalysisResult:
    """Run every check on one interval; see the module docstring for how the verdict is formed."""
    checks: list[Check] = []
    c = inp.candidate

    if inp.candidate_up is False:
        checks.append(Check("candidate_up", 0.0, 1.0, False, "the candidate predictor is not reachable"))

    # error rate (5xx share of the candidate's requests)
    if c.requests < thr.min_requests:
        checks.append(Check("error_rate", None, thr.max_error_rate, None,
                            f"only {c.requests:.0f} candidate requests (< {thr.min_requests})"))
    else:
        rate = c.errors / c.requests
        ok = rate <= thr.max_error_rate
        checks.append(Check("error_rate", rate, thr.max_error_rate, ok,
                            f"error rate {rate:.2%} {'<=' if ok else '>'} {thr.max_error_rate:.2%} "
                            f"({c.errors:.0f}/{c.requests:.0f})"))

    # p99 latency
    hist_n = max(c.buckets.values(), default=0.0)
    if hist_n < thr.min_requests:
        checks.append(Check("p99_latency_ms", None, thr.max_p99_latency_ms, None,
                            f"only {hist_n:.0f} timed candidate requests (< {thr.min_requests})"))
    else:
        p99 = p99_from_histogram(c.buckets)
        ms = float("inf") if p99 is None else p99 * 1000.0
        ok = ms <= thr.max_p99_latency_ms
        checks.append(Check("p99_latency_ms", ms, thr.max_p99_latency_ms, ok,
                            f"p99 latency {ms:.1f} ms {'<=' if ok else '>'} {thr.max_p99_latency_ms:g} ms"))

    labelled = 0
    more_accurate: str | None = None  # set when live outcomes show the candidate clearly more accurate
    o = inp.outcomes
    kinds = o.kinds if o is not None else None
    other_kind = None if kinds is None or kinds[0] == kinds[1] else (
        f"not compared: the candidate answers {kinds[0]}s, the active model {kinds[1]}s (hit rate and net PnL "
        "on the same requests are)")
    if o is not None:
        ch, ah = _finite(o.candidate_hits), _finite(o.active_hits)
        labelled = int(max(ch.size, _finite(o.candidate_errors).size))
        if ch.size < thr.min_labelled or ah.size < thr.min_labelled:
            checks.append(Check("directional_accuracy", None, -thr.accuracy_margin, None,
                                f"{ch.size} candidate / {ah.size} active labelled outcomes "
                                f"(< {thr.min_labelled})"))
        else:
            diff = float(ch.mean() - ah.mean())
            ok = diff >= -thr.accuracy_margin
            checks.append(Check("directional_accuracy", diff, -thr.accuracy_margin, ok,
                                f"live directional accuracy {ch.mean():.3f} vs active {ah.mean():.3f} "
                                f"({diff:+.3f}; allowed margin {thr.accuracy_margin:.3f})"))
            if diff >= max(thr.accuracy_margin, 1e-9):
                more_accurate = f"{diff:+.3f} live directional accuracy on {ch.size} labelled outcomes"
        ce, ae = _finite(o.candidate_errors), _finite(o.active_errors)
        if other_kind is not None:
            checks.append(Check("error_ks", None, thr.max_ks, None, other_kind))
        elif ce.size < thr.min_labelled or ae.size < thr.min_labelled:
            checks.append(Check("error_ks", None, thr.max_ks, None,
                                f"{ce.size} candidate / {ae.size} active live errors (< {thr.min_labelled})"))
        else:
            ks = ks_statistic(np.abs(ce), np.abs(ae))
            worse = float(np.median(np.abs(ce))) > float(np.median(np.abs(ae)))
            ok = ks <= thr.max_ks or not worse
            checks.append(Check("error_ks", ks, thr.max_ks, ok,
                                f"KS of live |error| vs active {ks:.3f} "
                                f"{'<=' if ks <= thr.max_ks else '>'} {thr.max_ks}"
                                + ("" if ks <= thr.max_ks else
                                   (" and the candidate's errors are larger" if worse
                                    else " but the candidate's errors are smaller"))))

    if thr.superiority_alpha is not None and o is not None:
        checks.append(superiority_check(o.paired, thr.superiority_alpha, thr.min_labelled))
    pnl = net_pnl_check(o.paired, thr.min_labelled) if o is not None else None
    if pnl is not None:
        checks.append(pnl)

    if inp.paired_predictions is not None and other_kind is not None:
        checks.append(Check("prediction_divergence", None, thr.max_prediction_divergence, None, other_kind))
    elif inp.paired_predictions is not None:
        cp, ap = inp.paired_predictions
        if len(cp) != len(ap):
            raise ValueError("paired predictions must have the same length")
        cp_a, ap_a = np.asarray(cp, dtype=float), np.asarray(ap, dtype=float)
        bad = int(np.sum(~np.isfinite(cp_a)))
        n = int(np.sum(np.isfinite(cp_a) & np.isfinite(ap_a)))
        if bad:
            checks.append(Check("prediction_divergence", 1.0, thr.max_prediction_divergence, False,
                                f"{bad} non-finite candidate predictions on shadowed requests"))
        elif n < thr.min_labelled:
            checks.append(Check("prediction_divergence", None, thr.max_prediction_divergence, None,
                                f"only {n} paired predictions (< {thr.min_labelled})"))
        else:
            mask = np.isfinite(cp_a) & np.isfinite(ap_a)
            js = js_distance(cp_a[mask], ap_a[mask])
            within = js <= thr.max_prediction_divergence
            # Divergence guards against a candidate that predicts differently for reasons nobody has checked.
            # When realized outcomes already show it clearly MORE accurate (e.g. the market changed and the
            # retrained model follows it), differing is the point, not a failure.
            ok = within or more_accurate is not None
            checks.append(Check("prediction_divergence", js, thr.max_prediction_divergence, ok,
                                f"Jensen-Shannon distance of predictions vs active {js:.3f} "
                                f"{'<=' if within else '>'} {thr.max_prediction_divergence} ({n} pairs)"
                                + ("" if within or more_accurate is None
                                   else f", accepted: the candidate is more accurate ({more_accurate})")))

    failed = [ch for ch in checks if ch.passed is False]
    traffic_unknown = [ch for ch in checks if ch.name in ("error_rate", "p99_latency_ms") and ch.passed is None]
    if failed:
        verdict: Verdict = "fail"
        reasons = [ch.reason for ch in failed]
    elif traffic_unknown:
        verdict = "inconclusive"
        reasons = [ch.reason for ch in traffic_unknown]
    else:
        verdict = "pass"
        reasons = [ch.reason for ch in checks if ch.passed]
    return AnalysisResult(verdict, checks, reasons, labelled)
