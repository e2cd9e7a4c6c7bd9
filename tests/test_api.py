"""The loop's HTTP API (``tideline.app.api``): the token or nothing, every answer from the store, one-line errors,
an OpenAPI description generated from the code and fuzzed from itself (schemathesis: no 5xx)."""

from __future__ import annotations

import atexit
import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, settings

from tideline.app.api import Busy, create_app, load_token
from tideline.config import load_settings
from tideline.errors import ConfigError
from tideline.loop.alerts import list_alerts, process
from tideline.loop.core import TickRecord, write_record
from tideline.registry import open_registry
from tideline.triggers import RunLock

TOKEN = "t0ken-for-the-tests-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def _world(tmp: Path, *, awaiting: bool = True) -> tuple[Any, Any, list[str]]:
    s = load_settings(registry=(tmp / "reg").as_uri(), home=str(tmp / "home"))
    reg = open_registry(s.registry_uri())
    art = tmp / "art"
    art.mkdir(exist_ok=True)
    (art / "model.json").write_text("{}")
    for _ in range(2):
        reg.register(art, {"family": "lightgbm"})
    reg.promote("v1", reason="first")
    process(reg, s, now=1.0)
    monitor = {"step": "monitor", "outcome": "ok", "summary": "v1: 300 live outcome(s) ...",
               "live": {"n": 300, "directional_accuracy": 0.56, "sharpe": 1.2}}
    decide = {"step": "decide", "outcome": "no_retrain", "summary": "no rule fired",
              "rules": [{"name": "performance_decay", "fired": False, "reason": "accuracy 0.56 >= 0.45"}]}
    for hour in (10, 11):
        wall = f"2026-12-07T{hour}:00:00+00:00"
        write_record(reg, TickRecord(id=f"tick{hour}", at=wall, wall=wall, steps=[monitor, decide]))
    reg.set_kill_switch(True, reason="drill", actor="test")
    process(reg, s, now=2.0)
    if awaiting:
        doc = {"spec": {"name": "tideline", "target": "tideline", "candidate": "v2", "baseline": "v1"},
               "status": {"phase": "AwaitingApproval", "weight": 50, "candidate": "v2", "baseline": "v1",
                          "message": "canary passed at 50%; waiting for approval"}}
        reg.store.put("rollouts/tideline.json", json.dumps(doc).encode())
    started: list[str] = []

    def retrain(reason: str) -> str:
        started.append(reason)
        return "a forced tick is running"

    return reg, create_app(reg, s, token=TOKEN, retrain=retrain), started


def test_no_token_configured_means_no_api(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="never served without one"):
        load_token(None, {})
    with pytest.raises(ConfigError, match="shorter than 16"):
        load_token(None, {"TIDELINE_API_TOKEN": "short"})
    (tmp_path / "token").write_text(TOKEN + "\n")
    assert load_token(tmp_path / "token", {}) == TOKEN
    with pytest.raises(ConfigError, match="cannot read the API token file"):
        load_token(tmp_path / "missing", {})


def test_a_wrong_or_missing_token_is_a_401_and_nothing_is_done(tmp_path: Path) -> None:
    reg, app, started = _world(tmp_path)
    client = TestClient(app)
    alert = list_alerts(reg)[0]
    for headers in ({}, {"Authorization": "Bearer wrong-token-0123456789"}, {"Authorization": f"Basic {TOKEN}"}):
        for method, path, body in (("GET", "/api/v1/status", None), ("POST", "/api/v1/retrain", {"reason": "x"}),
                                   ("POST", f"/api/v1/alerts/{alert.id}/ack", {"by": "mallory"}),
                                   ("POST", "/api/v1/rollouts/tideline/approve", {"by": "mallory"})):
            r = client.request(method, path, json=body, headers=headers)
            assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer", (headers, path, r.text)
            assert list(r.json()) == ["error"] and "\n" not in r.json()["error"]
    assert started == [] and list_alerts(reg)[0].status == "open"
    assert json.loads(reg.store.get("rollouts/tideline.json")[0]).get("requested_action") is None
    assert client.get("/").status_code == 200 and "Authorization" in client.get("/").text  # the page: no data
    assert client.get("/openapi.json").status_code == 200


def test_status_decisions_triggers_live_and_alerts_come_from_the_store(tmp_path: Path) -> None:
    reg, app, _ = _world(tmp_path)
    client = TestClient(app, headers=AUTH)
    st = client.get("/api/v1/status").json()
    assert st["production"] == "v1" and st["kill_switch"] == "drill" and st["run"] is None
    assert st["rollouts"] == [{"name": "tideline", "candidate": "v2", "baseline": "v1", "phase": "AwaitingApproval",
                               "weight": 50, "message": "canary passed at 50%; waiting for approval",
                               "approved_by": None}]
    assert st["last_tick"]["id"] == "tick11" and st["experience"] is None  # no experience pass yet
    assert [t["id"] for t in client.get("/api/v1/decisions", params={"limit": 5}).json()] == ["tick11", "tick10"]
    trig = client.get("/api/v1/triggers").json()
    assert trig["tick"] == "tick11" and trig["rules"][0]["name"] == "performance_decay"
    live = client.get("/api/v1/live").json()
    assert [p["directional_accuracy"] for p in live["v1"]] == [0.56, 0.56]
    alerts = client.get("/api/v1/alerts").json()
    assert {a["kind"] for a in alerts} == {"kill_switch"}
    r = client.post(f"/api/v1/alerts/{alerts[0]['id']}/ack", json={"by": "alice"})
    assert r.status_code == 200 and r.json()["acknowledged_by"] == "alice"
    r = client.post(f"/api/v1/alerts/{alerts[0]['id']}/resolve", json={"by": "alice"})
    assert r.status_code == 200 and r.json()["status"] == "resolved"
    r = client.post(f"/api/v1/alerts/{alerts[0]['id']}/ack", json={"by": "bob"})
    assert r.status_code == 409 and "is resolved" in r.json()["error"]
    assert client.post("/api/v1/alerts/nosuch/ack", json={"by": "bob"}).status_code == 404


def test_retrain_while_a_run_is_in_progress_is_a_409_with_its_id(tmp_path: Path) -> None:
    reg, app, started = _world(tmp_path)
    client = TestClient(app, headers=AUTH)
    s = load_settings(registry=reg.store.uri)
    from tideline.clock import utcnow

    lock = RunLock(reg.store, s.triggers.lock_ttl_seconds)
    assert lock.acquire("run-42", "drift", utcnow())
    r = client.post("/api/v1/retrain", json={"reason": "by hand"})
    assert r.status_code == 409 and r.json()["run"] == "run-42" and "run-42" in r.json()["error"]
    assert started == []
    lock.release("run-42")
    r = client.post("/api/v1/retrain", json={"reason": "by hand"})
    assert r.status_code == 202 and started == ["by hand"]


def test_approve_only_what_awaits_approval(tmp_path: Path) -> None:
    reg, app, _ = _world(tmp_path)
    client = TestClient(app, headers=AUTH)
    assert client.post("/api/v1/rollouts/nosuch/approve", json={"by": "alice"}).status_code == 404
    r = client.post("/api/v1/rollouts/tideline/approve", json={"by": "alice"})
    assert r.status_code == 200 and r.json()["requested"] == "approve:alice"
    doc = json.loads(reg.store.get("rollouts/tideline.json")[0])
    doc["status"]["phase"] = "Canary"
    reg.store.put("rollouts/tideline.json", json.dumps(doc).encode())
    r = client.post("/api/v1/rollouts/tideline/approve", json={"by": "alice"})
    assert r.status_code == 409 and "not awaiting approval: it is Canary" in r.json()["error"]


@pytest.mark.parametrize(("path", "body", "fragment"), [
    ("/api/v1/retrain", {}, "body.reason: Field required"),
    ("/api/v1/retrain", {"reason": ""}, "body.reason"),
    ("/api/v1/retrain", [1, 2], "body"),
    ("/api/v1/rollouts/tideline/approve", {"by": "<script>"}, "body.by"),
    ("/api/v1/rollouts/tideline/approve", {"by": "x" * 101}, "body.by"),
])
def test_malformed_bodies_are_a_422_with_one_line(tmp_path: Path, path: str, body: Any, fragment: str) -> None:
    _, app, started = _world(tmp_path)
    r = TestClient(app, headers=AUTH).post(path, json=body)
    assert r.status_code == 422 and fragment in r.json()["error"] and "\n" not in r.json()["error"], r.text
    assert started == []
    r = TestClient(app, headers=AUTH).post(path, content=b"{not json", headers={"Content-Type": "application/json"})
    assert r.status_code == 422


def test_a_busy_retrain_callback_is_a_409(tmp_path: Path) -> None:
    reg, _, _ = _world(tmp_path)

    def busy(_: str) -> str:
        raise Busy("the requested tick")

    app = create_app(reg, load_settings(registry=reg.store.uri), token=TOKEN, retrain=busy)
    r = TestClient(app, headers=AUTH).post("/api/v1/retrain", json={"reason": "again"})
    assert r.status_code == 409 and r.json()["run"] == "the requested tick"


# ---- fuzzed from its own OpenAPI description ------------------------------------------------------------------
_FUZZ_DIR = Path(tempfile.mkdtemp(prefix="tideline-api-fuzz-"))
atexit.register(shutil.rmtree, _FUZZ_DIR, True)
schema = schemathesis.openapi.from_asgi("/openapi.json", _world(_FUZZ_DIR)[1])


@schema.parametrize()
@settings(max_examples=25, deadline=None, derandomize=True, database=None,
          suppress_health_check=list(HealthCheck))
def test_the_api_never_answers_5xx_to_anything_its_description_allows(case: Any) -> None:
    for headers in (AUTH, {}):
        response = case.call(headers=headers)
        assert response.status_code < 500, (case.method, case.formatted_path, response.text[:300])
        if not headers:  # without the token nothing under /api is parsed, answered or done
            assert response.status_code == 401, (case.method, case.formatted_path, response.status_code)


# ---- the status page in a real browser ------------------------------------------------------------------------
BROWSER_INSTALL = "apt-get install -y chromium chromium-driver   (Debian's headless browser and its WebDriver)"


def chrome(tmp: Path) -> Any:
    """Debian's chromium, headless, driven through its chromedriver (selenium; nothing downloaded)."""
    import shutil as sh

    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    binary, driver = sh.which("chromium"), sh.which("chromedriver")
    if binary is None or driver is None:
        pytest.fail(f"chromium and chromedriver are needed; install them: {BROWSER_INSTALL}")
    opts = Options()
    opts.binary_location = binary
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--no-first-run", "--window-size=1280,1000", f"--user-data-dir={tmp / 'chromium'}"):
        opts.add_argument(arg)
    return webdriver.Chrome(service=Service(executable_path=driver), options=opts)


@pytest.mark.slow
def test_the_status_page_follows_a_rollout_in_a_real_browser(tmp_path: Path) -> None:
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By as Find
    from selenium.webdriver.support.ui import WebDriverWait

    from tideline.app.api import serve_in_thread

    reg, app, _ = _world(tmp_path)
    last_pass = {"at": "2026-12-07T11:00:00+00:00", "added": 120, "pending": 8, "skew": {"v1": 3},
                 "quarantined": {"skew": 3}}
    reg.store.put("experience/state.json", json.dumps({"since": None, "last_pass": last_pass}).encode())
    doc = json.loads(reg.store.get("rollouts/tideline.json")[0])
    doc["status"] |= {"phase": "Shadow", "weight": 0, "message": "shadowing v2 next to v1"}
    reg.store.put("rollouts/tideline.json", json.dumps(doc).encode())
    server, port = serve_in_thread(app, 0)
    browser = chrome(tmp_path)
    try:
        browser.get(f"http://127.0.0.1:{port}/?refresh=1")
        # the page re-renders its tables on each refresh: an element found just before one is stale, look again
        wait = WebDriverWait(browser, 60, ignored_exceptions=(StaleElementReferenceException,))
        wait.until(lambda b: b.find_element(Find.ID, "login").is_displayed())  # no token yet: it asks for one
        browser.find_element(Find.ID, "token").send_keys("not-the-token-0123456789")
        browser.find_element(Find.ID, "use").click()
        wait.until(lambda b: "refused" in b.find_element(Find.ID, "error").text)
        field = browser.find_element(Find.ID, "token")
        field.clear()
        field.send_keys(TOKEN)
        browser.find_element(Find.ID, "use").click()
        wait.until(lambda b: b.find_element(Find.ID, "page").is_displayed())
        wait.until(lambda b: b.find_element(Find.ID, "production").text == "v1")
        wait.until(lambda b: b.find_element(Find.ID, "kill").text == "ON: drill")
        wait.until(lambda b: b.find_element(Find.ID, "experience").text
                   == "+120, 8 pending, skew 3 2026-12-07T11:00:00")
        wait.until(lambda b: b.find_element(Find.CSS_SELECTOR, "#rollouts td.phase").text == "Shadow")
        doc["status"] |= {"phase": "Canary", "weight": 10, "message": "shadow passed; canary at 10%"}
        reg.store.put("rollouts/tideline.json", json.dumps(doc).encode())  # the rollout moves on
        wait.until(lambda b: b.find_element(Find.CSS_SELECTOR, "#rollouts td.phase").text == "Canary")
        wait.until(lambda b: "10%" in b.find_element(Find.ID, "rollouts").text)
        wait.until(lambda b: "Kill switch engaged" in b.find_element(Find.ID, "alerts").text)
        # the live accuracy plot, drawn by the plotly the server itself serves (no CDN)
        wait.until(lambda b: b.execute_script("return !!window.Plotly && "
                                              "document.querySelectorAll('#live .scatterlayer .trace').length > 0"))
        # no script error (the network log has the 401s of the page before the token, as it should)
        assert not [e for e in browser.get_log("browser") if e.get("level") == "SEVERE" and e.get("source") != "network"]
    finally:
        browser.quit()
        server.should_exit = True
