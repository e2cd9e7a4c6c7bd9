"""``tideline replay --report``: a replay's result as one self-contained HTML file.

:func:`write_replay_report` reads the JSON-ready result (``ReplayResult.to_dict()``, what ``tideline replay
--json`` prints) and writes the figures table of every policy next to buy-and-hold, one figure with each
policy's equity (cumulative net log return) and rolling directional accuracy — every retrain and promotion
marked on it — and per policy its promotions, change points in its live hits and retrain decisions. As in the
demo's report (``tideline.app.report``), plotly.js is inlined, the templates autoescape, and everything
taken from the result reaches the page as escaped text.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from markupsafe import Markup

from tideline.app.report import NA, _dict, _e, _figure, _list, _num, _render, _rows, _text, _ts, write_html

COLORS = ("#2563eb", "#ea580c", "#16a34a", "#9333ea", "#0891b2", "#be123c")
BUY_AND_HOLD_COLOR = "#6b7280"
DECISIONS_SHOWN = 60


def write_replay_report(result: Mapping[str, Any], path: str | Path) -> Path:
    """Write ``result`` (``ReplayResult.to_dict()``) as one self-contained HTML file at ``path`` (atomically)."""
    from plotly.offline import get_plotlyjs

    data = _dict(result.get("data"))
    policies = {str(k): _dict(v) for k, v in _dict(result.get("policies")).items()}
    doc = _render(
        "replay.html.j2", title=f"tideline replay: {', '.join(map(_text, _list(data.get('symbols'))[:5])) or NA}",
        meta=_meta(data, result), table=_table(result, policies), figure=_series_figure(result, policies),
        policies=[_policy(name, p) for name, p in policies.items()],
        plotly_js=Markup(get_plotlyjs()),  # plotly's own bundle: code, not data
    ) + "\n"
    return write_html(doc, path)


def _meta(data: Mapping[str, Any], result: Mapping[str, Any]) -> list[str]:
    def day(key: str) -> str:
        return (_ts(data.get(key)) or NA)[:10]

    bars = _num(data.get("bars"))
    return [
        f"{bars:,.0f} bars {day('start')} .. {day('end')}" if bars is not None else f"bars {NA}",
        f"replayed from {day('replay_start')}",
        f"families {', '.join(map(_text, _list(data.get('families')))) or NA}",
        f"cost {_text(data.get('cost_bps', NA))} bps",
        f"gate {'on' if result.get('gate') is not False else 'off'}",
    ]


def _pct(v: Any, signed: bool = False) -> str:
    x = _num(v)
    return NA if x is None else f"{x:+.1%}" if signed else f"{x:.1%}"


def _fixed(v: Any, digits: int = 2) -> str:
    x = _num(v)
    return NA if x is None else f"{x:.{digits}f}"


def _count(v: Any) -> str:
    x = _num(v)
    return NA if x is None else f"{x:,.0f}"


def _table(result: Mapping[str, Any], policies: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    b = _dict(result.get("buy_and_hold"))
    rows = [["buy-and-hold", _pct(b.get("total_return"), True), _fixed(b.get("sharpe")), _pct(b.get("max_drawdown")),
             "-", "-", "-", "-", "-", "-", "-"]]
    for name, p in policies.items():
        m = _dict(p.get("metrics"))
        rows.append([name, _pct(m.get("total_return"), True), _fixed(m.get("sharpe")), _pct(m.get("max_drawdown")),
                     _fixed(m.get("turnover"), 3), _fixed(m.get("directional_accuracy"), 3), _count(p.get("retrains")),
                     _count(p.get("promotions")), _count(p.get("gate_refusals")), _count(p.get("flat_bars")),
                     _fixed(p.get("seconds"), 0)])
    return {"headers": ["policy", "net return", "Sharpe", "max drawdown", "turnover", "accuracy", "retrains",
                        "promotions", "refused", "flat bars", "seconds"], "rows": rows}


def _points(series: Any) -> tuple[list[str | None], list[float | None]]:
    pts = [p for p in _list(series) if isinstance(p, list | tuple) and len(p) == 2 and _ts(p[0])]
    return [_ts(p[0]) for p in pts], [_num(p[1]) for p in pts]


def _at(xs: list[str | None], ys: list[float | None], t: str) -> float | None:
    """The series' value at the last point not after ``t`` (a marker sits on its curve)."""
    y = None
    for x, v in zip(xs, ys, strict=True):
        if x is None or x > t:
            break
        y = v if v is not None else y
    return y


def _series_figure(result: Mapping[str, Any], policies: Mapping[str, Mapping[str, Any]]) -> Markup | None:
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    window = _num(_dict(result.get("data")).get("accuracy_window"))
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, vertical_spacing=0.07, subplot_titles=(
        "cumulative net log return",
        f"rolling directional accuracy ({window:.0f} bar times)" if window else "rolling directional accuracy"))
    drawn = False
    x, y = _points(result.get("buy_and_hold_equity"))
    if x:
        drawn = True
        fig.add_trace(go.Scatter(x=x, y=y, name="buy-and-hold", mode="lines",
                                 line={"color": BUY_AND_HOLD_COLOR, "dash": "dash"}), row=1, col=1)
    for i, (name, p) in enumerate(policies.items()):
        color = COLORS[i % len(COLORS)]
        ex, ey = _points(p.get("equity"))
        ax, ay = _points(p.get("accuracy"))
        if not ex:
            continue
        drawn = True
        fig.add_trace(go.Scatter(x=ex, y=ey, name=_e(name), legendgroup=_e(name), mode="lines",
                                 line={"color": color}), row=1, col=1)
        if ax:
            fig.add_trace(go.Scatter(x=ax, y=ay, name=_e(f"{name}: accuracy"), legendgroup=_e(name), mode="lines",
                                     line={"color": color}, showlegend=False), row=2, col=1)
        retrains = [d for d in _rows(p.get("decisions")) if d.get("retrain") in ("approved", "rejected")
                    and _ts(d.get("at"))]
        if retrains:
            t = [str(_ts(d["at"])) for d in retrains]
            fig.add_trace(go.Scatter(
                x=t, y=[_at(ex, ey, ti) for ti in t], mode="markers", name=_e(f"{name}: retrains"),
                legendgroup=_e(name), marker={"color": color, "symbol": "line-ns-open", "size": 8},
                hovertext=[_e(f"{name} retrain ({d.get('retrain')}): {d.get('reason') or ''}") for d in retrains],
                hoverinfo="text+x"), row=1, col=1)
        promos = [e for e in _rows(p.get("events")) if _ts(e.get("time"))]
        if promos:
            t = [str(_ts(e["time"])) for e in promos]
            fig.add_trace(go.Scatter(
                x=t, y=[_at(ex, ey, ti) for ti in t], mode="markers", name=_e(f"{name}: promotions"),
                legendgroup=_e(name), marker={"color": color, "symbol": "star", "size": 13,
                                              "line": {"color": "#111827", "width": 1}},
                hovertext=[_e(f"{name} {e.get('action')} {e.get('version')}: {e.get('reason') or ''}")
                           for e in promos], hoverinfo="text+x"), row=1, col=1)
    if not drawn:
        return None
    fig.update_yaxes(tickformat=".2f", row=1, col=1)
    fig.update_yaxes(range=[0, 1], tickformat=".0%", row=2, col=1)
    fig.update_layout(height=720, template="plotly_white", hovermode="closest", margin={"t": 60, "b": 40},
                      legend={"orientation": "h", "y": -0.08})
    return _figure(fig)


def _not_run(p: Mapping[str, Any]) -> str:
    """"; 3 failed retrain(s) never reached the gate (the first: ...)" or ""."""
    counts = p.get("retrains_not_run")
    if not isinstance(counts, Mapping) or not counts:
        return ""
    what = ", ".join(f"{_count(n)} {_text(k)}" for k, n in counts.items())
    return f"; {what} retrain(s) never reached the gate (the first: {_text(p.get('first_not_run') or '')})"


def _policy(name: str, p: Mapping[str, Any]) -> dict[str, Any]:
    decisions = _rows(p.get("decisions"))
    return {
        "name": _text(name),
        "summary": (f"{_count(p.get('ticks'))} ticks, {_count(p.get('retrains'))} retrains "
                    f"({_count(p.get('gate_refusals'))} refused by the gate), {_count(p.get('promotions'))} "
                    f"promotions, {_count(p.get('flat_bars'))} bar times flat (nothing in production)"
                    + _not_run(p)),
        "promotions": [[(_ts(e.get("time")) or NA)[:16], _text(e.get("action", "")), _text(e.get("version") or ""),
                        _text(e.get("reason") or "")] for e in _rows(p.get("events"))],
        "changes": [[(_ts(c.get("at")) or NA)[:16], _text(c.get("detector", "")), _fixed(c.get("accuracy_before"), 3),
                     _fixed(c.get("accuracy_after"), 3)] for c in _rows(p.get("changes"))],
        "decisions": [[(_ts(d.get("at")) or NA)[:16], _text(d.get("retrain") or "-"), _text(d.get("rollout") or "-"),
                       _text(d.get("window") or "-"), _text(d.get("reason") or d.get("error") or "")]
                      for d in decisions[:DECISIONS_SHOWN]],
        "more_decisions": max(0, len(decisions) - DECISIONS_SHOWN),
    }


__all__ = ["write_replay_report"]
