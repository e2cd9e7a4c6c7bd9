"""Control-plane metrics for Prometheus: what the loop, its retrains and its rollouts did, read from the store.

**Recorded in the store, exported by a long-running process — not pushed.** Most of the work is done by
one-shot processes: a CronWorkflow pod per loop tick on a cluster, a container or subprocess per pipeline task,
a rollout reconciled by whichever controller holds its lease. Each already writes what it did to the registry
store — the tick records (``loop/ticks/``), the registry's history (registrations, promotions, rollbacks), the
rollout documents (``rollouts/``, ended ones under ``rollouts/history/``), each version's manifest and its
``live-metrics.json`` / ``drift-latest.json`` attachments. ``ControlPlaneCollector`` turns those records into
metrics when Prometheus scrapes a long-running process (``tideline loop --metrics-port``, ``tideline metrics
serve``, the operator on a cluster). So a counter is a count of durable records: it never resets or double
counts because a pod restarted, a one-shot job needs no network path to a metrics server, and there is no
Pushgateway to run whose last push outlives the job that made it (Prometheus' own advice: the Pushgateway is
for service-level batch jobs, and its groups never expire). The cost, reading the store on a scrape, is bounded:
tick records and ended rollouts never change and are read once (cached by key); the rest is a few objects.

Metrics (``tideline_`` prefix): ``loop_ticks_total{outcome}``, ``loop_last_tick_timestamp_seconds``,
``loop_last_successful_tick_timestamp_seconds``, ``retrains_started_total{trigger}``,
``retrains_finished_total{trigger,outcome}``, ``training_failures_total{family}``,
``training_duration_seconds{family}`` (a summary over registered versions), ``promotions_total``,
``rollbacks_total{reason}``, ``production_model_age_seconds``, ``production_info{version}``,
``live_directional_accuracy{version,role}``, ``live_sharpe{version,role}``, ``live_mae{version,role}``,
``live_outcomes{version,role}``, ``drift_share{version}``, ``kill_switch_on``, ``alerts_open{severity}``,
``notifications_total{outcome}`` (``tideline.loop.alerts``' records), ``experiences_added_total``,
``experience_skew_total{version}`` (rows quarantined for training/serving skew), ``experience_quarantined_total
{reason}`` (the records of the experience passes that stored something, ``experience/passes/``: a pass run by
hand counts too), ``experiences_pending`` and ``experience_last_pass_timestamp_seconds`` (the buffer's state:
its latest pass), ``control_plane_scrape_errors_total``.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric, SummaryMetricFamily

from tideline.clock import utc_timestamp
from tideline.errors import IntegrityError, RegistryError, StorageUnavailable
from tideline.loop.core import TICKS_PREFIX
from tideline.monitoring.experience import PASSES, read_state
from tideline.monitoring.feedback import LIVE_METRICS_ATTACHMENT
from tideline.registry import Registry
from tideline.store import NotFound
from tideline.triggers import DRIFT_ATTACHMENT

log = logging.getLogger(__name__)

ROLLOUTS_PREFIX = "rollouts/"
TERMINAL_BACK = ("RolledBack", "Reverted")  # a rollout that ended with production unchanged or restored
# a failed analysis check -> the rollback reason label (bounded: Prometheus labels must not be free text)
_CHECK_REASONS = {"error_rate": "error_rate", "p99_latency": "latency", "latency": "latency",
                  "directional_accuracy": "accuracy", "prediction_divergence": "divergence",
                  "prediction_ks": "distribution", "ks": "distribution", "superiority": "superiority",
                  "net_pnl": "pnl"}


def rollback_reason(doc: dict[str, Any]) -> str:
    """The bounded reason label of an ended rollout document that went back: ``manual``, ``guard`` (the watch
    after promotion reverted it), ``no_outcomes`` (the shadow never got enough labelled outcomes),
    ``inconclusive``, or the first failed check of its last analysis (``error_rate``, ``latency``, ``accuracy``,
    ``divergence``, ``distribution``, ``superiority``, ``pnl``); ``other`` when none applies."""
    status = doc.get("status") or {}
    message = str(status.get("message") or "")
    if "manual rollback" in message:
        return "manual"
    if status.get("phase") == "Reverted":
        return "guard"
    if "labelled outcomes after" in message:
        return "no_outcomes"
    if "inconclusive analyses in a row" in message:
        return "inconclusive"
    for analysis in reversed(status.get("analyses") or []):
        failed = [c.get("name") for c in analysis.get("checks") or [] if c.get("passed") is False]
        for name in failed:
            if name in _CHECK_REASONS:
                return _CHECK_REASONS[name]
        if failed:
            return "other"
    return "other"


def _trigger(tick: dict[str, Any]) -> str:
    """The trigger of a tick's retrain: the first rule that fired, ``forced`` (a scheduled or manual forced
    retrain, a restart of a dead run), ``unknown`` when the tick recorded no decision."""
    decide = next((s for s in tick.get("steps", []) if s.get("step") == "decide"), None)
    if decide is None:
        return "unknown"
    fired = [r.get("name") for r in decide.get("rules") or [] if r.get("fired")]
    return str(fired[0]) if fired else "forced"


class ControlPlaneCollector:
    """A ``prometheus_client`` collector (register it with a ``CollectorRegistry``) reading ``registry``'s store on
    each scrape; ``clock()`` gives now (epoch seconds) for the model age. A store that cannot be read makes the
    scrape export what it could and count the failure (``tideline_control_plane_scrape_errors_total``), never
    raise: Prometheus then still sees the exporter up."""

    def __init__(self, registry: Registry, *, clock: Callable[[], float] = time.time) -> None:
        self.registry = registry
        self.clock = clock
        self._docs: dict[str, dict[str, Any] | None] = {}  # immutable objects by key (ticks, ended rollouts)
        self._versions: dict[str, dict[str, Any]] = {}  # version -> what its manifest says (immutable too)
        self._errors = 0
        self._lock = threading.Lock()

    # -- reading --------------------------------------------------------------------------------------------
    def _immutable(self, key: str) -> dict[str, Any] | None:
        if key not in self._docs:
            try:
                self._docs[key] = json.loads(self.registry.store.get(key)[0])
            except NotFound:
                return None
            except ValueError:
                self._docs[key] = None  # unreadable for good: skipped, not re-read every scrape
        return self._docs[key]

    def _attachment(self, version: str, name: str) -> dict[str, Any] | None:
        try:
            return json.loads(self.registry.get_attachment(version, name))
        except (NotFound, ValueError):
            return None
        except (StorageUnavailable, IntegrityError):
            raise  # the store or the attachment is broken: the scrape counts it
        except RegistryError:  # an attachment never written, a version gone
            return None

    def _ticks(self) -> list[dict[str, Any]]:
        keys = sorted(k for k in self.registry.store.list(TICKS_PREFIX) if k.endswith(".json"))
        return [d for d in (self._immutable(k) for k in keys) if d]

    def _passes(self) -> list[dict[str, Any]]:
        keys = sorted(k for k in self.registry.store.list(PASSES) if k.endswith(".json"))
        return [d for d in (self._immutable(k) for k in keys) if isinstance(d, dict)]

    def _rollouts(self) -> list[dict[str, Any]]:
        out = []
        for key in self.registry.store.list(ROLLOUTS_PREFIX):
            if not key.endswith(".json"):
                continue
            if key.startswith(ROLLOUTS_PREFIX + "history/"):
                doc = self._immutable(key)
            else:  # a current rollout document changes while it runs: read it each time
                try:
                    doc = json.loads(self.registry.store.get(key)[0])
                except (NotFound, ValueError):
                    doc = None
            if doc:
                out.append(doc)
        return out

    def _version(self, version: str) -> dict[str, Any]:
        if version not in self._versions:
            mv = self.registry.get(version)
            ev = mv.evaluation or {}
            self._versions[version] = {"family": mv.family, "created_at": mv.created_at,
                                       "fit_seconds": ev.get("fit_seconds")}
        return self._versions[version]

    # -- the metrics ----------------------------------------------------------------------------------------
    def describe(self) -> Iterator[Metric]:
        """Nothing up front (the families are built on each scrape): registering does not read the store."""
        return iter(())

    def collect(self) -> Iterator[Metric]:
        """Every control-plane metric from the store as it is now (see the module docstring)."""
        with self._lock:  # one scrape at a time: the caches are not shared between threads
            metrics: list[Metric] = []
            for part in (self._loop_metrics, self._registry_metrics, self._rollout_metrics, self._live_metrics,
                         self._alert_metrics, self._experience_metrics):
                try:
                    metrics += part()
                except Exception as e:  # noqa: BLE001 - one unreadable source must not blank the others
                    self._errors += 1
                    log.warning("control-plane metrics: %s failed: %s", part.__name__.strip("_"), e)
            errors = CounterMetricFamily("tideline_control_plane_scrape_errors",
                                         "Parts of a control-plane scrape that could not be read from the store.")
            errors.add_metric([], self._errors)
            metrics.append(errors)
        yield from metrics

    def _loop_metrics(self) -> list[Metric]:
        ticks = self._ticks()
        by_outcome = Counter(str(t.get("outcome")) for t in ticks)
        c_ticks = CounterMetricFamily("tideline_loop_ticks", "Loop ticks recorded, by outcome (ok, busy, failed).",
                                      labels=["outcome"])
        for outcome in ("ok", "busy", "failed"):
            c_ticks.add_metric([outcome], by_outcome.get(outcome, 0))
        last = GaugeMetricFamily("tideline_loop_last_tick_timestamp_seconds", "When the latest tick ran (wall).")
        last_ok = GaugeMetricFamily("tideline_loop_last_successful_tick_timestamp_seconds",
                                    "When the latest tick that ended ok ran (wall).")
        walls = [(_epoch(t.get("wall")), t.get("outcome")) for t in ticks]
        walls = [(w, o) for w, o in walls if w is not None]
        if walls:
            last.add_metric([], max(w for w, _ in walls))
        oks = [w for w, o in walls if o == "ok"]
        if oks:
            last_ok.add_metric([], max(oks))

        started = Counter()
        finished: Counter[tuple[str, str]] = Counter()
        failures: Counter[str] = Counter()
        for t in ticks:
            trig = _trigger(t)
            for s in t.get("steps", []):
                # a run started: it ended in this tick (approved, rejected, failed) or went to Kubeflow Pipelines
                # (submitted: its gate names the candidate later); deferred and busy ones never started
                if s.get("step") == "retrain" and s.get("outcome") in ("approved", "rejected", "failed", "submitted"):
                    started[trig] += 1
                    if s["outcome"] != "submitted":
                        finished[(trig, str(s["outcome"]))] += 1
                    for family in (s.get("failures") or {}):
                        failures[str(family)] += 1
        c_started = CounterMetricFamily("tideline_retrains_started", "Retraining runs the loop started (run here or "
                                        "submitted to Kubeflow Pipelines), by trigger.", labels=["trigger"])
        for trig, n in sorted(started.items()):
            c_started.add_metric([trig], n)
        c_finished = CounterMetricFamily(
            "tideline_retrains_finished",
            "Retraining runs the loop ran to their end, by trigger and outcome (approved: a candidate passed the "
            "gate; rejected: none did; failed: the run failed).", labels=["trigger", "outcome"])
        for (trig, outcome), n in sorted(finished.items()):
            c_finished.add_metric([trig, outcome], n)
        c_fail = CounterMetricFamily("tideline_training_failures",
                                     "Model families that failed to train in a retraining run (the run went on).",
                                     labels=["family"])
        for family, n in sorted(failures.items()):
            c_fail.add_metric([family], n)
        return [c_ticks, last, last_ok, c_started, c_finished, c_fail]

    def _registry_metrics(self) -> list[Metric]:
        reg = self.registry
        history = reg.history()
        promotions = sum(1 for e in history if e.action == "promote")
        c_prom = CounterMetricFamily("tideline_promotions", "Versions promoted to production.")
        c_prom.add_metric([], promotions)
        aliases = reg.aliases()
        production = aliases.get("production")
        age = GaugeMetricFamily("tideline_production_model_age_seconds",
                                "Seconds since the production version was registered (trained).")
        info = GaugeMetricFamily("tideline_production_info", "The production version (value 1).", labels=["version"])
        durations = SummaryMetricFamily("tideline_training_duration_seconds",
                                        "Final-fit seconds of each registered version, by family.", labels=["family"])
        per_family: dict[str, list[float]] = {}
        for e in history:
            if e.action == "register" and e.version and e.actor != "cleanup":
                try:
                    v = self._version(e.version)
                except Exception:  # noqa: BLE001 - a deleted or refused version: nothing to count
                    continue
                if isinstance(v.get("fit_seconds"), (int, float)):
                    per_family.setdefault(str(v["family"]), []).append(float(v["fit_seconds"]))
        for family, secs in sorted(per_family.items()):
            durations.add_metric([family], count_value=len(secs), sum_value=sum(secs))
        if production:
            created = _epoch(self._version(production)["created_at"])
            if created is not None:
                age.add_metric([], max(0.0, self.clock() - created))
            info.add_metric([production], 1)
        ks = GaugeMetricFamily("tideline_kill_switch_on", "1 while the registry's kill switch makes every answer flat.")
        ks.add_metric([], 1 if reg.kill_switch() is not None else 0)
        return [c_prom, age, info, durations, ks]

    def _rollout_metrics(self) -> list[Metric]:
        reasons: Counter[str] = Counter()
        for doc in self._rollouts():
            if (doc.get("status") or {}).get("phase") in TERMINAL_BACK:
                reasons[rollback_reason(doc)] += 1
        # production rolled back outside a rollout (``tideline rollback``): a registry event, no rollout document
        backs = sum(1 for e in self.registry.history() if e.action == "rollback")
        if backs:
            reasons["production_rollback"] += backs
        c = CounterMetricFamily("tideline_rollbacks", "Rollouts rolled back or reverted, and production rollbacks "
                                "by hand, by reason.", labels=["reason"])
        for reason, n in sorted(reasons.items()):
            c.add_metric([reason], n)
        return [c]

    def _live_metrics(self) -> list[Metric]:
        acc = GaugeMetricFamily("tideline_live_directional_accuracy",
                                "Live directional accuracy on realized outcomes (latest monitor window).",
                                labels=["version", "role"])
        sharpe = GaugeMetricFamily("tideline_live_sharpe", "Live annualised Sharpe of the version's positions.",
                                   labels=["version", "role"])
        mae = GaugeMetricFamily("tideline_live_mae", "Live mean absolute error on realized outcomes.",
                                labels=["version", "role"])
        n = GaugeMetricFamily("tideline_live_outcomes", "Realized outcomes behind the live figures.",
                              labels=["version", "role"])
        drift = GaugeMetricFamily("tideline_drift_share", "Share of features drifted at the latest drift check.",
                                  labels=["version"])
        versions = sorted({v for a, v in self.registry.aliases().items() if a in ("production", "candidate", "shadow",
                                                                                 "previous")})
        for version in versions:
            live = self._attachment(version, LIVE_METRICS_ATTACHMENT)
            for role, m in ((live or {}).get("roles") or {}).items():
                if not m.get("n"):
                    continue
                for family, key in ((acc, "directional_accuracy"), (sharpe, "sharpe"), (mae, "mae")):
                    if isinstance(m.get(key), (int, float)):
                        family.add_metric([version, role], float(m[key]))
                n.add_metric([version, role], float(m["n"]))
            d = self._attachment(version, DRIFT_ATTACHMENT)
            share = ((d or {}).get("result") or d or {}).get("drifted_share")
            if isinstance(share, (int, float)):
                drift.add_metric([version], float(share))
        return [acc, sharpe, mae, n, drift]

    def _alert_metrics(self) -> list[Metric]:
        from tideline.loop.alerts import ALERTS_PREFIX, RESOLVED_PREFIX, read_alerts

        store = self.registry.store
        records = read_alerts(store, ALERTS_PREFIX)  # the open ones (and a resolved one whose move was cut short)
        archived = read_alerts(store, RESOLVED_PREFIX, self._immutable)  # never change: read once
        ids = {a.id for a in archived}
        alerts = archived + [a for a in records if a.id not in ids]
        open_ = GaugeMetricFamily("tideline_alerts_open", "Alerts open or acknowledged, by severity.",
                                  labels=["severity"])
        counts = Counter(a.severity for a in alerts if a.status != "resolved")
        for severity in ("critical", "high", "medium", "low"):
            open_.add_metric([severity], counts.get(severity, 0))
        sent = CounterMetricFamily("tideline_notifications", "Notification deliveries, by outcome (a failed one "
                                   "is retried later).", labels=["outcome"])
        ok = sum(1 for a in alerts for d in a.deliveries if d.get("ok"))
        failed = sum(int(d.get("attempts", 1)) - (1 if d.get("ok") else 0) for a in alerts for d in a.deliveries)
        sent.add_metric(["sent"], ok)
        sent.add_metric(["failed"], failed)
        return [open_, sent]

    def _experience_metrics(self) -> list[Metric]:
        passes = self._passes()
        added = CounterMetricFamily("tideline_experiences_added", "Experiences added to the buffer (served "
                                    "predictions with a realized outcome and verified features).")
        skew = CounterMetricFamily("tideline_experience_skew", "Served predictions whose features, recomputed from "
                                   "the stored bars, differ from what the version saw (training/serving skew; "
                                   "quarantined, never trained on), by version.", labels=["version"])
        held = CounterMetricFamily("tideline_experience_quarantined", "Rows moved to the experience quarantine, by "
                                   "reason (skew, unknown_version, unreadable_version).", labels=["reason"])
        pending = GaugeMetricFamily("tideline_experiences_pending", "Served predictions still waiting for their "
                                    "outcome at the latest experience pass.")
        last = GaugeMetricFamily("tideline_experience_last_pass_timestamp_seconds",
                                 "When the latest experience pass ran.")
        per_version: Counter[str] = Counter()
        per_reason: Counter[str] = Counter()
        total = 0
        for p in passes:
            total += int(p.get("added") or 0)
            per_version.update({str(k): int(n) for k, n in (p.get("skew") or {}).items()})
            per_reason.update({str(k): int(n) for k, n in (p.get("quarantined") or {}).items()})
        added.add_metric([], total)
        for version, n in sorted(per_version.items()):
            skew.add_metric([version], n)
        for reason, n in sorted(per_reason.items()):
            held.add_metric([reason], n)
        latest = read_state(self.registry).get("last_pass")
        at = _epoch(latest.get("at")) if isinstance(latest, dict) else None
        if at is not None:
            last.add_metric([], at)
            pending.add_metric([], float(latest.get("pending") or 0))  # type: ignore[union-attr]
        return [added, skew, held, pending, last]


def _epoch(value: Any) -> float | None:
    """Epoch seconds of an ISO time (None for none or garbage)."""
    try:
        ts = utc_timestamp(value) if value else None
    except (ValueError, TypeError):
        return None
    return None if ts is None else float(ts.timestamp())


def serve(registry: Registry, port: int, *, host: str = "127.0.0.1") -> tuple[Any, int]:
    """Serve ``/metrics`` with a ``ControlPlaneCollector`` of ``registry`` on ``host:port`` (0: a free port) in a
    background thread; returns (the server, its port)."""
    from prometheus_client import CollectorRegistry, start_http_server

    reg = CollectorRegistry()
    reg.register(ControlPlaneCollector(registry))  # type: ignore[arg-type]
    server, _thread = start_http_server(port, addr=host, registry=reg)
    return server, int(server.server_address[1])
