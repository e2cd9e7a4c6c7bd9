"""Alerts and notifications (``tideline.loop.alerts``), for real: e-mail to an SMTP server on loopback (aiosmtpd),
webhooks to a local HTTP receiver, an unreachable server and a malformed URL that never stop the loop, records that
people acknowledge and resolve."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from email import message_from_bytes
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller

from conftest import free_port
from tideline.config import load_settings
from tideline.errors import ConfigError
from tideline.loop.alerts import acknowledge, list_alerts, process, resolve
from tideline.loop.core import TickRecord, write_record
from tideline.registry import open_registry

T0 = 1_796_000_000.0  # the passes' clock (epoch seconds)


class Inbox:
    """aiosmtpd handler: every message delivered to it."""

    def __init__(self) -> None:
        self.messages: list[Any] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802 - aiosmtpd's name
        self.messages.append(message_from_bytes(envelope.content))
        return "250 OK"


@pytest.fixture()
def smtp() -> Any:
    inbox = Inbox()
    port = free_port()
    ctl = Controller(inbox, hostname="127.0.0.1", port=port)
    ctl.start()
    inbox.port = port  # type: ignore[attr-defined]
    yield inbox
    ctl.stop()


def mailto(port: int) -> str:
    return f"mailto://127.0.0.1:{port}?from=tideline@example.com&to=oncall@example.com&mode=insecure"


def _settings(tmp: Path, **routes: list[str]) -> Any:
    return load_settings(registry=(tmp / "reg").as_uri(), home=str(tmp / "home"),
                         notifications={**routes, "retry_seconds": 60})


def _tick(reg: Any, wall: str, steps: list[dict[str, Any]], outcome: str = "ok") -> None:
    write_record(reg, TickRecord(id=wall[11:19].replace(":", ""), at=wall, wall=wall, steps=steps, outcome=outcome))


def _rolled_back(reg: Any, candidate: str = "v4") -> None:
    doc = {"spec": {"name": "tideline", "candidate": candidate, "baseline": "v3"},
           "status": {"phase": "RolledBack", "phase_since": 1.0,
                      "message": "rolled back: 2 consecutive failed analyses (error rate 0.5 > 0.01)"}}
    reg.store.put("rollouts/tideline.json", json.dumps(doc).encode())


DECAY = {"step": "decide", "outcome": "retrain",
         "rules": [{"name": "performance_decay", "fired": True, "reason": "live accuracy 0.41 < 0.45"}]}


def test_a_rolled_back_candidate_arrives_as_an_email(tmp_path: Path, smtp: Inbox) -> None:
    s = _settings(tmp_path, high=[mailto(smtp.port)])  # type: ignore[attr-defined]
    reg = open_registry(s.registry_uri())
    assert process(reg, s, now=T0)["raised"] == []  # the first pass starts from the records as they are
    _rolled_back(reg)
    out = process(reg, s, now=T0 + 10)
    assert len(out["raised"]) == 1 and out["sent"] == 1 and out["failed"] == 0 and out["error"] is None
    assert len(smtp.messages) == 1
    msg = smtp.messages[0]
    assert msg["Subject"] == "[tideline high] Rollout of v4 rolled back" and msg["To"] == "oncall@example.com"
    body = msg.get_payload(0).get_payload(decode=True).decode() if msg.is_multipart() else msg.get_payload()
    assert "error rate 0.5 > 0.01" in body
    (alert,) = list_alerts(reg)
    assert alert.kind == "rolled_back" and alert.deliveries[0]["ok"] is True
    assert "127.0.0.1" in alert.deliveries[0]["route"]
    assert process(reg, s, now=T0 + 20)["raised"] == [] and len(smtp.messages) == 1  # nothing new: nothing sent
    resolve(reg, alert.id, by="alice")
    # the next rollout of that name archives the ended document: the same end is not raised again from there
    reg.store.put("rollouts/history/tideline-1-v4.json", reg.store.get("rollouts/tideline.json")[0])
    reg.store.put("rollouts/tideline.json", json.dumps({"spec": {"name": "tideline", "candidate": "v5"},
                                                        "status": {"phase": "Shadow", "phase_since": 2.0}}).encode())
    assert process(reg, s, now=T0 + 30)["raised"] == [] and len(smtp.messages) == 1


def test_the_same_alert_is_not_sent_twice_while_open_and_resolving_reopens_it(tmp_path: Path, smtp: Inbox) -> None:
    s = _settings(tmp_path, medium=[mailto(smtp.port)])  # type: ignore[attr-defined]
    reg = open_registry(s.registry_uri())
    process(reg, s, now=T0)
    monitor = {"step": "monitor", "outcome": "ok", "summary": "v3: 300 live outcome(s) ..."}
    _tick(reg, "2026-12-07T10:00:00+00:00", [monitor, DECAY])
    process(reg, s, now=T0 + 1)
    _tick(reg, "2026-12-07T11:00:00+00:00", [monitor, DECAY])
    process(reg, s, now=T0 + 2)
    (alert,) = list_alerts(reg)
    assert alert.key == "decay:v3" and alert.occurrences == 2 and len(smtp.messages) == 1
    acked = acknowledge(reg, alert.id, by="alice", now="2026-12-07T11:30:00+00:00")
    assert acked.status == "acknowledged" and acked.acknowledged_by == "alice"
    _tick(reg, "2026-12-07T12:00:00+00:00", [monitor, DECAY])
    process(reg, s, now=T0 + 3)
    assert len(list_alerts(reg)) == 1 and len(smtp.messages) == 1  # acknowledged is still open
    done = resolve(reg, alert.id, by="bob")
    assert done.status == "resolved" and done.resolved_by == "bob" and done.resolved_at
    _tick(reg, "2026-12-07T13:00:00+00:00", [monitor, DECAY])
    process(reg, s, now=T0 + 4)
    assert len(list_alerts(reg)) == 1 and len(list_alerts(reg, include_resolved=True)) == 2
    assert len(smtp.messages) == 2  # a new occurrence after it was resolved
    with pytest.raises(ConfigError, match="is resolved"):
        acknowledge(reg, alert.id, by="carol")
    with pytest.raises(ConfigError, match="no alert 'nosuch'"):
        resolve(reg, "nosuch", by="carol")


def test_resolved_alerts_are_archived_so_a_pass_reads_only_the_open_ones(tmp_path: Path) -> None:
    from prometheus_client import CollectorRegistry, generate_latest

    from tideline.loop.alerts import ALERTS_PREFIX, RESOLVED_PREFIX
    from tideline.loop.metrics import ControlPlaneCollector

    s = _settings(tmp_path)
    reg = open_registry(s.registry_uri())
    process(reg, s, now=T0)
    monitor = {"step": "monitor", "outcome": "ok", "summary": "v3: 300 live outcome(s) ..."}
    for hour in range(10, 16):  # six decay alerts, each resolved before the next
        _tick(reg, f"2026-12-07T{hour}:00:00+00:00", [monitor, DECAY])
        process(reg, s, now=T0 + hour)
        (alert,) = list_alerts(reg)
        resolve(reg, alert.id, by="alice")
    assert reg.store.list(ALERTS_PREFIX) == [] and len(reg.store.list(RESOLVED_PREFIX)) == 6
    again = resolve(reg, alert.id, by="bob")  # resolving an archived alert changes nothing
    assert again.resolved_by == "alice" and len(list_alerts(reg, include_resolved=True)) == 6
    with pytest.raises(ConfigError, match="is resolved"):
        acknowledge(reg, alert.id, by="carol")
    # a move cut short (resolved in the records, not yet archived) is finished by the next pass, counted once
    _tick(reg, "2026-12-07T17:00:00+00:00", [monitor, DECAY])
    process(reg, s, now=T0 + 17)
    (last,) = list_alerts(reg)
    key = f"{ALERTS_PREFIX}{last.id}.json"
    reg.store.put(key, json.dumps({**json.loads(reg.store.get(key)[0]), "status": "resolved"}).encode())
    assert list_alerts(reg) == [] and len(list_alerts(reg, include_resolved=True)) == 7
    reads: list[str] = []
    real_get = reg.store.get

    def counting_get(k: str) -> Any:
        reads.append(k)
        return real_get(k)

    reg.store.get = counting_get  # type: ignore[method-assign]
    process(reg, s, now=T0 + 18)
    assert reg.store.list(ALERTS_PREFIX) == [] and len(reg.store.list(RESOLVED_PREFIX)) == 7
    reads.clear()
    process(reg, s, now=T0 + 19)
    assert not [k for k in reads if k.startswith(RESOLVED_PREFIX)]  # a pass never reads the archive
    # the metrics count every delivery record, the archive's read once
    collector = ControlPlaneCollector(reg)
    for _ in range(2):
        reads.clear()
        registry = CollectorRegistry()
        registry.register(collector)  # type: ignore[arg-type]
        text = generate_latest(registry).decode()
        assert 'tideline_alerts_open{severity="medium"} 0.0' in text
    assert not [k for k in reads if k.startswith(RESOLVED_PREFIX)]  # the second scrape: all cached


def test_an_unreachable_server_and_a_malformed_url_never_stop_the_loop_and_nothing_is_lost(tmp_path: Path) -> None:
    port = free_port()  # nothing listens there yet
    s = _settings(tmp_path, critical=[mailto(port), "nosuch://where"])
    reg = open_registry(s.registry_uri())
    process(reg, s, now=T0)
    reg.set_kill_switch(True, reason="no version passes the floors", actor="guard")
    out = process(reg, s, now=T0 + 1)
    assert out["error"] is None and out["sent"] == 0 and out["failed"] == 2
    (alert,) = list_alerts(reg)
    assert alert.kind == "kill_switch" and alert.severity == "critical"
    errors = {d["route"].split(":", 1)[0]: d["error"] for d in alert.deliveries}
    assert "not an apprise URL" in errors["nosuch"] and "\n" not in errors["nosuch"]
    assert "did not accept" in errors["mailto"]
    assert process(reg, s, now=T0 + 2)["failed"] == 0  # before its retry time: not hammered
    inbox = Inbox()
    ctl = Controller(inbox, hostname="127.0.0.1", port=port)
    ctl.start()
    try:
        out = process(reg, s, now=T0 + 61)  # the retry: the server is up now
    finally:
        ctl.stop()
    assert out["sent"] == 1 and out["failed"] == 1 and len(inbox.messages) == 1  # the e-mail was kept, then sent
    assert inbox.messages[0]["Subject"].startswith("[tideline critical] Kill switch engaged")
    (alert,) = list_alerts(reg)
    mail = next(d for d in alert.deliveries if d["route"].startswith("mailto"))
    assert mail["ok"] is True and mail["attempts"] == 2
    assert process(reg, s, now=T0 + 200)["sent"] == 0  # delivered routes are never sent again


def test_a_webhook_receives_the_alert_as_json(tmp_path: Path) -> None:
    received: list[dict[str, Any]] = []

    class Hook(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's name
            received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *_: Any) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        s = _settings(tmp_path, high=[f"json://127.0.0.1:{server.server_port}/hook"])
        reg = open_registry(s.registry_uri())
        process(reg, s, now=T0)
        _tick(reg, "2026-12-07T10:00:00+00:00", [{"step": "retrain", "outcome": "failed",
                                                  "summary": "the retraining run failed: pipeline task 'validate' "
                                                             "failed: 3 bars with a negative price"}], "ok")
        assert process(reg, s, now=T0 + 1)["sent"] == 1
    finally:
        server.shutdown()
    assert len(received) == 1
    assert received[0]["title"] == "[tideline high] Retraining run failed"
    assert "negative price" in received[0]["message"] and received[0]["type"] == "failure"


def test_promotions_rejections_and_the_stalled_loop_are_raised_with_their_severity(tmp_path: Path) -> None:
    s = _settings(tmp_path)
    reg = open_registry(s.registry_uri())
    process(reg, s, now=T0)
    art = tmp_path / "art"
    art.mkdir()
    (art / "model.json").write_text("{}")
    v = reg.register(art, {"family": "lightgbm"}).version
    reg.promote(v, reason="first model")
    _tick(reg, "2026-12-07T10:00:00+00:00", [{"step": "retrain", "outcome": "rejected", "run_id": "r1",
                                              "summary": "no candidate passed: lightgbm: Sharpe 0.2 < 0.5"}])
    process(reg, s, now=T0 + 1)
    got = {a.kind: a for a in list_alerts(reg)}
    assert got["promoted"].severity == "low" and v in got["promoted"].title
    assert got["rejected"].severity == "low" and "Sharpe 0.2 < 0.5" in got["rejected"].body
    last = 1796637600.0  # 2026-12-07T10:00:00Z: the tick above
    process(reg, s, now=last + 27 * 3600)
    stalled = [a for a in list_alerts(reg) if a.kind == "loop_stalled"]
    assert len(stalled) == 1 and stalled[0].severity == "critical" and "27.0 h" in stalled[0].body


def test_a_store_that_fails_makes_the_pass_report_not_raise(tmp_path: Path) -> None:
    s = _settings(tmp_path)
    reg = open_registry(s.registry_uri())

    def broken(*_: Any, **__: Any) -> Any:
        raise OSError("store unreachable")

    reg.store.list = broken  # type: ignore[method-assign]
    out = process(reg, s, now=T0)
    assert out["error"] == "store unreachable"


def test_the_cli_lists_acknowledges_and_resolves_with_who(tmp_path: Path) -> None:
    s = _settings(tmp_path)
    reg = open_registry(s.registry_uri())
    process(reg, s, now=T0)
    reg.set_kill_switch(True, reason="drill", actor="cli")
    process(reg, s, now=T0 + 1)
    (alert,) = list_alerts(reg)
    exe = Path(sys.executable).with_name("tideline")
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "TIDELINE_HOME": str(tmp_path / "home")}

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(exe), "--registry", s.registry_uri(), "alerts", *args], capture_output=True,
                              text=True, timeout=120, env=env)

    r = cli("list")
    assert r.returncode == 0 and alert.id in r.stdout and "critical" in r.stdout and "Kill switch" in r.stdout
    r = cli("ack", alert.id, "--by", "alice")
    assert r.returncode == 0 and "acknowledged by alice" in r.stdout
    r = cli("resolve", alert.id, "--by", "bob")
    assert r.returncode == 0 and "resolved by bob" in r.stdout
    assert cli("list").stdout.startswith("no alerts open")
    doc = json.loads(cli("list", "--all", "--json").stdout)
    assert doc[0]["acknowledged_by"] == "alice" and doc[0]["resolved_by"] == "bob"
    r = cli("ack", alert.id)
    assert r.returncode == 2 and "is resolved" in r.stderr and "Traceback" not in r.stderr


def test_the_operator_raises_and_delivers_in_the_background(tmp_path: Path, smtp: Inbox,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """On a cluster the loop's ticks are one-shot pods: the operator's thread delivers what they recorded, with the
    apprise URLs of its environment (the chart's notifications.existingSecret)."""
    from conftest import wait_for
    from tideline.k8s.operator import start_alerts

    uri = (tmp_path / "reg").as_uri()
    reg = open_registry(uri)
    process(reg, _settings(tmp_path), now=T0)  # a one-shot tick's pass: records only (no routes there)
    reg.set_kill_switch(True, reason="guard: no version passes the floors", actor="operator")
    monkeypatch.setenv("TIDELINE_NOTIFICATIONS__CRITICAL", json.dumps([mailto(smtp.port)]))  # type: ignore[attr-defined]
    assert start_alerts({}) is None
    thread = start_alerts({"TIDELINE_REGISTRY": uri}, interval_s=0.2)
    assert thread is not None and thread.daemon
    wait_for(lambda: len(smtp.messages) == 1, timeout=60, what="the operator's e-mail")
    assert smtp.messages[0]["Subject"].startswith("[tideline critical] Kill switch engaged")


def test_a_rollout_waiting_for_approval_asks_for_it(tmp_path: Path, smtp: Inbox) -> None:
    s = _settings(tmp_path, high=[mailto(smtp.port)])  # type: ignore[attr-defined]
    reg = open_registry(s.registry_uri())
    process(reg, s, now=T0)
    doc = {"spec": {"name": "tideline", "candidate": "v4", "baseline": "v3"},
           "status": {"phase": "AwaitingApproval", "phase_since": 5.0,
                      "message": "canary passed at 50%; waiting for approval (kubectl tideline approve tideline, ...)"}}
    reg.store.put("rollouts/tideline.json", json.dumps(doc).encode())
    process(reg, s, now=T0 + 1)
    process(reg, s, now=T0 + 2)  # still waiting: asked once
    assert len(smtp.messages) == 1 and smtp.messages[0]["Subject"] == "[tideline high] Rollout of v4 awaits approval"
