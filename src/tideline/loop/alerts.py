"""Alerts people hear about and act on: raised from what the loop, the registry and the rollouts recorded in the
store, kept there as records (list, acknowledge, resolve: who and when), delivered through apprise by severity.

**Raised from records, like the metrics** (``tideline.loop.metrics``): each pass (``process``, run after every
loop tick and by the operator) reads what was recorded since the last pass — new tick records, new registry
history events, rollout documents that ended — and raises:

=====================  ========  =================================================================
kind                   severity  from
=====================  ========  =================================================================
``kill_switch``        critical  the registry's history: the kill switch was thrown
``loop_stalled``       critical  no successful tick for ``notifications.stalled_hours``
``rolled_back``        high      a rollout document that ended RolledBack or Reverted (with why)
``approval_needed``    high      a rollout waits for a person's approval (AwaitingApproval)
``retrain_failed``     high      a tick whose retraining run failed (with the error)
``production_rollback`` high     the registry's history: production rolled back by hand
``decay``              medium    a tick whose performance_decay rule fired (with its reason)
``drift``              medium    a tick whose drift rule fired (with its reason)
``skew``               medium    a tick that found training/serving skew: features recomputed from the stored
                                 bars differ from what a version saw (its experiences are quarantined)
``rejected``           low       a tick whose run's candidates all failed the gate (with the reasons)
``promoted``           low       the registry's history: a version promoted to production
=====================  ========  =================================================================

**Never twice while open**: an alert has a key (``decay:v3``, ``kill_switch``, ``rolled_back:tideline:v4``...);
while an alert with that key is open or acknowledged, the same condition only counts an occurrence on it (no new
record, nothing sent). Resolving it lets the next occurrence raise a new one.

**Resolved ones are archived**: resolving an alert moves its record from ``alerts/records/`` to
``alerts/resolved/`` (written there first, then deleted from the records; a pass finishes a move that was cut
short). So each pass, and each metrics scrape, reads only the open and acknowledged records — however many have
been resolved over the months — and a resolved record never changes again (the metrics read it once).

**Delivery never blocks the loop**: each alert goes to the apprise URLs of its severity
(``notifications.<severity>``), each with ``notifications.timeout_seconds``; a URL that fails (an unreachable SMTP
server or webhook, a malformed URL) is recorded on the alert with its one-line reason and retried on a later pass
(after ``retry_seconds``, doubling, at most an hour); nothing raises into the loop, nothing is lost, and
``tideline_notifications_total{outcome}`` counts deliveries (the metrics module reads the records).
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from tideline.clock import utc_timestamp, utcnow
from tideline.config import Settings
from tideline.errors import ConfigError
from tideline.loop.core import TICKS_PREFIX
from tideline.registry import Registry
from tideline.store import NotFound, Unchanged, update_json

log = logging.getLogger(__name__)

SEVERITIES = ("critical", "high", "medium", "low")
STATUSES = ("open", "acknowledged", "resolved")
ALERTS_PREFIX = "alerts/records/"
RESOLVED_PREFIX = "alerts/resolved/"
CURSOR_KEY = "alerts/cursor.json"
MAX_RETRY_S = 3600.0

# a delivery: (url, title, body, severity, timeout seconds) -> None, raising with a one-line reason on failure
Deliver = Callable[[str, str, str, str, float], None]


@dataclass
class Alert:
    """One alert record (``alerts/records/<id>.json``)."""
    id: str
    key: str
    kind: str
    severity: str
    title: str
    body: str
    created_at: str
    status: str = "open"
    occurrences: int = 1
    last_seen: str = ""
    acknowledged_by: str | None = None
    acknowledged_at: str | None = None
    resolved_by: str | None = None
    resolved_at: str | None = None
    deliveries: list[dict[str, Any]] = field(default_factory=list)
    """one entry per route: ``route`` (the URL with secrets hidden), ``ok``, ``at``, ``error``, ``attempts``."""
    retry_at: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """The record as JSON types."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Alert:
        """Parse ``to_dict`` output (unknown keys are ignored: newer writers may add some)."""
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in d.items() if k in known})


# ---- the records ---------------------------------------------------------------------------------------------
def _key(alert_id: str) -> str:
    return f"{ALERTS_PREFIX}{alert_id}.json"


def _resolved_key(alert_id: str) -> str:
    return f"{RESOLVED_PREFIX}{alert_id}.json"


def read_alerts(store: Any, prefix: str, read: Callable[[str], dict[str, Any] | None] | None = None) -> list[Alert]:
    """The alert records under ``prefix`` (unreadable ones skipped); ``read(key)`` reads one (default: the
    store; the metrics pass a cached reader for the archive, whose records never change)."""
    out = []
    for key in store.list(prefix):
        doc = read(key) if read is not None else _read(store, key)
        if not isinstance(doc, dict):
            continue
        try:
            out.append(Alert.from_dict(doc))
        except TypeError:  # a record missing a field
            continue
    return out


def list_alerts(registry: Registry, *, include_resolved: bool = False) -> list[Alert]:
    """The open and acknowledged alerts, newest first; the resolved ones too (the archive) with
    ``include_resolved``."""
    records = read_alerts(registry.store, ALERTS_PREFIX)
    out = [a for a in records if a.status != "resolved"]
    if include_resolved:
        archived = read_alerts(registry.store, RESOLVED_PREFIX)
        ids = {a.id for a in archived}
        out += archived + [a for a in records if a.status == "resolved" and a.id not in ids]  # a move cut short
    return sorted(out, key=lambda a: a.created_at, reverse=True)


def _archive(registry: Registry, alert: Alert) -> None:
    """Move a resolved record to the archive: written there first, then deleted from the records."""
    registry.store.put(_resolved_key(alert.id), json.dumps(alert.to_dict()).encode())
    registry.store.delete(_key(alert.id))


def _update(registry: Registry, alert_id: str, mutate: Callable[[Alert], Alert]) -> Alert:
    """Read-modify-write one record (compare-and-swap: a concurrent ack and delivery both land). An archived
    (resolved) alert is never written again: ``mutate`` sees it (acknowledging one says it is resolved) and
    whatever it would change is dropped."""
    def apply(doc: dict[str, Any] | None) -> tuple[dict[str, Any], Alert]:
        if doc is None:
            archived = _read(registry.store, _resolved_key(alert_id))
            if archived is None:
                raise ConfigError(f"no alert {alert_id!r}", hint="tideline alerts list --all")
            mutate(Alert.from_dict(archived))
            raise Unchanged(Alert.from_dict(archived))
        new = mutate(Alert.from_dict(doc))
        return new.to_dict(), new

    return update_json(registry.store, _key(alert_id), apply)


def acknowledge(registry: Registry, alert_id: str, *, by: str, now: str | None = None) -> Alert:
    """Mark an open alert acknowledged by ``by`` (a person): still open for deduplication, no longer new."""
    def mutate(a: Alert) -> Alert:
        if a.status == "resolved":
            raise ConfigError(f"alert {alert_id} is resolved (by {a.resolved_by} at {a.resolved_at})")
        if a.status == "acknowledged":
            raise Unchanged(a)
        a.status, a.acknowledged_by, a.acknowledged_at = "acknowledged", by, now or utcnow().isoformat()
        return a

    return _update(registry, alert_id, mutate)


def resolve(registry: Registry, alert_id: str, *, by: str, now: str | None = None) -> Alert:
    """Mark an alert resolved by ``by``: the next occurrence of its condition raises a new alert."""
    def mutate(a: Alert) -> Alert:
        if a.status == "resolved":
            raise Unchanged(a)
        a.status, a.resolved_by, a.resolved_at = "resolved", by, now or utcnow().isoformat()
        return a

    alert = _update(registry, alert_id, mutate)
    if registry.store.exists(_key(alert_id)):
        _archive(registry, alert)
    return alert


# ---- raising them from the records ---------------------------------------------------------------------------
@dataclass
class _Raised:
    key: str
    kind: str
    severity: str
    title: str
    body: str


def _from_tick(tick: dict[str, Any]) -> Iterable[_Raised]:
    steps = tick.get("steps") or []
    production = next((monitored_version(s) for s in steps if s.get("step") == "monitor" and s.get("outcome") == "ok"),
                      "production")
    for s in steps:
        step, outcome, summary = s.get("step"), s.get("outcome"), str(s.get("summary") or "")
        if step == "retrain" and outcome == "failed":
            yield _Raised("retrain_failed", "retrain_failed", "high", "Retraining run failed",
                          f"tick {tick.get('id')} at {tick.get('wall')}: {summary}")
        elif step == "retrain" and outcome == "rejected":
            run = s.get("run_id") or tick.get("id")
            yield _Raised(f"rejected:{run}", "rejected", "low", "Candidates rejected by the gate",
                          f"run {run}: {summary}")
        elif step in ("monitor", "experience") and outcome == "ok":
            counts = s.get("skew") or {}
            for version, n in sorted(counts.items()):
                n = n.get("mismatched", 0) if isinstance(n, dict) else n
                if n:
                    yield _Raised(f"skew:{version}", "skew", "medium", f"Training/serving skew: {version}",
                                  f"{summary} (tick {tick.get('id')})")
        elif step == "decide":
            for rule in s.get("rules") or []:
                if rule.get("fired") and rule.get("name") in ("performance_decay", "drift"):
                    kind = "decay" if rule["name"] == "performance_decay" else "drift"
                    what = "Live performance decayed" if kind == "decay" else "Features drifted"
                    yield _Raised(f"{kind}:{production}", kind, "medium", f"{what}: {production}",
                                  f"{rule.get('reason', '')} (tick {tick.get('id')}; {s.get('outcome')})")


def monitored_version(step: dict[str, Any]) -> str:
    """The version a tick's monitor step watched (records before it was kept: the start of its summary)."""
    return str(step.get("version") or str(step.get("summary", "")).split(":", 1)[0])


def _from_event(ev: Any) -> Iterable[_Raised]:
    if ev.action == "kill_switch_on":
        yield _Raised("kill_switch", "kill_switch", "critical", "Kill switch engaged: every predictor answers flat",
                      f"{ev.reason} (by {ev.actor or 'unknown'} at {ev.at})")
    elif ev.action == "promote":
        yield _Raised(f"promoted:{ev.version}", "promoted", "low", f"{ev.version} promoted to production",
                      f"{ev.version} replaced {ev.from_version or 'nothing'}: {ev.reason} (by {ev.actor} at {ev.at})")
    elif ev.action == "rollback":
        yield _Raised(f"production_rollback:{ev.from_version}", "production_rollback", "high",
                      f"Production rolled back to {ev.version}",
                      f"{ev.from_version} -> {ev.version}: {ev.reason} (by {ev.actor} at {ev.at})")


def _from_rollout(doc: dict[str, Any]) -> Iterable[_Raised]:
    spec, status = doc.get("spec") or {}, doc.get("status") or {}
    cand = spec.get("candidate", "?")
    if status.get("phase") == "AwaitingApproval":
        yield _Raised(f"approval:{spec.get('name', '?')}:{cand}", "approval_needed", "high",
                      f"Rollout of {cand} awaits approval", str(status.get("message", "")))
        return
    if status.get("phase") not in ("RolledBack", "Reverted"):
        return
    yield _Raised(f"rolled_back:{spec.get('name', '?')}:{cand}", "rolled_back", "high",
                  f"Rollout of {cand} {'reverted' if status['phase'] == 'Reverted' else 'rolled back'}",
                  f"{cand} vs {spec.get('baseline', '?')}: {status.get('message', '')}")


def raise_alerts(registry: Registry, settings: Settings, *, now: float | None = None) -> list[Alert]:
    """Read what was recorded since the last pass, raise the alerts it calls for (deduplicated against open ones)
    and store them; returns the new records. The first pass ever starts from the records as they are (the past
    raises nothing) apart from conditions that hold now (kill switch on, loop stalled)."""
    now = time.time() if now is None else now
    store = registry.store
    try:
        cursor = json.loads(store.get(CURSOR_KEY)[0])
    except NotFound:
        cursor = None
    tick_keys = sorted(k for k in store.list(TICKS_PREFIX) if k.endswith(".json"))
    history = registry.history()
    # a rollout's end by what it is, not where it is stored: an ended document moves to rollouts/history/ when
    # the next rollout of its name starts, and must not be raised again there
    docs = [d for d in (_read(store, k) for k in store.list("rollouts/") if k.endswith(".json")) if d]
    rollout_docs = {_rollout_id(d): d for d in docs
                    if (d.get("status") or {}).get("phase") in ("RolledBack", "Reverted", "AwaitingApproval")}
    ended = set(rollout_docs)
    raised: list[_Raised] = []
    if cursor is not None:
        for key in tick_keys:
            if key > cursor.get("tick", ""):
                raised += _from_tick(_read(store, key) or {})
        for ev in history[int(cursor.get("history", 0)):]:
            raised += _from_event(ev)
        seen = set(cursor.get("rollouts", []))
        for rid in sorted(ended - seen):
            raised += _from_rollout(rollout_docs[rid])
    elif registry.kill_switch() is not None:
        ks = registry.kill_switch()
        raised.append(_Raised("kill_switch", "kill_switch", "critical", "Kill switch engaged: every predictor "
                              "answers flat", f"{ks.reason} (since {ks.at})"))
    last_ok = max((_wall(t) for t in (_read(store, k) for k in tick_keys[-50:]) if t and t.get("outcome") == "ok"),
                  default=None)
    stalled_s = settings.notifications.stalled_hours * 3600
    if last_ok is not None and now - last_ok > stalled_s:
        raised.append(_Raised("loop_stalled", "loop_stalled", "critical", "The loop has stalled",
                              f"no successful tick for {(now - last_ok) / 3600:.1f} h (the last at "
                              f"{_iso(last_ok)})"))
    new = _store_raised(registry, raised, now)
    store.put(CURSOR_KEY, json.dumps({"tick": tick_keys[-1] if tick_keys else "", "history": len(history),
                                      "rollouts": sorted(ended)}).encode())
    return new


def _store_raised(registry: Registry, raised: list[_Raised], now: float) -> list[Alert]:
    stamp = _iso(now)
    records = read_alerts(registry.store, ALERTS_PREFIX)
    for a in records:
        if a.status == "resolved":  # resolved, but its move to the archive was cut short: finish it
            _archive(registry, a)
    open_by_key = {a.key: a for a in sorted(records, key=lambda a: a.created_at, reverse=True)
                   if a.status != "resolved"}
    new: list[Alert] = []
    for r in raised:
        current = open_by_key.get(r.key)
        if current is not None:  # the same condition while its alert is open: counted, not sent again
            def seen(a: Alert) -> Alert:
                a.occurrences += 1
                a.last_seen = stamp
                return a

            open_by_key[r.key] = _update(registry, current.id, seen)
            continue
        a = Alert(id=f"{stamp[:19].replace(':', '').replace('-', '')}-{uuid.uuid4().hex[:6]}", key=r.key, kind=r.kind,
                  severity=r.severity, title=r.title, body=r.body, created_at=stamp, last_seen=stamp, retry_at=now)
        registry.store.put(_key(a.id), json.dumps(a.to_dict()).encode(), if_none_match=True)
        open_by_key[r.key] = a
        new.append(a)
        log.info("alert %s (%s): %s", a.id, a.severity, a.title)
    return new


# ---- delivery ------------------------------------------------------------------------------------------------
def apprise_deliver(url: str, title: str, body: str, severity: str, timeout: float) -> None:
    """Send one notification with apprise; raises ``ConfigError`` (a malformed URL) or ``RuntimeError`` (the
    service refused or could not be reached), each with a one-line reason."""
    import apprise

    plugin = apprise.Apprise.instantiate(url, suppress_exceptions=True)
    if not plugin:
        raise ConfigError(f"not an apprise URL this apprise can send to: {redact(url)}")
    for attr in ("socket_connect_timeout", "socket_read_timeout"):
        if hasattr(plugin, attr):
            setattr(plugin, attr, timeout)
    if hasattr(plugin, "timeout"):
        plugin.timeout = timeout
    kind = {"critical": apprise.NotifyType.FAILURE, "high": apprise.NotifyType.FAILURE,
            "medium": apprise.NotifyType.WARNING}.get(severity, apprise.NotifyType.INFO)
    ap = apprise.Apprise()
    ap.add(plugin)
    if not ap.notify(title=f"[tideline {severity}] {title}", body=body, notify_type=kind):
        raise RuntimeError(f"{redact(url)} did not accept the notification (unreachable, or refused: see its log)")


def redact(url: str) -> str:
    """The URL with its credentials hidden (apprise's privacy form), safe to store and print."""
    try:
        import apprise

        plugin = apprise.Apprise.instantiate(url, suppress_exceptions=True)
        if plugin:
            return str(plugin.url(privacy=True))
    except Exception:  # noqa: BLE001 - never let redaction fail a record
        pass
    return url.split("://", 1)[0] + "://..." if "://" in url else "(unparsable)"


def deliver_pending(registry: Registry, settings: Settings, *, deliver: Deliver = apprise_deliver,
                    now: float | None = None) -> dict[str, int]:
    """Send every alert whose routes have not all taken it and whose retry time has come; a failed route stays
    pending with its reason and a later retry time. Never raises. Returns counts: sent, failed, pending."""
    now = time.time() if now is None else now
    cfg = settings.notifications
    counts = {"sent": 0, "failed": 0, "pending": 0}
    shown = {u: redact(u) for sev in SEVERITIES for u in getattr(cfg, sev)}  # once per pass, not per alert
    for a in list_alerts(registry):
        routes = list(getattr(cfg, a.severity, []) or [])
        done = {d["route"] for d in a.deliveries if d.get("ok")}
        todo = [u for u in routes if shown[u] not in done]
        if not todo:
            continue
        if a.retry_at is not None and a.retry_at > now:
            counts["pending"] += 1
            continue
        results = []
        for url in todo:
            try:
                deliver(url, a.title, a.body, a.severity, cfg.timeout_seconds)
                results.append({"route": shown[url], "ok": True, "error": None})
                counts["sent"] += 1
            except Exception as e:  # noqa: BLE001 - any failure: recorded, retried later, never raised
                reason = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
                results.append({"route": shown[url], "ok": False, "error": reason})
                counts["failed"] += 1
                log.warning("alert %s: delivery to %s failed (retried later): %s", a.id, shown[url], reason)

        def record(alert: Alert, results: list[dict[str, Any]] = results) -> Alert:
            stamp = _iso(now)
            by_route = {d["route"]: d for d in alert.deliveries}
            for r in results:
                prev = by_route.get(r["route"], {})
                by_route[r["route"]] = {**r, "at": stamp, "attempts": int(prev.get("attempts", 0)) + 1}
            alert.deliveries = list(by_route.values())
            failures = max((d["attempts"] for d in alert.deliveries if not d["ok"]), default=0)
            alert.retry_at = (now + min(MAX_RETRY_S, cfg.retry_seconds * 2 ** (failures - 1))) if failures else None
            return alert

        try:
            _update(registry, a.id, record)
        except Exception as e:  # noqa: BLE001 - the store: the next pass sends again (at least once)
            log.warning("alert %s: could not record its deliveries: %s", a.id, e)
    return counts


def process(registry: Registry, settings: Settings, *, deliver: Deliver = apprise_deliver,
            now: float | None = None) -> dict[str, Any]:
    """One pass: raise what the records call for, then deliver what is pending. Never raises (a store that
    cannot be read is logged and tried again on the next pass); returns what it did."""
    out: dict[str, Any] = {"raised": [], "error": None}
    try:
        out["raised"] = [a.id for a in raise_alerts(registry, settings, now=now)]
        out |= deliver_pending(registry, settings, deliver=deliver, now=now)
    except Exception as e:  # noqa: BLE001 - alerts must never stop the loop
        out["error"] = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        log.warning("alerts pass failed (tried again next time): %s", out["error"])
    return out


def _rollout_id(doc: dict[str, Any]) -> str:
    spec, status = doc.get("spec") or {}, doc.get("status") or {}
    return f"{spec.get('name')}:{spec.get('candidate')}:{status.get('phase')}:{status.get('phase_since')}"


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, tz=UTC).isoformat()


def _read(store: Any, key: str) -> dict[str, Any] | None:
    try:
        return json.loads(store.get(key)[0])
    except (NotFound, ValueError):
        return None


def _wall(tick: dict[str, Any]) -> float | None:
    try:
        ts = utc_timestamp(tick.get("wall"))
    except (ValueError, TypeError):
        return None
    return None if ts is None else float(ts.timestamp())
