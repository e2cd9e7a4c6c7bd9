"""Prometheus metrics of the predictor. The names and labels are a contract (docs/CONTRACTS.md, "Serving
and rollouts"): the rollout analysis reads them.

They live in prometheus_client's default registry, which kserve's ModelServer already exposes on
``GET /metrics`` (``kserve.protocol.rest.server.metrics_handler`` encodes ``prometheus_client.REGISTRY``),
so kserve's own ``request_*_seconds`` histograms and these show on the same page.
"""

from __future__ import annotations

from typing import Any, Final

import numpy as np
from prometheus_client import Counter, Gauge, Histogram

LATENCY_BUCKETS: Final = (
    0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0,
    2.5, 5.0,
)
# Predictions are forward log returns: symmetric buckets from 1 bp to 10%.
PREDICTION_BUCKETS: Final = tuple(
    sorted({s * b for b in (0.0001, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1) for s in (-1, 1)}
           | {0.0})
)

REQUESTS: Final = Counter(
    "tideline_requests", "Prediction requests by HTTP status code",
    ["model", "version", "role", "code"],
)
REQUEST_ERRORS: Final = Counter(
    "tideline_request_errors", "Prediction requests answered with a status code >= 400",
    ["model", "version", "role", "code"],
)
REQUEST_DURATION: Final = Histogram(
    "tideline_request_duration_seconds", "Prediction request latency, body read to response sent",
    ["model", "version", "role"], buckets=LATENCY_BUCKETS,
)
PREDICTION_VALUE: Final = Histogram(
    "tideline_prediction_value", "Predicted forward return per row",
    ["version", "role"], buckets=PREDICTION_BUCKETS,
)
SHADOW_REQUESTS: Final = Counter(
    "tideline_shadow_requests", "Shadow predictions: ok, error (the shadow model failed), timeout, "
    "dropped (too many shadow predictions in flight)",
    ["version", "outcome"],
)
MODEL_RELOADS: Final = Counter(
    "tideline_model_reloads", "Hot reloads of a slot after its registry alias moved: ok or failed",
    ["outcome"],
)
MODEL_INFO: Final = Gauge(
    "tideline_model_info", "1 for each model version this process serves, by role and registry ref",
    ["version", "role", "ref"],
)
KILL_SWITCH: Final = Gauge(
    "tideline_kill_switch", "1 while the registry's kill switch is on and every answer is a flat position (0)",
)
# Not in the contract (extra): the prediction log's own health.
PREDLOG_ROWS: Final = Counter(
    "tideline_prediction_log_rows", "Prediction log rows: written, failed (a write failed; retried), "
    "dropped (buffer full), dead_letter (a row the log cannot hold; kept under predictions-dead/)",
    ["outcome"],
)
SLOW_CLIENTS: Final = Counter(
    "tideline_slow_clients", "Connections closed because the headers (phase=headers) or the body (phase=body, "
    "answered 408) stopped arriving within the timeout, or refused with a 503 over --max-connections "
    "(phase=over_limit)",
    ["phase"],
)
PREDLOG_WRITE_ERRORS: Final = Counter(
    "tideline_prediction_log_write_errors", "Prediction log objects that could not be written",
)


_CHILDREN: dict[tuple[int, tuple[str, ...]], Any] = {}


def child(metric: Any, *labels: str) -> Any:
    """``metric.labels(*labels)``, cached (labels() costs a lock and a dict lookup per call)."""
    key = (id(metric), labels)
    c = _CHILDREN.get(key)
    if c is None:
        c = _CHILDREN[key] = metric.labels(*labels)
    return c


def forget(metric: Any, *labels: str) -> None:
    """Remove a label set from ``metric`` (and the cache)."""
    _CHILDREN.pop((id(metric), labels), None)
    try:
        metric.remove(*labels)
    except KeyError:
        pass


def observe_predictions(values: np.ndarray, version: str, role: str) -> None:
    """Add every predicted value to the ``tideline_prediction_value`` histogram.

    Large batches are binned with numpy and added per bucket (what ``observe`` does one value at a time,
    through the same child objects); small ones go through ``observe``.
    """
    h = child(PREDICTION_VALUE, version, role)
    if len(values) <= 16:
        for v in values.tolist():
            h.observe(v)
        return
    bounds = getattr(h, "_upper_bounds", None)
    buckets = getattr(h, "_buckets", None)
    total = getattr(h, "_sum", None)
    if bounds is None or buckets is None or total is None or len(bounds) != len(buckets):
        for v in values.tolist():  # pragma: no cover - prometheus_client internals changed
            h.observe(v)
        return
    idx = np.searchsorted(np.asarray(bounds, dtype=np.float64), values, side="left")  # first bound >= v
    counts = np.bincount(idx, minlength=len(bounds))
    total.inc(float(values.sum()))
    for i, c in enumerate(counts.tolist()):
        if c:
            buckets[i].inc(c)
