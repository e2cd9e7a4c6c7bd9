"""The demo report: one self-contained HTML file with every section, plotly.js inlined once, an escaped
Evidently embed, an honest verdict banner, and no failure on a missing or malformed part of the record."""

from __future__ import annotations

import copy
import fnmatch
import re
import tomllib
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import jinja2
import numpy as np
import pytest
from markupsafe import Markup

from tideline.app import report
from tideline.app.report import rolling_accuracy, summary_table_rows, write_report

HEADINGS = (
    "Live accuracy and equity", "Learning quality", "Timeline", "Retraining triggers", "Rollouts",
    "Model registry", "What the models rest on", "Drift (Evidently)", "Configuration",
)
PLOTLY_MARKER = "* plotly.js v"  # the bundle's licence header
EVIDENTLY_MARKER = "EVIDENTLY-MARKER-42"
START = datetime(2026, 11, 23, 9, tzinfo=UTC)
BARS, SHIFT_BAR, SYMBOLS = 600, 300, 8


def _iso(bar: int) -> str:
    return (START + timedelta(hours=bar)).isoformat()


def _live(rng: np.random.Generator) -> list[dict[str, Any]]:
    rows = []
    for bar in range(BARS):
        version = "v1" if bar < 420 else "v2"
        live_p = 0.65 if bar < SHIFT_BAR else (0.35 if version == "v1" else 0.6)
        static_p = 0.65 if bar < SHIFT_BAR else 0.35
        hits, static_hits = int(rng.binomial(SYMBOLS, live_p)), int(rng.binomial(SYMBOLS, static_p))
        rows.append({
            "time": _iso(bar), "version": version, "versions": {version: SYMBOLS}, "n": SYMBOLS,
            "hits": hits, "strategy_return": (2 * hits - SYMBOLS) * 1e-4,
            "static_hits": static_hits, "static_return": (2 * static_hits - SYMBOLS) * 1e-4,
        })
    return rows


def _rollout(candidate: str, phase: str, verdict: str, wall0: float) -> dict[str, Any]:
    steps = [{"time": _iso(400 + i * 5), "wall": wall0 + i * 3.0, "phase": p, "weight": w}
             for i, (p, w) in enumerate([("Shadow", 0), ("Canary", 10), ("Canary", 50), ("Promoted", 100)])]
    if phase == "RolledBack":
        steps = steps[:2] + [{"time": _iso(412), "wall": wall0 + 7.0, "phase": "RolledBack", "weight": 0}]
    passed = verdict == "pass"
    analyses = [
        {"phase": "Canary", "weight": 50, "verdict": verdict, "labelled": 240, "at": wall0 + 6.0,
         "reasons": [] if passed else ["accuracy below baseline"],
         "checks": [{"name": "accuracy_drop", "value": 0.01 if passed else 0.2, "threshold": 0.05,
                     "passed": passed, "reason": "live vs baseline"}]},
        {"phase": "Canary", "weight": 10, "verdict": "inconclusive", "labelled": 40, "at": wall0 + 4.0,
         "reasons": ["too few labelled rows"],
         "checks": [{"name": "error_rate", "value": None, "threshold": 0.01, "passed": None,
                     "reason": "no data"}]},
    ]
    return {"name": "tideline", "candidate": candidate, "baseline": "v1", "phase": phase,
            "message": f"{candidate} {phase}", "label": f"retrained {candidate}", "steps": steps,
            "analyses": analyses}


@pytest.fixture
def record(tmp_path: Path) -> dict[str, Any]:
    rng = np.random.default_rng(7)
    evidently = tmp_path / "evidently.html"
    evidently.write_text(
        f"<html><body><div>{EVIDENTLY_MARKER}</div><script>var x = 1 < 2;</script></body></html>")
    events = [
        {"time": _iso(0), "wall": 1.0, "kind": "serve", "version": "v1", "text": "v1 serves"},
        {"time": _iso(SHIFT_BAR), "wall": 40.0, "kind": "shift", "version": None, "text": "market changes"},
        {"time": _iso(350), "wall": 60.0, "kind": "trigger", "version": "v1",
         "text": "performance decay <b>x</b>"},
        {"time": _iso(351), "wall": 61.0, "kind": "retrain", "version": "v2", "text": "retrained v2"},
        {"time": None, "wall": 90.0, "kind": "gate", "version": "v2", "text": "gate passed"},
        {"time": _iso(380), "wall": 100.0, "kind": "rolled_back", "version": "v3", "text": "v3 rolled back"},
        {"time": _iso(420), "wall": 120.0, "kind": "promoted", "version": "v2", "text": "v2 promoted"},
    ]
    rules = [{"name": "performance_decay", "fired": False, "reason": "accuracy fine"},
             {"name": "drift", "fired": False, "reason": "share 0.0 < 0.3"}]
    triggers = [{"time": _iso(bar), "fired": bar == 350, "rules": rules,
                 "reasons": ["accuracy dropped"] if bar == 350 else []} for bar in range(300, 420, 25)]
    return {
        "title": "tideline demo", "seed": 7, "seconds": 212.4, "started_at": START.isoformat(), "cores": 2,
        "config": {"symbols": SYMBOLS, "bars": BARS, "families": ["lightgbm"]},
        "market": {"symbols": [f"SYM{i:02d}" for i in range(SYMBOLS)], "freq": "1h", "start": _iso(-500),
                   "end": _iso(BARS), "live_start": _iso(0), "shift_times": [_iso(SHIFT_BAR)]},
        "live": _live(rng),
        "events": events,
        "triggers": triggers,
        "rollouts": [_rollout("v3", "RolledBack", "fail", 95.0), _rollout("v2", "Promoted", "pass", 110.0)],
        "registry": {
            "aliases": {"production": "v2", "previous": "v1"},
            "versions": [{"version": v, "family": "lightgbm", "status": s, "created_at": _iso(b),
                          "metrics": {"sharpe": 1.2, "directional_accuracy": 0.61, "max_drawdown": -0.08},
                          "note": n}
                         for v, s, b, n in [("v1", "archived", -1, "initial"), ("v2", "active", 351, "new"),
                                            ("v3", "rejected", 370, "bad")]],
            "history": [{"at": _iso(420), "action": "promote", "version": "v2", "from_version": "v1",
                         "alias": "production", "reason": "rollout passed", "actor": "operator"}],
        },
        "drift": {"html_path": str(evidently), "summary": "2 of 10 features drifted", "share": 0.2,
                  "drifted": ["ret_1", "vol_24"],
                  "importance_change": {"summary": "importance rank correlation 0.40 with the version's own"}},
        "importance": {"production": "v2", "first": "v1", "versions": {
            "v1": {"method": "tree_shap", "values": {"ret_1": 3.0, "vol_24": 1.0, "clv": 0.5}, "n_rows": 900},
            "v2": {"method": "tree_shap", "values": {"vol_24": 2.0, "ret_1": 1.0, "clv": 1.0}, "n_rows": 900}}},
        "learning": {"window_bars": 100, "pre_shift_accuracy": 0.66, "post_shift_static_accuracy": 0.35,
                     "post_shift_live_accuracy": 0.58, "recovery_bars": 240,
                     "windows": [{"label": "0-150 bars after the shift", "live": 0.41, "static": 0.33},
                                 {"label": "150-300 bars after the shift", "live": 0.6, "static": 0.36}]},
        "checks": [{"name": "retrain triggered", "ok": True, "detail": "at bar 350"},
                   {"name": "candidate promoted", "ok": True, "detail": "v2"}],
    }


def _outside_bundle(doc: str) -> str:
    """The document without the inlined plotly.js bundle (the first <script> in the head)."""
    start = doc.index("<script")
    return doc[:start] + doc[doc.index("</script>", start):]


def test_report_is_one_self_contained_document(record: dict[str, Any], tmp_path: Path) -> None:
    out = write_report(record, tmp_path / "run" / "report.html")
    assert out == (tmp_path / "run" / "report.html").resolve() and out.is_file()
    doc = out.read_text(encoding="utf-8")
    assert doc.startswith("<!DOCTYPE html>") and doc.count("<html") == 1 and doc.rstrip().endswith("</html>")
    for heading in HEADINGS:
        assert f"<h2>{heading}</h2>" in doc, heading
    assert doc.count(PLOTLY_MARKER) == 1
    assert doc.index(PLOTLY_MARKER) < doc.index("</head>")
    assert not re.search(r"<script[^>]*\bsrc\s*=", doc, re.I)
    assert not re.search(r"<link[^>]*href\s*=\s*[\"']?https?:", doc, re.I)
    # the live figure, the learning bars and one step chart per rollout
    assert doc.count('class="plotly-graph-div"') == 4
    rest = _outside_bundle(doc)
    assert "live: v1" in rest and "live: v2" in rest and "regime shift" in rest
    assert list((tmp_path / "run").iterdir()) == [out]  # no .tmp left behind


def test_evidently_report_is_embedded_escaped(record: dict[str, Any], tmp_path: Path) -> None:
    doc = write_report(record, tmp_path / "r.html").read_text(encoding="utf-8")
    srcdoc = re.search(r'<iframe srcdoc="([^"]*)"[^>]*sandbox="allow-scripts"', doc)
    assert srcdoc is not None
    assert EVIDENTLY_MARKER in srcdoc.group(1) and "&lt;script&gt;var x = 1 &lt; 2;" in srcdoc.group(1)
    assert "<script>var x" not in doc
    assert doc.count(EVIDENTLY_MARKER) == 1


def test_missing_evidently_file_is_said(record: dict[str, Any], tmp_path: Path) -> None:
    record["drift"]["html_path"] = str(tmp_path / "gone.html")
    doc = write_report(record, tmp_path / "r.html").read_text(encoding="utf-8")
    assert "<iframe" not in doc and "Evidently report not available: cannot read" in doc


@pytest.mark.parametrize("failing", [None, "candidate promoted"])
def test_verdict_banner(record: dict[str, Any], tmp_path: Path, failing: str | None) -> None:
    for check in record["checks"]:
        check["ok"] = check["name"] != failing
    doc = write_report(record, tmp_path / "r.html").read_text(encoding="utf-8")
    banner = re.search(r'<div class="banner (\w+)">(.*?)</div>', doc, re.S)
    assert banner is not None
    if failing is None:
        assert banner.group(1) == "ok" and "story complete" in banner.group(2)
        assert "story incomplete" not in doc
    else:
        assert banner.group(1) == "bad" and "story incomplete" in banner.group(2)
        assert failing in banner.group(2) and "retrain triggered" not in banner.group(2)


def test_empty_record_renders(tmp_path: Path) -> None:
    doc = write_report({}, tmp_path / "empty.html").read_text(encoding="utf-8")
    for heading in HEADINGS:
        assert f"<h2>{heading}</h2>" in doc
    assert doc.count("not available") >= len(HEADINGS)
    assert "could not render" not in doc and 'class="plotly-graph-div"' not in doc
    assert doc.count(PLOTLY_MARKER) == 1


def test_malformed_parts_render(record: dict[str, Any], tmp_path: Path) -> None:
    bad = copy.deepcopy(record)
    bad.update({"live": [{"time": "not a time"}, {"time": _iso(1), "n": "x", "hits": None}, "junk"],
                "events": "junk", "triggers": [None, {"fired": "maybe"}], "registry": {"versions": [1, {}]},
                "learning": {"windows": [{"label": "w"}], "window_bars": -3}, "market": {"shift_times": [5]},
                "rollouts": [{"steps": [{}], "analyses": [{"checks": [{"passed": [1]}]}]}],
                "drift": {"html_path": None}, "config": [1, 2], "checks": [{"ok": "yes"}]})
    doc = write_report(bad, tmp_path / "bad.html").read_text(encoding="utf-8")
    assert "could not render" not in doc
    assert "Evidently report not available (none was written)" in doc and "story incomplete" in doc


def test_record_text_is_escaped(record: dict[str, Any], tmp_path: Path) -> None:
    record["title"] = "demo <i>run</i>"
    record["config"]["note"] = "<script>alert(1)</script>"
    doc = write_report(record, tmp_path / "r.html").read_text(encoding="utf-8")
    rest = _outside_bundle(doc)
    assert "<b>x</b>" not in rest and "performance decay &lt;b&gt;x&lt;/b&gt;" in rest
    assert "<i>run</i>" not in rest and "demo &lt;i&gt;run&lt;/i&gt;" in rest
    assert "<script>alert" not in rest and "&lt;script&gt;alert(1)" in rest


def test_summary_table_rows(record: dict[str, Any]) -> None:
    rows = dict(summary_table_rows(record))
    live = record["live"]
    n = sum(r["n"] for r in live)
    assert rows["Symbols"] == "8 (1h bars)"
    assert rows["Live bars"] == "600" and rows["Regime shifts"] == "1"
    assert rows["Live accuracy"] == f"{sum(r['hits'] for r in live) / n:.1%}"
    assert rows["Static accuracy (v1 kept)"] == f"{sum(r['static_hits'] for r in live) / n:.1%}"
    assert rows["Live return"] == f"{sum(r['strategy_return'] for r in live):+.2%}"
    assert rows["Post-shift accuracy"] == "58.0% live vs 35.0% static"
    assert rows["Recovery after the shift"] == "240 bars"
    assert rows["Retraining triggers fired"] == "1 of 5 checks"
    assert rows["Rollouts"] == "2: 1 RolledBack, 1 Promoted"
    assert rows["Production model"] == "v2" and rows["Story checks"] == "2 of 2 ok"
    record["learning"]["recovery_bars"] = None
    assert dict(summary_table_rows(record))["Recovery after the shift"] == "not reached"
    empty = summary_table_rows({})
    assert [label for label, _ in empty] == list(rows) and {v for _, v in empty} == {"not available"}


def test_numpy_scalars_and_datetimes_count(record: dict[str, Any], tmp_path: Path) -> None:
    """The demo may hand over numpy scalars and datetime objects before any JSON round trip."""
    typed = copy.deepcopy(record)
    for row in typed["live"]:
        row.update(n=np.int64(row["n"]), hits=np.int64(row["hits"]), strategy_return=np.float32(0.001))
    typed["market"]["shift_times"] = [START + timedelta(hours=SHIFT_BAR)]
    assert summary_table_rows(typed)[3] == summary_table_rows(record)[3]
    assert dict(summary_table_rows(typed))["Live return"] == "+60.00%"
    doc = write_report(typed, tmp_path / "r.html").read_text(encoding="utf-8")
    assert '"x0":"2026-12-05 21:00:00"' in _outside_bundle(doc)  # the shift line, in naive UTC


def test_rolling_accuracy_by_hand() -> None:
    hits, n = [1, 2, 0, 3, 0], [2, 2, 0, 4, 0]
    # window 2: [1/2, 3/4, 2/2, 3/4, 3/4]; window 1 is per bar, None where no outcome
    assert rolling_accuracy(hits, n, 2) == [0.5, 0.75, 1.0, 0.75, 0.75]
    assert rolling_accuracy(hits, n, 1) == [0.5, 1.0, None, 0.75, None]
    assert rolling_accuracy(hits, n, 10) == [0.5, 0.75, 0.75, 0.75, 0.75]
    assert rolling_accuracy([0, 0], [0, 0], 3) == [None, None] and rolling_accuracy([], [], 5) == []
    with pytest.raises(ValueError):
        rolling_accuracy(hits, n, 0)


def test_analyses_are_listed_oldest_first(record: dict[str, Any], tmp_path: Path) -> None:
    doc = write_report(record, tmp_path / "r.html").read_text(encoding="utf-8")
    section = doc[doc.index('<section id="rollouts">'):doc.index('<section id="registry">')]
    assert section.index("error_rate: n/a vs 0.01 ?") < section.index("accuracy_drop: 0.2 vs 0.05 ✗")
    assert "accuracy_drop: 0.01 vs 0.05 ✓" in section
    assert "background:#16a34a\">Promoted" in section and "background:#dc2626\">RolledBack" in section


SCRIPT = "<script>alert(1)</script>"
ESCAPED = "&lt;script&gt;alert(1)&lt;/script&gt;"


def _section(doc: str, key: str) -> str:
    start = doc.index(f'<section id="{key}">')
    return doc[start:doc.index("</section>", start)]


def test_versions_reasons_and_names_from_the_record_are_autoescaped(
        record: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every string the templates take from the record is escaped, wherever it lands: model versions, reasons,
    names, file names, error messages; a Markup smuggled into the record is not trusted either."""
    record["live"][-1]["version"] = SCRIPT  # a trace name in the live figure
    record["events"][0]["version"] = SCRIPT
    record["triggers"][2]["reasons"] = [SCRIPT]
    rollout = record["rollouts"][0]
    rollout.update(name=SCRIPT, message=SCRIPT)
    rollout["analyses"][0]["reasons"] = [SCRIPT]
    rollout["analyses"][0]["checks"][0].update(name=SCRIPT, reason=f'"{SCRIPT}')
    registry = record["registry"]
    registry["aliases"]["production"] = SCRIPT
    registry["versions"][0].update(version=SCRIPT, note=Markup(SCRIPT))
    registry["history"][0]["reason"] = SCRIPT
    record["checks"][0].update(ok=False, name=SCRIPT, detail=SCRIPT)
    record["drift"].update(drifted=[SCRIPT], html_path=str(tmp_path / f"{SCRIPT}.html"))
    record["config"][SCRIPT] = Markup(SCRIPT)

    def broken(_record: Any) -> dict[str, Any]:
        raise ValueError(SCRIPT)

    monkeypatch.setattr(report, "_learning_section", broken)
    doc = write_report(record, tmp_path / "r.html").read_text(encoding="utf-8")
    rest = _outside_bundle(doc)
    assert "<script>alert" not in rest and 'title=""<' not in rest
    assert "<section" not in doc[doc.index("<script"):doc.index("</head>")]
    for key, least in (("timeline", 1), ("triggers", 1), ("rollouts", 5), ("registry", 4), ("drift", 2),
                       ("config", 2), ("learning", 1)):
        assert _section(doc, key).count(ESCAPED) >= least, key
    assert f"could not render this section: {ESCAPED}" in _section(doc, "learning")
    banner = re.search(r'<div class="banner bad">(.*?)</div>', doc, re.S)
    assert banner is not None and f"{ESCAPED}: {ESCAPED}" in banner.group(1)
    assert f'title="&#34;{ESCAPED}"' in _section(doc, "rollouts")
    # plotly renders its labels as HTML: the trace name is escaped before plotly sees it
    assert "live: &lt;script&gt;alert(1)" in _section(doc, "live")


def test_the_templates_are_autoescaped_and_strict() -> None:
    env = report._environment()
    assert env.autoescape is True and env.undefined is jinja2.StrictUndefined
    names = set(env.list_templates())
    assert {"report.html.j2", "header.html.j2", "macros.html.j2"} <= names
    assert {f"section_{key}.html.j2" for key, _ in report.SECTIONS} <= names
    for name in names:
        env.get_template(name)  # each one compiles
    assert not report._render("macros.html.j2").strip()  # macros only
    assert str(env.from_string("{{ x }}").render(x=SCRIPT)) == ESCAPED


def test_the_templates_ship_in_the_wheel() -> None:
    """Docker images install the wheel, not the source tree: package-data must name every template."""
    root = Path(__file__).resolve().parents[1]
    patterns = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    package = root / "src" / "tideline"
    templates = [t.relative_to(package).as_posix() for t in (package / "app" / "templates").rglob("*") if t.is_file()]
    assert templates
    for name in templates:
        assert any(fnmatch.fnmatch(name, p) for p in patterns["tideline"]), name


def test_a_missing_template_variable_fails_loudly(
        record: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """StrictUndefined: a template asking for a value it was not given raises, in place of an empty string;
    and write_report, which forgives a malformed record section by section, does not hide a template bug."""
    with pytest.raises(jinja2.UndefinedError, match="events"):
        report._render("section_timeline.html.j2", s={})
    with pytest.raises(jinja2.UndefinedError):
        report._render("report.html.j2", title="t")
    monkeypatch.setattr(report, "_timeline_section", lambda _record: {"rows": []})  # not what it expects
    with pytest.raises(jinja2.UndefinedError, match="events"):
        write_report(record, tmp_path / "out" / "r.html")
    assert not (tmp_path / "out" / "r.html").exists()


def test_the_importance_section_shows_productions_features_and_what_changed(
        record: dict[str, Any], tmp_path: Path) -> None:
    doc = write_report(record, tmp_path / "r.html").read_text(encoding="utf-8")
    s = _section(doc, "importance")
    assert "production v2: top features (mean |SHAP value|, 900 hold-out rows)" in s
    assert s.index("vol_24") < s.index("ret_1") and "50.0%" in s  # largest first, with its share
    assert "v1 -&gt; v2: importance rank correlation" in s and "with v1&#39;s" in s and "at the drift check" in s
    record["importance"]["versions"]["v2"]["values"] = {"<b>x</b>": 1.0, "ret_1": 2.0}
    s = _section(write_report(record, tmp_path / "r2.html").read_text(encoding="utf-8"), "importance")
    assert "<b>x</b>" not in s and "&lt;b&gt;x&lt;/b&gt;" in s and "v1 -&gt; v2: not comparable" in s
