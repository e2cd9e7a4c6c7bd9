"""The story of a continuous-learning demo run as one self-contained HTML file.

:func:`write_report` turns the demo's run record (a JSON-able dict: live outcomes per bar, the event
timeline, retraining triggers, rollouts with their analyses, the registry, drift, learning figures and the
story's pass/fail checks) into a single HTML document with plotly figures. Nothing is loaded from the
network: plotly.js is inlined once in the head and an Evidently drift report, when there is one, is embedded
whole in an ``<iframe srcdoc>``. Every part of the record may be missing or empty; the report then says
"not available" for that part instead of failing.

The HTML comes from Jinja2 templates in ``tideline/app/templates`` (package data: ``report.html.j2`` and one
``section_<key>.html.j2`` per section), rendered with autoescaping on and ``StrictUndefined``. Python only
prepares each section's values: everything taken from the record reaches a template as plain text and is
escaped there. The only HTML handed over as ``Markup`` is made by code, not by the record: plotly's own
bundle and the plotly figures (whose record strings are escaped before plotly sees them, see ``_e``).

:func:`summary_table_rows` gives the headline label/value pairs (shown in the report, reusable in a
terminal) and :func:`rolling_accuracy` the trailing-window directional accuracy plotted in the report.
"""

from __future__ import annotations

import functools
import html
import json
import logging
import math
import numbers
import os
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from itertools import accumulate
from pathlib import Path
from typing import TYPE_CHECKING, Any

from jinja2 import Environment, PackageLoader, StrictUndefined
from markupsafe import Markup

if TYPE_CHECKING:
    import plotly.graph_objects as go

log = logging.getLogger(__name__)

NA = "not available"
DEFAULT_WINDOW = 100
MARKER_KINDS = ("trigger", "retrain", "serve", "promoted", "rolled_back")  # events drawn on the live figure
KIND_COLORS = {
    "info": "#6b7280", "shift": "#dc2626", "train": "#0891b2", "serve": "#2563eb", "trigger": "#ea580c",
    "retrain": "#7c3aed", "gate": "#0d9488", "rollout": "#4f46e5", "promoted": "#16a34a",
    "rolled_back": "#be123c", "drift": "#ca8a04",
}
PHASE_COLORS = {"Promoted": "#16a34a", "RolledBack": "#dc2626"}
VERDICT_COLORS = {"pass": "#16a34a", "fail": "#dc2626", "inconclusive": "#6b7280"}
PLOT_CONFIG = {"displaylogo": False, "responsive": True}
SECTIONS = (
    ("live", "Live accuracy and equity"), ("learning", "Learning quality"), ("timeline", "Timeline"),
    ("triggers", "Retraining triggers"), ("rollouts", "Rollouts"), ("registry", "Model registry"),
    ("importance", "What the models rest on"), ("drift", "Drift (Evidently)"), ("config", "Configuration"),
)


def rolling_accuracy(hits: Sequence[float], n: Sequence[float], window: int) -> list[float | None]:
    """Trailing directional accuracy: hits / outcomes summed over the last ``window`` bars (this bar
    included; fewer at the start), ``None`` where the window holds no outcome."""
    import numpy as np

    if window < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    if len(hits) != len(n):
        raise ValueError(f"hits and n differ in length: {len(hits)} != {len(n)}")
    ch = np.concatenate([[0.0], np.cumsum(np.asarray(hits, dtype=float))])
    cn = np.concatenate([[0.0], np.cumsum(np.asarray(n, dtype=float))])
    end = np.arange(1, len(n) + 1)
    start = np.maximum(0, end - window)
    h, k = ch[end] - ch[start], cn[end] - cn[start]
    return [float(a / b) if b > 0 else None for a, b in zip(h, k, strict=True)]


def summary_table_rows(record: Mapping[str, Any]) -> list[tuple[str, str]]:
    """Headline (label, value) pairs of a run; "not available" for what the record lacks."""
    market, learning = _dict(record.get("market")), _dict(record.get("learning"))
    live, triggers = _rows(record.get("live")), _rows(record.get("triggers"))
    rollouts, checks = _rows(record.get("rollouts")), _rows(record.get("checks"))
    symbols, shifts = _list(market.get("symbols")), _list(market.get("shift_times"))
    freq = f" ({market['freq']} bars)" if market.get("freq") else ""
    fired = sum(1 for t in triggers if t.get("fired") is True)
    phases = Counter(str(r.get("phase") or "unknown") for r in rollouts)
    production = _dict(_dict(record.get("registry")).get("aliases")).get("production")
    post_live = learning.get("post_shift_live_accuracy")
    post_static = learning.get("post_shift_static_accuracy")
    ok = sum(1 for c in checks if c.get("ok") is True)
    return [
        ("Symbols", f"{len(symbols)}{freq}" if symbols else NA),
        ("Live bars", str(len(live)) if live else NA),
        ("Regime shifts", str(len(shifts)) if "shift_times" in market else NA),
        ("Live accuracy", _pct(_ratio(live, "hits", "n"))),
        ("Static accuracy (v1 kept)", _pct(_ratio(live, "static_hits", "n"))),
        ("Live return", _ret(_total(live, "strategy_return"))),
        ("Static return", _ret(_total(live, "static_return"))),
        ("Post-shift accuracy", f"{_pct(post_live)} live vs {_pct(post_static)} static"
         if _num(post_live) is not None or _num(post_static) is not None else NA),
        ("Recovery after the shift", _recovery(learning)),
        ("Retraining triggers fired", f"{fired} of {len(triggers)} checks" if triggers else NA),
        ("Rollouts", f"{len(rollouts)}: " + ", ".join(f"{v} {k}" for k, v in phases.items())
         if rollouts else NA),
        ("Production model", _text(production) if production else NA),
        ("Story checks", f"{ok} of {len(checks)} ok" if checks else NA),
    ]


def write_report(record: Mapping[str, Any], path: str | Path) -> Path:
    """Write the run's story as one self-contained HTML file at ``path`` (atomically); returns its path.

    A part of the record that cannot be read costs only its section (which then says why); a fault in the
    templates themselves (a missing variable, under ``StrictUndefined``) is a bug and raises."""
    from plotly.offline import get_plotlyjs

    title = _text(record.get("title") or "tideline demo")
    builders: dict[str, Callable[[Mapping[str, Any]], dict[str, Any]]] = {
        "live": _live_section, "learning": _learning_section, "timeline": _timeline_section,
        "triggers": _triggers_section, "rollouts": _rollouts_section, "registry": _registry_section,
        "importance": _importance_section, "drift": _drift_section, "config": _config_section,
    }
    sections = []
    for key, heading in SECTIONS:
        data, error = None, None
        try:
            data = builders[key](record)
        except Exception as exc:  # a malformed part must not cost the whole report
            log.exception("report section %r failed", heading)
            error = f"could not render this section: {exc}"
        sections.append({"key": key, "heading": heading, "data": data, "error": error})
    doc = _render(
        "report.html.j2", title=title, header=_header(record), sections=sections,
        # plotly's own JavaScript bundle, shipped with the plotly package: code, not data; it must not be escaped
        plotly_js=Markup(get_plotlyjs()),
    ) + "\n"
    return write_html(doc, path)


def write_html(doc: str, path: str | Path) -> Path:
    """Write ``doc`` at ``path`` atomically (a reader never sees half a report); returns the resolved path."""
    target = Path(path).resolve()
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(".tmp")
    try:
        tmp.write_text(doc, encoding="utf-8")
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    log.info("report written to %s (%d bytes)", target, len(doc))
    return target


# ---------------------------------------------------------------- templates


@functools.cache
def _environment() -> Environment:
    """The templates in ``tideline/app/templates`` (package data), every one of them HTML and autoescaped."""
    env = Environment(
        loader=PackageLoader("tideline.app", "templates"),
        autoescape=True,  # whatever a template is called: nothing from the record reaches the page unescaped
        undefined=StrictUndefined,  # a misspelt or missing variable raises instead of rendering as ""
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.globals["NA"] = NA
    return env


def _render(template: str, **context: Any) -> str:
    return _environment().get_template(template).render(**context)


# ---------------------------------------------------------------- sections
# Each section gives its template (section_<key>.html.j2) plain text and numbers only, with every value taken
# from the record made a str here; the one exception is a plotly figure, handed over as Markup (see _figure).


def _header(record: Mapping[str, Any]) -> dict[str, Any]:
    checks = _rows(record.get("checks"))
    return {
        "meta": [
            f"started {_when(record.get('started_at'))} UTC" if _ts(record.get("started_at")) else f"date {NA}",
            f"seed {record['seed']}" if record.get("seed") is not None else f"seed {NA}",
            f"run time {_duration(record.get('seconds'))}",
            f"{record['cores']} cores" if record.get("cores") is not None else f"cores {NA}",
        ],
        "checks": [{"ok": c.get("ok") is True, "name": _text(c.get("name", "")), "detail": _text(c.get("detail", ""))}
                   for c in checks],
        "failed": [{"name": _text(c.get("name", "?")), "detail": _text(c.get("detail", ""))}
                   for c in checks if c.get("ok") is not True],
        "summary": summary_table_rows(record),
    }


def _live_section(record: Mapping[str, Any]) -> dict[str, Any]:
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    live = [r for r in _rows(record.get("live")) if _ts(r.get("time"))]
    if not live:
        return {"figure": None, "static": False}
    window = max(1, int(_num(_dict(record.get("learning")).get("window_bars")) or DEFAULT_WINDOW))
    x = [_ts(r.get("time")) for r in live]
    n = [_num(r.get("n")) or 0.0 for r in live]
    acc = rolling_accuracy([_num(r.get("hits")) or 0.0 for r in live], n, window)
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, vertical_spacing=0.06,
                        subplot_titles=(f"rolling directional accuracy ({window} bars)", "cumulative return"))
    versions = [str(r.get("version") or "unknown") for r in live]
    for version in dict.fromkeys(versions):  # one trace per served version, joined at the hand-over bar
        show = [v == version or (i > 0 and versions[i - 1] == version) for i, v in enumerate(versions)]
        fig.add_trace(go.Scatter(x=x, y=[a if s else None for a, s in zip(acc, show, strict=True)],
                                 name=_e(f"live: {version}"), mode="lines"), row=1, col=1)
    has_static = any("static_hits" in r for r in live)
    if has_static:
        static = rolling_accuracy([_num(r.get("static_hits")) or 0.0 for r in live], n, window)
        fig.add_trace(go.Scatter(x=x, y=static, name="static (v1 kept)", mode="lines",
                                 line={"color": "#9ca3af", "dash": "dash"}), row=1, col=1)
    for key, name, line in (("strategy_return", "live equity", {"color": "#111827"}),
                            ("static_return", "static equity", {"color": "#9ca3af", "dash": "dash"})):
        if key == "static_return" and not any(key in r for r in live):
            continue
        fig.add_trace(go.Scatter(x=x, y=list(accumulate(_num(r.get(key)) or 0.0 for r in live)), name=name,
                                 mode="lines", line=line), row=2, col=1)
    for shift in filter(None, map(_ts, _list(_dict(record.get("market")).get("shift_times")))):
        fig.add_shape(type="line", xref="x", yref="paper", x0=shift, x1=shift, y0=0, y1=1,
                      line={"color": KIND_COLORS["shift"], "width": 2})
        fig.add_annotation(x=shift, xref="x", yref="paper", y=1.0, yanchor="bottom", showarrow=False,
                           text="regime shift", font={"color": KIND_COLORS["shift"]})
    events = [e for e in _rows(record.get("events")) if e.get("kind") in MARKER_KINDS and _ts(e.get("time"))]
    for kind in MARKER_KINDS:
        mine = [e for e in events if e.get("kind") == kind]
        for t in (_ts(e["time"]) for e in mine):
            fig.add_shape(type="line", xref="x", yref="paper", x0=t, x1=t, y0=0, y1=1,
                          line={"color": KIND_COLORS[kind], "width": 1, "dash": "dot"})
        if mine:  # markers carry the hover text (shapes have none)
            fig.add_trace(go.Scatter(
                x=[_ts(e["time"]) for e in mine], y=[1.02] * len(mine), mode="markers", name=f"event: {kind}",
                marker={"color": KIND_COLORS[kind], "symbol": "triangle-down", "size": 10},
                hovertext=[_e(f"{kind}: {e.get('text') or ''}") for e in mine],
                hoverinfo="text+x"), row=1, col=1)
    fig.update_yaxes(range=[0, 1.06], tickformat=".0%", row=1, col=1)
    fig.update_yaxes(tickformat=".1%", row=2, col=1)
    fig.update_layout(height=680, template="plotly_white", hovermode="closest", margin={"t": 60, "b": 40},
                      legend={"orientation": "h", "y": -0.08})
    return {"figure": _figure(fig), "static": has_static}


def _learning_section(record: Mapping[str, Any]) -> dict[str, Any]:
    import plotly.graph_objects as go

    learning = _dict(record.get("learning"))
    if not learning:
        return {"rows": [], "figure": None}
    rows = [
        ("accuracy window", f"{learning['window_bars']} bars" if "window_bars" in learning else NA),
        ("pre-shift accuracy", _pct(learning.get("pre_shift_accuracy"))),
        ("post-shift accuracy, static (v1 kept)", _pct(learning.get("post_shift_static_accuracy"))),
        ("post-shift accuracy, live", _pct(learning.get("post_shift_live_accuracy"))),
        ("recovery after the shift", _recovery(learning)),
    ]
    windows = _rows(learning.get("windows"))
    if not windows:
        return {"rows": rows, "figure": None}
    labels = [_e(w.get("label", i)) for i, w in enumerate(windows)]
    series = (("live", "live", "#2563eb"), ("static", "static (v1 kept)", "#9ca3af"))
    fig = go.Figure([go.Bar(name=name, x=labels, y=[_num(w.get(key)) for w in windows], marker_color=color)
                     for key, name, color in series])
    fig.update_layout(barmode="group", height=360, template="plotly_white", yaxis={"tickformat": ".0%"},
                      title="directional accuracy after the shift", margin={"t": 50, "b": 40})
    return {"rows": rows, "figure": _figure(fig)}


def _timeline_section(record: Mapping[str, Any]) -> dict[str, Any]:
    events = [{"wall": _duration(e.get("wall"), ""), "when": _when(e.get("time")),
               "kind": _text(e.get("kind") or "?"), "color": KIND_COLORS.get(str(e.get("kind"))),
               "version": _text(e.get("version") or ""), "text": _text(e.get("text") or "")}
              for e in _rows(record.get("events"))]
    return {"events": events}


def _triggers_section(record: Mapping[str, Any]) -> dict[str, Any]:
    triggers = []
    for t in _rows(record.get("triggers")):
        fired = t.get("fired") is True
        if fired:
            why = "; ".join(map(str, _list(t.get("reasons"))))
        else:
            why = "; ".join(f"{r.get('name', '?')}: {r.get('reason', '')}" for r in _rows(t.get("rules")))
        triggers.append({"when": _when(t.get("time")), "fired": fired, "color": KIND_COLORS["trigger"],
                         "why": why})
    return {"triggers": triggers}


def _rollouts_section(record: Mapping[str, Any]) -> dict[str, Any]:
    return {"rollouts": [_rollout(r) for r in _rows(record.get("rollouts"))]}


def _rollout(rollout: Mapping[str, Any]) -> dict[str, Any]:
    import plotly.graph_objects as go

    phase = _text(rollout.get("phase") or "unknown")
    label = rollout.get("label") or f"{rollout.get('candidate', '?')} vs {rollout.get('baseline', '?')}"
    figure = None
    steps = _rows(rollout.get("steps"))
    if steps:
        by_wall = all(_num(s.get("wall")) is not None for s in steps)
        x = [_num(s.get("wall")) if by_wall else _ts(s.get("time")) for s in steps]
        phases = [str(s.get("phase") or "") for s in steps]
        text = [p if i == 0 or p != phases[i - 1] else "" for i, p in enumerate(phases)]
        fig = go.Figure(go.Scatter(x=x, y=[_num(s.get("weight")) for s in steps], mode="lines+markers+text",
                                   line_shape="hv", text=[_e(t) for t in text], textposition="top center",
                                   hovertext=[_e(p) for p in phases], name="canary weight"))
        fig.update_layout(height=280, template="plotly_white", margin={"t": 30, "b": 40},
                          xaxis_title="seconds since start" if by_wall else "bar time",
                          yaxis={"title": "candidate weight %", "range": [-5, 115]})
        figure = _figure(fig)
    analyses = _rows(rollout.get("analyses"))
    if all(_num(a.get("at")) is not None for a in analyses):
        analyses = sorted(analyses, key=lambda a: float(a["at"]))
    return {
        "name": _text(rollout.get("name") or "rollout"), "label": _text(label), "phase": phase,
        "color": PHASE_COLORS.get(phase), "message": _text(rollout.get("message") or ""), "figure": figure,
        "analyses": [{"phase": _text(a.get("phase", "")), "weight": _text(a.get("weight", "")),
                      "verdict": _text(a.get("verdict", "?")), "color": VERDICT_COLORS.get(str(a.get("verdict"))),
                      "labelled": _text(a.get("labelled", "")), "checks": [_check(c) for c in _rows(a.get("checks"))],
                      "reasons": "; ".join(map(str, _list(a.get("reasons"))))} for a in analyses],
    }


def _registry_section(record: Mapping[str, Any]) -> dict[str, Any]:
    registry = _dict(record.get("registry"))
    metric_keys = ("sharpe", "directional_accuracy", "max_drawdown")
    versions = []
    for v in _rows(registry.get("versions")):
        metrics = _dict(v.get("metrics"))
        versions.append([_text(v.get("version", "")), _text(v.get("family", "")), _text(v.get("status", "")),
                         _when(v.get("created_at")), *(_metric(k, metrics.get(k)) for k in metric_keys),
                         _text(v.get("note") or "")])
    cols = ("at", "action", "version", "from_version", "alias", "reason", "actor")
    history = [[_when(h.get(c)) if c == "at" else _text(h.get(c) or "") for c in cols]
               for h in _rows(registry.get("history"))]
    alerts = [[_when(a.get("created_at")), _text(a.get("severity") or ""), _text(a.get("kind") or ""),
               _text(a.get("title") or ""), _text(str(a.get("occurrences") or ""))] for a in _rows(record.get("alerts"))]
    return {
        "available": bool(registry),
        "aliases": [(_text(k), _text(v)) for k, v in _dict(registry.get("aliases")).items()],
        "version_headers": ["version", "family", "status", "created", *metric_keys, "note"], "versions": versions,
        "history_headers": list(cols), "history": history,
        "alert_headers": ["raised", "severity", "kind", "alert", "occurrences"], "alerts": alerts,
    }


IMPORTANCE_TOP = 10


def _importance_section(record: Mapping[str, Any]) -> dict[str, Any]:
    """Production's top features, and how they differ from the first version's (and at the drift check)."""
    from tideline.errors import DataError
    from tideline.models.explain import Importance, compare

    imp = _dict(record.get("importance"))
    versions = _dict(imp.get("versions"))
    prod, first = imp.get("production"), imp.get("first")
    out: dict[str, Any] = {"available": bool(versions), "headers": ["feature", "importance", "share"],
                           "title": "", "rows": [], "changes": []}
    if not versions or prod not in versions:
        return {**out, "available": False}
    cur = Importance.from_dict(_dict(versions[prod]))
    total = sum(cur.values.values()) or 1.0
    out["title"] = f"production {_text(prod)}: top features ({cur.measure}, {cur.n_rows:,} hold-out rows)"
    out["rows"] = [[_text(k), f"{v:.3g}", _pct(v / total)] for k, v in cur.top(IMPORTANCE_TOP)]
    if first in versions and first != prod:
        try:
            line = compare(_dict(versions[first]), cur).summary(against=f"{first}'s")
        except DataError as e:
            line = f"not comparable: {e}"
        out["changes"].append(f"{_text(first)} -> {_text(prod)}: {_text(line)}")
    drift_change = _dict(_dict(record.get("drift")).get("importance_change"))
    if drift_change.get("summary"):
        out["changes"].append(f"at the drift check, on the recent bars: {_text(drift_change['summary'])}")
    return out


def _drift_section(record: Mapping[str, Any]) -> dict[str, Any]:
    drift = _dict(record.get("drift"))
    out: dict[str, Any] = {
        "available": bool(drift), "summary": _text(drift.get("summary") or f"summary {NA}"),
        "share": _pct(drift.get("share")) if _num(drift.get("share")) is not None else None,
        "drifted": [_text(d) for d in _list(drift.get("drifted"))], "evidently": None, "missing": None,
    }
    source = drift.get("html_path")
    if not drift:
        return out
    if not source:
        return {**out, "missing": f"Evidently report {NA} (none was written)"}
    try:
        # the Evidently report's own HTML, a whole document: the template escapes it into <iframe srcdoc>
        embedded = Path(str(source)).read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        log.warning("cannot read the Evidently report %s: %s", source, exc)
        return {**out, "missing": f"Evidently report {NA}: cannot read {source}"}
    return {**out, "evidently": embedded}


def _config_section(record: Mapping[str, Any]) -> dict[str, Any]:
    config = _dict(record.get("config"))
    rows = [(_text(k), _text(v) if isinstance(v, str) else json.dumps(v, default=str)) for k, v in config.items()]
    return {"rows": rows}


# ---------------------------------------------------------------- helpers


def _text(value: Any) -> str:
    """A value from the record as a plain ``str`` for a template to escape. Never a ``Markup`` (a str subclass
    that autoescaping trusts), even where the value is one or its ``__str__`` returns one."""
    text = str(value)
    return text if type(text) is str else str.__str__(text)


def _e(value: Any) -> str:
    """Text for a plotly figure (trace names, labels, hover text), HTML-escaped here: plotly renders these
    strings as its own subset of HTML in the browser, and the figure reaches the page as Markup."""
    return html.escape(_text(value), quote=True)


def _dict(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _list(value: Any) -> list[Any]:
    return list(value) if isinstance(value, list | tuple) else []


def _rows(value: Any) -> list[Mapping[str, Any]]:
    return [v for v in _list(value) if isinstance(v, Mapping)]


def _num(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        return None
    return float(value)


def _ratio(rows: list[Mapping[str, Any]], num: str, den: str) -> float | None:
    if not any(num in r for r in rows):
        return None
    total = sum(_num(r.get(den)) or 0.0 for r in rows)
    return sum(_num(r.get(num)) or 0.0 for r in rows) / total if total > 0 else None


def _total(rows: list[Mapping[str, Any]], key: str) -> float | None:
    return sum(_num(r.get(key)) or 0.0 for r in rows) if any(key in r for r in rows) else None


def _ts(value: Any) -> str | None:
    """An ISO time as naive UTC ``YYYY-MM-DD HH:MM:SS`` (what plotly's date axes read), else ``None``."""
    try:
        t = datetime.fromisoformat(str(value))
    except ValueError:
        return None
    if t.tzinfo is not None:
        t = t.astimezone(UTC).replace(tzinfo=None)
    return t.strftime("%Y-%m-%d %H:%M:%S")


def _when(value: Any) -> str:
    ts = _ts(value)
    return ts[:16] if ts else (_text(value) if value else "")


def _pct(value: Any) -> str:
    v = _num(value)
    return f"{v:.1%}" if v is not None else NA


def _ret(value: Any) -> str:
    v = _num(value)
    return f"{v:+.2%}" if v is not None else NA


def _metric(name: str, value: Any) -> str:
    v = _num(value)
    if v is None:
        return ""
    return _pct(v) if name in ("directional_accuracy", "max_drawdown") else f"{v:.2f}"


def _duration(value: Any, missing: str = NA) -> str:
    s = _num(value)
    if s is None:
        return missing
    return f"{s:.1f} s" if s < 60 else f"{int(s // 60)} min {s % 60:.0f} s"


def _recovery(learning: Mapping[str, Any]) -> str:
    if "recovery_bars" not in learning:
        return NA
    bars = _num(learning["recovery_bars"])
    return f"{bars:.0f} bars" if bars is not None else "not reached"


def _check(check: Mapping[str, Any]) -> dict[str, str]:
    passed = check.get("passed")
    mark = "✓" if passed is True else "✗" if passed is False else "?"
    value, threshold = _num(check.get("value")), _num(check.get("threshold"))
    text = (f"{check.get('name', '?')}: {'n/a' if value is None else f'{value:.4g}'} vs "
            f"{'n/a' if threshold is None else f'{threshold:.4g}'} {mark}")
    return {"text": text, "reason": _text(check.get("reason") or "")}


def _figure(fig: go.Figure) -> Markup:
    """A plotly figure's ``<div>`` and ``<script>``, for the template to insert as it is. Safe as Markup: plotly
    writes the markup itself, from our numbers and from strings we passed through :func:`_e`, and its JSON
    escapes ``<`` and ``/`` (nothing in it can close the script)."""
    return Markup(fig.to_html(full_html=False, include_plotlyjs=False, config=PLOT_CONFIG))
