"""Settings: one object, read from an optional file (TOML/YAML/JSON) and ``TIDELINE_*`` env vars.

Nested fields use a double underscore in env vars, e.g. ``TIDELINE_EVALUATION__COST_BPS=2``.
The object is passed in to the code that needs it; nothing deep in the library reads env vars.
"""

from __future__ import annotations

import json
import os
import tomllib
from pathlib import Path
from typing import Any, Literal, get_args

import yaml
from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from tideline.errors import ConfigError

MODEL_FAMILIES: tuple[str, ...] = ("xgboost", "lightgbm", "sklearn", "torch", "rl")
"""Every family a cycle can train (``tideline.models``; ``rl`` is the policy family that learns positions)."""
DEFAULT_FAMILIES: tuple[str, ...] = ("xgboost", "lightgbm", "sklearn", "torch")
"""What a cycle trains unless ``training.families`` says otherwise (``rl`` is asked for by name)."""
LabelName = Literal["raw", "vol_scaled", "demeaned_rolling", "demeaned_cross_section", "direction"]
LABELS: tuple[str, ...] = get_args(LabelName)


class FeatureConfig(BaseModel):
    """What the feature and label builders compute. Stored with each model version, with the hash of its
    feature fields (``tideline.features.feature_config_hash``)."""

    horizon: int = Field(1, ge=1, le=250, description="label horizon in bars")
    return_windows: list[int] = [1, 2, 3, 5, 10, 20, 60]
    vol_windows: list[int] = [5, 20, 60]
    sma_windows: list[int] = [5, 10, 20, 50]
    volume_windows: list[int] = [5, 20, 60]
    rsi_window: int = 14
    bollinger_window: int = 20
    seq_len: int = Field(16, ge=2, le=256, description="bars of history the sequence model sees")
    cross_sectional: bool = True
    calendar: bool = True
    label: LabelName = Field(
        "raw", description="what the models learn: the forward log return (raw), divided by recent volatility "
        "(vol_scaled), minus its trailing mean (demeaned_rolling) or the same bar's mean over symbols "
        "(demeaned_cross_section), or its sign (direction: +1/-1, 0 flat)")
    label_window: int = Field(20, ge=2, le=1000, description="bars of the volatility or trailing mean of the label")


class EvaluationConfig(BaseModel):
    """How candidates are evaluated (``tideline.evaluation``): costs, walk-forward folds, holdout, bootstrap."""
    cost_bps: float = Field(1.0, ge=0, description="cost per unit of turnover, in basis points")
    n_splits: int = Field(4, ge=2, le=50, description="walk-forward folds")
    holdout_fraction: float = Field(0.2, gt=0, lt=0.9)
    embargo_bars: int = Field(0, ge=0, description="extra gap after the purge (the purge is the horizon)")
    periods_per_year: float | None = Field(None, description="annualisation; inferred from bar spacing if unset")
    bootstrap_samples: int = Field(1000, ge=100)
    block_size: int | None = Field(None, description="stationary-bootstrap mean block; sqrt(n) if unset")
    slippage_vol: float = Field(0.0, ge=0, le=10, description="slippage per unit of turnover, in units of the "
                                "symbol's recent per-bar volatility (positions.vol_window), on top of cost_bps")


class PositionConfig(BaseModel):
    """How a prediction becomes a position (``tideline.positions``); the fitted rule is stored with each version.

    ``sign``: +1/-1 on the prediction's sign. ``zscore``: the prediction z-scored against the model's own
    out-of-sample predictions at training time, flat inside ``band``, else +1/-1. ``vol_target`` (annualised,
    e.g. 0.1) sizes each position to that volatility, at most ``max_leverage``.
    """
    rule: Literal["sign", "zscore"] = "sign"
    band: float = Field(0.5, ge=0, le=10, description="zscore: |z| below this is flat")
    vol_target: float | None = Field(None, gt=0, le=5, description="annualised volatility per position")
    max_leverage: float = Field(1.0, gt=0, le=100, description="largest size of one position (vol_target)")
    vol_window: int = Field(20, ge=2, description="bars of the recent volatility (one of features.vol_windows)")


class TrainingConfig(BaseModel):
    """What is trained (``tideline.models``): families, seed, row caps, threads, per-family overrides.

    ``families`` must be non-empty and name only ``MODEL_FAMILIES`` (``load_settings`` reports otherwise as a
    ``ConfigError``).
    """
    families: list[str] = list(DEFAULT_FAMILIES)
    seed: int = 7
    max_train_rows: int | None = Field(
        600_000, description="most recent rows kept for the final fit (None: all); CV folds use fewer"
    )
    cv_max_train_rows: int = Field(150_000, ge=1000, description="row cap for each walk-forward fold's fit")
    n_threads: int = Field(0, ge=0, description="threads for the learners (0: all cores)")
    params: dict[str, dict[str, Any]] = Field(default_factory=dict, description="per-family overrides")
    ensemble: bool = Field(True, description="an equal-weight ensemble of the trained families is one more "
                                             "candidate (when at least two trained)")
    recalibrate: bool = Field(
        True, description="production recalibrated on the window (a + b * its forecast, a warm start) is one more "
                          "candidate, when production was trained entirely before the window")
    tune_trials: int = Field(
        0, ge=0, le=1000, description="Optuna trials per family inside the purged walk-forward folds (0: no tuning); "
                                      "every trial counts in the deflated Sharpe")
    tune_objective: Literal["sharpe", "ic"] = Field(
        "sharpe", description="what a tuning trial maximises: mean fold net Sharpe, or mean fold IC")
    tune_timeout_s: float | None = Field(
        None, gt=0, description="stop a family's tuning after this many seconds (None: the trial budget only)")

    @field_validator("families")
    @classmethod
    def _known_families(cls, v: list[str]) -> list[str]:
        unknown = sorted(set(v) - set(MODEL_FAMILIES))
        if unknown:
            raise ValueError(f"unknown model families {unknown}; known: {list(MODEL_FAMILIES)}")
        if not v:
            raise ValueError("at least one model family is needed")
        return v


class PolicyConfig(BaseModel):
    """The promotion gate. Defaults follow the seeds; every threshold is configurable."""

    min_sharpe: float = 0.5
    min_relative_improvement: float = Field(
        0.05, description="candidate Sharpe must beat production by this fraction ..."
    )
    tolerance: float = Field(0.0, ge=0, description="... or stay within this fraction of it (0: must beat)")
    key_metric_floor: float = Field(0.9, ge=0, le=1, description="no key metric below this share of production")
    key_metrics: list[str] = ["sharpe", "directional_accuracy", "profit_factor"]
    min_trades: int = Field(30, ge=0)
    max_drawdown: float = Field(0.35, gt=0, description="largest allowed peak-to-trough loss (fraction)")
    min_win_rate: float | None = Field(
        None, ge=0, le=1, description="refuse below this hold-out share of winning periods (None: no floor)")
    min_profit_factor: float | None = Field(
        None, ge=0, description="refuse below this hold-out profit factor, gains over losses (None: no floor)")
    significance_alpha: float = Field(0.10, gt=0, lt=1)
    require_significance: bool = True
    min_deflated_sharpe: float = Field(
        0.95, ge=0, le=1,
        description="deflated Sharpe ratio (0-1) the hold-out must reach, every candidate of the cycle counted (0: off)",
    )
    require_baseline: bool = Field(
        True, description="beat the best of buy-and-hold / always-long on the hold-out (paired test, significance_alpha)"
    )
    require_folds_agree: bool = Field(True, description="walk-forward folds must agree (see min_positive_folds)")
    min_positive_folds: float = Field(
        0.5, ge=0, lt=1, description="walk-forward: mean fold Sharpe > 0 and more than this share of folds positive"
    )
    max_pbo: float | None = Field(
        None, gt=0, le=1, description="refuse when the cycle's probability of backtest overfitting is above this"
    )


TRIGGER_RULES: tuple[str, ...] = (
    "no_production", "model_age", "new_data", "performance_decay", "drift", "regime_shift", "cadence", "experience",
    "manual",
)


class TriggerConfig(BaseModel):
    """When to retrain (``tideline.triggers``). Every threshold is configurable; times are in days."""

    enabled: list[str] = Field(default_factory=lambda: list(TRIGGER_RULES), description="rules that may fire")
    max_model_age_days: float = Field(7.0, gt=0, description="model_age: production older than this")
    min_new_bars: int = Field(10_000, ge=1, description="new_data: bars after the training window, all symbols")
    min_live_sharpe: float = Field(0.3, description="performance_decay: live Sharpe below this")
    max_accuracy_drop: float = Field(0.02, ge=0, description="performance_decay: live accuracy drop vs baseline")
    min_live_samples: int = Field(200, ge=1, description="performance_decay: live outcomes needed to judge")
    drift_share_threshold: float = Field(0.3, gt=0, le=1, description="drift: share of drifted features")
    regime_short_window: int = Field(20, ge=2, description="bars in one realized-volatility estimate")
    regime_long_window: int = Field(2000, ge=10, description="reference bars without a training window")
    regime_high_quantile: float = Field(0.9, gt=0, lt=1, description="above this quantile of reference vol: high")
    regime_low_quantile: float = Field(0.1, gt=0, lt=1, description="below this quantile of reference vol: low")
    cadence_high_days: float = Field(3.0, gt=0, description="cadence in a high-volatility regime")
    cadence_normal_days: float = Field(7.0, gt=0, description="cadence in a normal regime")
    cadence_low_days: float = Field(14.0, gt=0, description="cadence in a low-volatility regime")
    min_new_experiences: int = Field(
        5000, ge=100, description="experience: new experiences (served predictions with realized outcomes, "
                                  "tideline.monitoring.experience) since production's training window ended")
    lock_ttl_seconds: float = Field(6 * 3600.0, gt=0, description="a run lock older than this may be taken over")

    @field_validator("enabled")
    @classmethod
    def _known_rules(cls, v: list[str]) -> list[str]:
        unknown = sorted(set(v) - set(TRIGGER_RULES))
        if unknown:
            raise ValueError(f"unknown trigger rules {unknown}; known: {list(TRIGGER_RULES)}")
        return v

    @model_validator(mode="after")
    def _quantiles_ordered(self) -> TriggerConfig:
        if self.regime_low_quantile >= self.regime_high_quantile:
            raise ValueError("regime_low_quantile must be below regime_high_quantile")
        return self


class LoopRolloutConfig(BaseModel):
    """How the loop rolls out an approved candidate (``tideline.rollout``): shadow, canary steps, thresholds."""

    name: str = Field("tideline", description="the rollout's (and the served model's) name")
    shadow_seconds: float = Field(60.0, ge=0, description="minimum time in shadow; 0 skips shadow")
    min_labelled: int = Field(0, ge=0, description="labelled live outcomes needed to leave shadow")
    shadow_max_seconds: float = Field(3600.0, ge=0, description="still short of min_labelled after this long in "
                                                                "shadow: roll back (0: wait forever)")
    steps: list[int] = Field(default_factory=lambda: [10, 25, 50, 100], description="canary weights, %")
    interval_seconds: float = Field(30.0, gt=0, description="seconds between analyses")
    failure_limit: int = Field(2, ge=1, description="consecutive failed analyses that roll back")
    max_inconclusive: int = Field(20, ge=0, description="inconclusive analyses in a row that roll back")
    max_error_rate: float = Field(0.01, ge=0, le=1)
    max_p99_latency_ms: float = Field(250.0, gt=0)
    max_ks: float = Field(0.25, gt=0, le=1, description="KS statistic of candidate vs active live absolute errors")
    max_prediction_divergence: float = Field(
        0.35, gt=0, le=1, description="Jensen-Shannon distance (base 2) of candidate vs active predictions")
    min_requests: int = Field(20, ge=1, description="candidate requests per interval to judge it")
    accuracy_margin: float = Field(0.02, ge=0, le=1, description="live accuracy the candidate may lose")
    min_outcomes: int = Field(50, ge=1, description="labelled live outcomes per side before accuracy counts")
    superiority_alpha: float | None = Field(
        None, gt=0, lt=1, description="end a canary early when a sequential test on the paired live outcomes finds "
                                      "the candidate better, with this false-promotion bound (None: every step)")
    watch_seconds: float = Field(
        86400.0, ge=0, description="the guard's watch after a promotion: previous stays in shadow and the new "
                                   "production is tested against it on the same requests (0: no watch)")
    watch_alpha: float = Field(0.05, gt=0, lt=1, description="false-alarm bound of the guard's paired test over "
                                                             "the whole watch")
    watch_min_accuracy: float | None = Field(
        0.45, ge=0, le=1, description="absolute floor of production's live directional accuracy in the watch; "
                                      "previous under it too throws the kill switch (None: no floor)")
    watch_min_outcomes: int = Field(200, ge=1, description="realized outcomes before the floor judges")
    approval_required: bool = Field(False, description="a person approves each promotion (kubectl tideline approve, "
                                                       "tideline rollout approve): the rollout waits in "
                                                       "AwaitingApproval")
    approval_timeout_seconds: float = Field(86400.0, gt=0, description="how long a rollout waits for approval")
    approval_on_timeout: Literal["rollback", "wait"] = Field(
        "rollback", description="no approval within the timeout: roll back, or keep waiting")
    mode: Literal["Serverless", "RawDeployment"] = Field(
        "RawDeployment", description="on a cluster: the InferenceService's KServe deployment mode (ModelRollout "
                                     "spec.mode)")
    metrics_source: str = Field("pods", description="on a cluster: where the operator reads the predictors' "
                                                    "counters: 'pods' (their /metrics) or a Prometheus base URL")


ROLLOUT_DEFAULTS = LoopRolloutConfig()
"""Every rollout default, in one place: ``tideline.rollout``'s specs, ``tideline rollout start`` and the
ModelRollout CRD's ``default:`` values read these (a test holds the CRD to them)."""


class LoopScheduleConfig(BaseModel):
    """When ``tideline loop`` ticks (a cron expression in a time zone) and when it may retrain."""

    cron: str = Field("0 * * * *", description="tick times: a 5-field cron expression (every hour on the hour)")
    timezone: str = Field("UTC", description="IANA zone the cron expression is read in")
    calendar: str | None = Field(None, description="an exchange_calendars code (XNYS, XLON, CMES ...) for "
                                                   "sessions and holidays")
    retrain: Literal["any", "closed"] = Field(
        "any", description="'closed': retrain only while the calendar's exchange is closed (off-hours)")

    @field_validator("cron")
    @classmethod
    def _valid_cron(cls, v: str) -> str:
        from croniter import croniter

        if len(v.split()) != 5 or not croniter.is_valid(v):
            raise ValueError(f"not a 5-field cron expression: {v!r} (e.g. '0 * * * *' or '30 22 * * 1-5')")
        return v

    @field_validator("timezone")
    @classmethod
    def _valid_zone(cls, v: str) -> str:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(v)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {v!r} (an IANA name such as UTC or America/New_York)") from None
        return v

    @model_validator(mode="after")
    def _calendar_for_closed(self) -> LoopScheduleConfig:
        if self.retrain == "closed" and not self.calendar:
            raise ValueError("retrain = 'closed' needs a calendar (an exchange code such as XNYS)")
        return self


class LoopConfig(BaseModel):
    """The continuous-learning loop (``tideline loop``): where new bars arrive and how each tick acts."""

    bars: str = Field("", description="where new bar files arrive: a directory or s3://bucket/prefix ('' = none)")
    settle_seconds: float = Field(60.0, ge=0, description="a file modified more recently is still being written")
    restatements: Literal["refuse", "newer"] = Field(
        "refuse", description="a bar restating a stored one (same symbol and time, other values): refuse the "
                              "file, or take the newer values")
    monitor_bars: int = Field(300, ge=10, description="bars (per symbol) the trigger rules look back over")
    drift_every_hours: float = Field(24.0, gt=0, description="a drift check of production at most this often")
    drift_checks: bool = Field(True, description="run the drift check (an Evidently report, seconds each) in the "
                                                 "monitor step; the drift rule reads its result")
    drift_html: bool = Field(True, description="store Evidently's HTML report with each drift check (False: "
                                               "the same figures as JSON only, seconds saved a check)")
    min_window_bars: int = Field(200, ge=10, description="bars of a new regime needed before a retrain uses it")
    window_from: Literal["detection", "start"] = Field(
        "detection", description="count a new regime's bars from when its change was detected, or from where it "
                                 "most likely began (a change point's estimated start: sooner, on fewer bars)")
    lookback_bars: int | None = Field(None, ge=10, description="training window without a detected change "
                                                               "(bars per symbol; None = all stored history)")
    lease_seconds: float = Field(3600.0, gt=0, description="a tick holding the loop lock longer than this has died")
    cooldown_hours: float = Field(24.0, ge=0, description="after the guard reverted a promotion: no retrain or "
                                                          "rollout for this long (no flapping)")
    pipeline: Literal["local", "kfp"] = Field(
        "local", description="where a retrain runs: 'local' (kfp.local, in this process) or 'kfp' (a run submitted "
                             "to Kubeflow Pipelines at kfp_host; its gate names the candidate a later tick rolls out)")
    kfp_host: str = Field("", description="the Kubeflow Pipelines API (with pipeline = 'kfp')")
    rollouts: Literal["local", "kubernetes"] = Field(
        "local", description="who runs a rollout: 'local' (a `tideline rollout resume` process) or 'kubernetes' "
                             "(a ModelRollout created in `namespace`, run by the operator)")
    namespace: str = Field("tideline", description="the namespace of the ModelRollouts (rollouts = 'kubernetes')")
    skew_sample: int = Field(200, ge=0, description="each tick, the latest this many logged predictions of each "
                                                    "version have their features recomputed from the stored bars "
                                                    "and compared (training/serving skew; 0 = off)")
    schedule: LoopScheduleConfig = LoopScheduleConfig()
    rollout: LoopRolloutConfig = LoopRolloutConfig()


class DataConfig(BaseModel):
    """How market data is read and what is refused (``tideline.data``)."""

    naive_timezone: str | None = Field(
        None, description="IANA zone of timestamps without a UTC offset (e.g. America/New_York); None = UTC. "
                          "A column mixing naive and offset timestamps is refused unless this is set")
    min_quality: float = Field(0.7, ge=0, le=1, description="refuse (quarantine: set aside) a symbol whose data "
                                                            "quality score is below this")
    jump_sigmas: float = Field(30.0, gt=0, description="a close-to-close move beyond this many robust sigmas "
                                                       "of the symbol's own returns is a jump")

    @field_validator("naive_timezone")
    @classmethod
    def _known_zone(cls, v: str | None) -> str | None:
        if v is None:
            return v
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(v)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {v!r} (an IANA name such as UTC or America/New_York)") from None
        return v


# drift methods tideline knows, with their default thresholds. Distances (drift when score >= threshold) and
# p-value tests (drift when p-value <= threshold) are all Evidently stat tests, called by name.
DRIFT_DISTANCE_METHODS: tuple[str, ...] = ("wasserstein", "psi", "jensenshannon", "hellinger", "kl_div", "ed")
DRIFT_PVALUE_METHODS: tuple[str, ...] = ("ks", "t_test", "mannw", "anderson", "cramer_von_mises", "es")


class DriftConfig(BaseModel):
    """Feature and prediction drift checks (``tideline.monitoring.drift``).

    ``auto`` picks per column: a p-value test (``ks``) when either side has fewer than
    ``min_rows_for_distance`` rows (distances are noisy on small samples), else Jensen-Shannon for columns
    with at most ``discrete_max_unique`` distinct values and the normed Wasserstein distance for the rest.
    Both sides are sampled down to ``sample_size`` rows first: this bounds the time, and p-value tests on
    huge samples would call every negligible difference a drift.
    """

    sample_size: int = Field(10_000, ge=100, description="rows sampled from each side before testing")
    report_sample_size: int | None = Field(
        5_000, ge=100, description="rows per side for the HTML report (None: sample_size); its figures are "
                                   "computed on the same rows it shows")
    method: str = Field("auto", description="'auto' or one stat test for every column (see thresholds)")
    thresholds: dict[str, float] = Field(
        default_factory=lambda: {"wasserstein": 0.1, "psi": 0.1, "jensenshannon": 0.1, "hellinger": 0.1,
                                 "kl_div": 0.1, "ed": 0.1, "ks": 0.05, "t_test": 0.05, "mannw": 0.05,
                                 "anderson": 0.05, "cramer_von_mises": 0.05, "es": 0.05},
        description="per method: distance drifts when score >= threshold; p-value test when p <= threshold")
    min_rows_for_distance: int = Field(1000, ge=10, description="auto: below this use the KS test")
    discrete_max_unique: int = Field(5, ge=2, description="auto: columns with this few values use Jensen-Shannon")
    drift_share_threshold: float = Field(0.3, gt=0, le=1, description="dataset drifted when this share drifts")
    prediction_drift: bool = True
    ignore_columns: list[str] = Field(
        default_factory=lambda: ["month_sin", "month_cos"],
        description="never tested (a recent window spans a month or two: month features always 'drift')")
    seed: int = 0

    @field_validator("method")
    @classmethod
    def _known_method(cls, v: str) -> str:
        known = ("auto", *DRIFT_DISTANCE_METHODS, *DRIFT_PVALUE_METHODS)
        if v not in known:
            raise ValueError(f"unknown drift method {v!r}; known: {list(known)}")
        return v

    @field_validator("thresholds")
    @classmethod
    def _known_thresholds(cls, v: dict[str, float]) -> dict[str, float]:
        unknown = sorted(set(v) - set(DRIFT_DISTANCE_METHODS) - set(DRIFT_PVALUE_METHODS))
        if unknown:
            raise ValueError(f"thresholds for unknown drift methods {unknown}")
        bad = sorted(k for k, x in v.items() if not x > 0)
        if bad:
            raise ValueError(f"drift thresholds must be > 0: {bad}")
        return v


class NotificationsConfig(BaseModel):
    """Who hears about what (``tideline.loop.alerts``): apprise URLs per severity. An alert goes to the URLs of its
    own severity (``mailto://``, ``slack://``, ``msteams://``, ``json://`` webhooks ...; apprise's URL syntax).
    No URL: alerts are still recorded (``tideline alerts list``), nothing is sent."""

    critical: list[str] = Field(default_factory=list, description="apprise URLs for critical alerts")
    high: list[str] = Field(default_factory=list, description="apprise URLs for high-severity alerts")
    medium: list[str] = Field(default_factory=list, description="apprise URLs for medium-severity alerts")
    low: list[str] = Field(default_factory=list, description="apprise URLs for low-severity alerts")
    retry_seconds: float = Field(300.0, gt=0, description="wait before retrying a failed delivery (doubling, "
                                                           "at most an hour)")
    timeout_seconds: float = Field(10.0, gt=0, description="connect and read timeout of one delivery")
    stalled_hours: float = Field(26.0, gt=0, description="no successful loop tick for this long raises 'loop "
                                                         "stalled' (critical)")


class ExperienceConfig(BaseModel):
    """The experience buffer (``tideline.monitoring.experience``): served predictions with realized outcomes,
    kept append-only in the registry store, and what the rl family fine-tunes on."""

    enabled: bool = Field(True, description="the loop adds each tick's realized predictions to the buffer")
    retention_days: float = Field(365.0, gt=0, description="experiences whose bar is older than this (before the "
                                                           "newest one) are deleted")
    pending_days: float = Field(7.0, gt=0, description="a logged prediction still waiting for its outcome is "
                                                       "looked at again for at most this long")
    annotate_quantile: float = Field(0.05, gt=0, lt=0.5, description="high-value / failed: the top / bottom "
                                                                      "quantile of rewards; mistakes: the worst "
                                                                      "quantile of wrong-side moves")
    finetune_weight: float = Field(3.0, ge=1, description="the rl family draws annotated experiences this many "
                                                          "times as often when fine-tuning")


class Settings(BaseSettings):
    """Everything configurable. Precedence: explicit arguments > env vars > settings file > defaults."""

    model_config = SettingsConfigDict(env_prefix="TIDELINE_", env_nested_delimiter="__", extra="forbid")

    registry: str = Field("", description="registry URI: file:///path or s3://bucket/prefix ('' = ./.tideline/registry)")
    home: Path = Field(Path(".tideline"), description="local working directory for the embedded default")
    s3_endpoint_url: str | None = Field(None, description="S3 endpoint (MinIO); falls back to AWS_ENDPOINT_URL")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "WARNING"
    data: DataConfig = DataConfig()
    features: FeatureConfig = FeatureConfig()
    evaluation: EvaluationConfig = EvaluationConfig()
    training: TrainingConfig = TrainingConfig()
    policy: PolicyConfig = PolicyConfig()
    positions: PositionConfig = PositionConfig()
    drift: DriftConfig = DriftConfig()
    triggers: TriggerConfig = TriggerConfig()
    loop: LoopConfig = LoopConfig()
    notifications: NotificationsConfig = NotificationsConfig()
    experience: ExperienceConfig = ExperienceConfig()

    @model_validator(mode="after")
    def _volatility_is_a_feature(self) -> Settings:
        if self.positions.vol_window not in self.features.vol_windows:
            raise ValueError(f"positions.vol_window={self.positions.vol_window} must be one of features.vol_windows "
                             f"{sorted(self.features.vol_windows)} (the recent volatility is that feature)")
        return self

    def registry_uri(self) -> str:
        """The registry URI: ``registry`` if set, else the absolute ``file://`` URI of ``<home>/registry``."""
        if self.registry:
            return self.registry
        return (self.home / "registry").resolve().as_uri()

    def endpoint_url(self) -> str | None:
        """The S3 endpoint: ``s3_endpoint_url``, else env ``AWS_ENDPOINT_URL``, else None (plain AWS)."""
        return self.s3_endpoint_url or os.environ.get("AWS_ENDPOINT_URL") or None


def _read_file(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"cannot read settings file {path}: {e.strerror or e}") from None
    try:
        if path.suffix == ".toml":
            data = tomllib.loads(text)
        elif path.suffix in (".yaml", ".yml"):
            data = yaml.safe_load(text) or {}
        elif path.suffix == ".json":
            data = json.loads(text)
        else:
            raise ConfigError(f"settings file {path} must be .toml, .yaml/.yml or .json")
    except (tomllib.TOMLDecodeError, yaml.YAMLError, json.JSONDecodeError) as e:
        raise ConfigError(f"settings file {path} is not valid: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"settings file {path} must hold a mapping at the top level")
    return data.get("tideline", data)


def _deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def load_settings(path: str | Path | None = None, **overrides: Any) -> Settings:
    r"""Build the settings: file (``path`` or ``TIDELINE_CONFIG``) < env vars < ``overrides``.

    The file is TOML, YAML or JSON (its settings may sit under a ``tideline`` key); nested sections merge
    key by key, and an override of None is ignored. Raises ``ConfigError`` for a file that cannot be read or
    parsed, and for any invalid setting (naming the first one).

    The defaults (no file, no ``TIDELINE_*`` variables), then a file and an override:

    >>> import tempfile
    >>> from pathlib import Path
    >>> s = load_settings()
    >>> s.evaluation.cost_bps, s.evaluation.n_splits, s.policy.min_sharpe, s.training.families
    (1.0, 4, 0.5, ['xgboost', 'lightgbm', 'sklearn', 'torch'])
    >>> tmp = tempfile.TemporaryDirectory()
    >>> path = Path(tmp.name) / "tideline.toml"
    >>> _ = path.write_text("[evaluation]\ncost_bps = 2.5\n")
    >>> s = load_settings(path, training={"families": ["lightgbm"]})
    >>> s.evaluation.cost_bps, s.evaluation.n_splits, s.training.families
    (2.5, 4, ['lightgbm'])
    >>> load_settings(evaluation={"n_splits": 1})
    Traceback (most recent call last):
    ...
    tideline.errors.ConfigError: invalid setting evaluation.n_splits: Input should be greater than or equal to 2
    >>> tmp.cleanup()
    """
    path = path or os.environ.get("TIDELINE_CONFIG")
    file_data = _read_file(Path(path)) if path else {}
    try:
        env_only = Settings()  # env vars and defaults
        env_set = env_only.model_dump(exclude_unset=True)
        merged = _deep_merge(_deep_merge(file_data, env_set), {k: v for k, v in overrides.items() if v is not None})
        return Settings.model_validate(merged) if merged else env_only
    except ValidationError as e:
        first = e.errors()[0]
        loc = ".".join(str(x) for x in first["loc"])
        msg = str(first["msg"]).removeprefix("Value error, ")
        raise ConfigError(f"invalid setting {loc}: {msg}" if loc else f"invalid settings: {msg}") from None
