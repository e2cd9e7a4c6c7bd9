"""The predictor (tideline.serving) as a real subprocess on loopback, against a real registry in tmp_path.

Two small LightGBM versions (v1, v2) are trained on a synthetic market and registered; v3 is v2's files
with its stored artifact corrupted after registration (sha256 mismatch); v4 is v1 with a model.json whose
target scale is infinite (a broken model that predicts inf/NaN).
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pytest
from prometheus_client.parser import text_string_to_metric_families

from conftest import FAST_PARAMS, free_port, wait_for
from reliability.predictor import Server, start_server
from tideline.config import FeatureConfig
from tideline.data import synthetic_market
from tideline.errors import ConfigError
from tideline.features import build_dataset, feature_config_hash
from tideline.models import load_model, make_model
from tideline.monitoring.predictions import COLUMNS, read_predictions
from tideline.registry import Registry, open_registry
from tideline.serving.chaos import parse_chaos

MODEL = "tideline"


# ----------------------------------------------------------------------------------------- fixtures


class Env:
    def __init__(self, root: Path, registry: Registry, rows: pd.DataFrame, models: dict[str, Any]) -> None:
        self.root = root
        self.uri = (root / "reg").as_uri()
        self.registry = registry
        self.rows = rows  # feature rows (float32 values), the model columns only
        self.models = models  # version -> locally loaded model (what the predictor must reproduce)

    def instances(self, n: int, start: int = 0, **meta: Any) -> list[dict[str, Any]]:
        out = []
        for i, rec in enumerate(self.rows.iloc[start:start + n].to_dict("records")):
            inst: dict[str, Any] = {k: float(v) for k, v in rec.items()}
            if meta:
                inst["symbol"] = meta.get("symbol", f"S{i % 3}")
                t = pd.Timestamp("2024-03-01T00:00:00Z") + pd.Timedelta(hours=start + i)
                inst["timestamp"] = t.isoformat()
            out.append(inst)
        return out

    def expected(self, version: str, n: int, start: int = 0) -> list[float]:
        X = self.rows.iloc[start:start + n].reset_index(drop=True)
        return self.models[version].predict(X).tolist()


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Env:
    root = tmp_path_factory.mktemp("serving")
    cfg = FeatureConfig()
    ds = build_dataset(synthetic_market(n_symbols=5, n_bars=1200, seed=3), cfg)
    reg = open_registry((root / "reg").as_uri())
    meta = {"family": "lightgbm", "feature_config": cfg.model_dump(),
            "feature_config_hash": feature_config_hash(cfg)}
    models: dict[str, Any] = {}
    for seed, lr in ((1, 0.05), (2, 0.1)):
        params = {**FAST_PARAMS["lightgbm"], "learning_rate": lr}
        mdl = make_model("lightgbm", seed=seed, params=params, n_threads=1)
        mdl.fit(ds.X, ds.y, ds.spec)
        art = root / f"art-{seed}"
        mdl.save(art)
        mv = reg.register(art, {**meta, "features": mdl.columns})
        models[mv.version] = load_model(art)
    assert sorted(models) == ["v1", "v2"]
    reg.promote("v1", reason="test")

    # v3: v2's files, then the stored artifact is changed behind the registry's back
    mv3 = reg.register(root / "art-2", {**meta, "features": models["v2"].columns})
    stored = root / "reg" / mv3.artifact_prefix / "model.txt"
    stored.write_text(stored.read_text() + "\n# tampered\n")

    # v4: a model whose target scale is infinite -> non-finite predictions
    broken = root / "art-broken"
    shutil.copytree(root / "art-1", broken)
    mj = json.loads((broken / "model.json").read_text())
    mj["target_scaler"]["scale"] = float("inf")
    (broken / "model.json").write_text(json.dumps(mj))
    assert reg.register(broken, {**meta, "features": models["v1"].columns}).version == "v4"

    rows = ds.X[models["v1"].columns].iloc[:400].reset_index(drop=True)
    return Env(root, reg, rows, models)


class Predictor(Server):
    """The reliability harness's predictor process, with the request helpers these tests use."""

    def v1(self, body: Any, **kw: Any) -> httpx.Response:
        return self.client.post(f"/v1/models/{MODEL}:predict", json=body, **kw)

    def v2(self, body: Any, **kw: Any) -> httpx.Response:
        return self.client.post(f"/v2/models/{MODEL}/infer", json=body, **kw)

    def metrics(self) -> dict[str, list[tuple[dict[str, str], float]]]:
        out: dict[str, list[tuple[dict[str, str], float]]] = {}
        for fam in text_string_to_metric_families(self.client.get("/metrics").text):
            for s in fam.samples:
                out.setdefault(s.name, []).append((dict(s.labels), s.value))
        return out


def _env(extra: dict[str, str] | None = None) -> dict[str, str]:
    e = {**os.environ, "OMP_NUM_THREADS": "1", "TIDELINE_LOG_LEVEL": "INFO"}
    e.pop("TIDELINE_CHAOS", None)
    e.update(extra or {})
    return e


def start(env: Env, *args: str, chaos: str | None = None, name: str = "p") -> Predictor:
    return start_server(env, *args, name=name, extra_env={"TIDELINE_CHAOS": chaos} if chaos else None,
                        cls=Predictor)


@pytest.fixture(scope="module")
def main_pred(env: Env) -> Iterator[Predictor]:
    """Serves v1 (a fixed version id, so promotions by other tests do not move it), shadow v2."""
    p = start(env, "--ref", "v1", "--shadow-ref", "v2", "--max-rows", "100", "--max-body-bytes", "262144",
              "--reload-interval", "0", "--log-flush-seconds", "0.2", name="main")
    yield p
    rc = p.stop()
    assert rc == 0, p.log.read_text()[-2000:]


# ----------------------------------------------------------------------------------------- tests


@pytest.mark.slow
def test_v1_and_v2_predictions_equal_the_model(env: Env, main_pred: Predictor) -> None:
    assert main_pred.version == "v1"
    want = env.expected("v1", 20)
    r = main_pred.v1({"instances": env.instances(20)})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["predictions"] == want  # bit-identical: same float32 rows, same model
    assert body["model_version"] == "v1" and body["model_name"] == MODEL and body["role"] == "active"
    assert r.headers["x-model-version"] == "v1"

    X = env.rows.iloc[:20]
    inputs = [{"name": c, "shape": [20], "datatype": "FP32", "data": [float(v) for v in X[c]]}
              for c in X.columns]
    inputs.append({"name": "symbol", "shape": [20], "datatype": "BYTES", "data": ["AAA"] * 20})
    r = main_pred.v2({"inputs": inputs})
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["model_version"] == "v1" and r.headers["x-model-version"] == "v1"
    assert out["outputs"][0]["name"] == "prediction" and out["outputs"][0]["datatype"] == "FP64"
    assert out["outputs"][0]["shape"] == [20] and out["outputs"][0]["data"] == want

    # health endpoints of the contract
    assert main_pred.client.get("/v2/health/ready").status_code == 200
    assert main_pred.client.get(f"/v2/models/{MODEL}/ready").json()["ready"] is True
    assert main_pred.client.get(f"/v1/models/{MODEL}").status_code == 200


@pytest.mark.slow
def test_validation_errors_name_what_is_wrong(env: Env, main_pred: Predictor) -> None:
    good = env.instances(1)[0]
    feat = env.rows.columns[0]
    without = {k: v for k, v in good.items() if k != feat}
    cases: list[tuple[str, Any, int, str]] = [
        ("v1", [good], 400, "JSON object"),
        ("v1", {"rows": [good]}, 400, '"instances"'),
        ("v1", {"instances": good}, 400, "must be a list"),
        ("v1", {"instances": [1]}, 400, "instances[0] must be an object"),
        ("v1", {"instances": []}, 422, "at least one"),
        ("v1", {"instances": [{**good, "bogus_feature": 1.0}]}, 422, "unknown feature(s): 'bogus_feature'"),
        ("v1", {"instances": [without]}, 422, f"lacks 1 feature(s) the model needs: '{feat}'"),
        ("v1", {"instances": [{**good, feat: True}]}, 422, f"'{feat}' must be a number, got a boolean"),
        ("v1", {"instances": [{**good, feat: "0.1"}]}, 422, f"'{feat}' must be a number, got a string"),
        ("v1", {"instances": [{**good, feat: None}]}, 422, f"'{feat}' must be a number, got null"),
        ("v1", {"instances": [{**good, feat: 1e39}]}, 422, "outside the float32 range"),
        ("v1", {"instances": [good] * 101}, 422, "limit is 100 (--max-rows)"),
        ("v1", {"instances": [{**good, "timestamp": "next tuesday"}]}, 422, "not an ISO-8601 time"),
        ("v1", {"instances": [{**good, "symbol": 5}]}, 422, "symbol must be a string"),
        ("v2", {"inputs": [{"name": feat, "shape": [1], "datatype": "FP32", "data": [1.0]}]}, 422,
         "feature input(s) the model needs are missing"),
        ("v2", {"inputs": [{"name": c, "shape": [1], "datatype": "BOOL" if c == feat else "FP64",
                            "data": [1.0]} for c in env.rows.columns]}, 422, f"'{feat}' has datatype BOOL"),
        ("v2", {"inputs": [{"name": c, "shape": [2], "datatype": "FP64", "data": [1.0]}
                           for c in env.rows.columns]}, 422, "says 2 values, data has 1"),
        ("v2", {"inputs": [{"name": c, "shape": [1], "datatype": "FP64", "data": ["x" if c == feat else 1.0]}
                           for c in env.rows.columns]}, 422, "must be a number, got a string"),
        ("v2", {"nothing": 1}, 422, "inputs"),
    ]
    for proto, body, status, fragment in cases:
        r = main_pred.v1(body) if proto == "v1" else main_pred.v2(body)
        assert r.status_code == status, (proto, fragment, r.status_code, r.text)
        assert fragment in r.json()["error"], (fragment, r.text)
        assert r.headers["x-model-version"] == "v1"

    # NaN / Infinity: not JSON for v1 (400); FastAPI's parser lets them through for v2 -> 422 from us
    r = main_pred.client.post(f"/v1/models/{MODEL}:predict", content=b'{"instances": [{"a": NaN}]}',
                              headers={"content-type": "application/json"})
    assert r.status_code == 400 and "error" in r.json()
    cols = list(env.rows.columns)
    text = '{"inputs": [' + ", ".join(
        f'{{"name": "{c}", "shape": [1], "datatype": "FP64", "data": [{"Infinity" if c == feat else "0.5"}]}}'
        for c in cols) + "]}"
    r = main_pred.client.post(f"/v2/models/{MODEL}/infer", content=text.encode(),
                              headers={"content-type": "application/json"})
    assert r.status_code == 422 and "not finite" in r.json()["error"]
    r = main_pred.client.post(f"/v2/models/{MODEL}/infer", content=b"{not json",
                              headers={"content-type": "application/json"})
    assert r.status_code == 400 and "not valid JSON" in r.json()["error"]
    r = main_pred.client.post("/v1/models/other:predict", json={"instances": [good]})
    assert r.status_code == 404 and "error" in r.json()


@pytest.mark.slow
def test_oversized_bodies_get_413_not_5xx(env: Env, main_pred: Predictor) -> None:
    big = {"instances": env.instances(1) * 200}  # ~360 kB of JSON > the 256 KiB limit
    r = main_pred.v1(big)
    assert r.status_code == 413 and "--max-body-bytes" in r.json()["error"]

    def chunks() -> Iterator[bytes]:  # no Content-Length: counted while streaming
        for _ in range(200):
            yield b" " * 4096

    r = main_pred.client.post(f"/v1/models/{MODEL}:predict", content=chunks(),
                              headers={"content-type": "application/json"})
    assert r.status_code == 413, r.text
    r = main_pred.client.post(f"/v2/models/{MODEL}/infer", content=b"[" * 2_000_000,
                              headers={"content-type": "application/json"})
    assert r.status_code == 413
    # the server is fine afterwards
    assert main_pred.v1({"instances": env.instances(2)}).status_code == 200


@pytest.mark.slow
def test_shadow_is_logged_not_returned(env: Env, main_pred: Predictor) -> None:
    t0 = pd.Timestamp.now(tz="UTC")
    n = 7
    r = main_pred.v1({"instances": env.instances(n, start=50, symbol="X")},
                     headers={"x-request-id": "shadow-test-1"})
    assert r.status_code == 200
    assert r.json()["predictions"] == env.expected("v1", n, start=50)  # the active's, untouched by v2
    assert env.expected("v2", n, start=50) != env.expected("v1", n, start=50)

    deadline = time.monotonic() + 15
    while True:
        df = read_predictions(env.registry, since=t0)
        mine = df[df["request_id"] == "shadow-test-1"]
        if set(mine["role"]) == {"active", "shadow"} or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert list(df.columns) == list(COLUMNS)
    act = mine[mine["role"] == "active"].reset_index(drop=True)
    sha = mine[mine["role"] == "shadow"].reset_index(drop=True)
    assert len(act) == n and len(sha) == n, mine
    assert set(act["version"]) == {"v1"} and set(sha["version"]) == {"v2"}
    assert act["prediction"].tolist() == env.expected("v1", n, start=50)
    assert sorted(sha["prediction"].tolist()) == sorted(env.expected("v2", n, start=50))
    assert sorted(act["feature_hash"]) == sorted(sha["feature_hash"])  # same rows went to both
    assert str(df["time"].dt.tz) == "UTC" and (act["symbol"] == "X").all()
    want_bars = [pd.Timestamp("2024-03-01") + pd.Timedelta(hours=50 + i) for i in range(n)]
    assert act["bar_time"].tolist() == want_bars  # naive UTC, like tideline.data bars
    assert read_predictions(env.registry, until=t0).query("request_id == 'shadow-test-1'").empty
    objects = env.registry.store.list("predictions/")
    assert any("/shadow-v2-" in k for k in objects) and any("/active-v1-" in k for k in objects)


@pytest.mark.slow
def test_metrics_show_the_contract_names(env: Env, main_pred: Predictor) -> None:
    assert main_pred.v1({"instances": env.instances(3)}).status_code == 200
    assert main_pred.v1({"instances": [{"bad": 1}]}).status_code == 422
    deadline = time.monotonic() + 10
    while True:
        mt = main_pred.metrics()
        if any(lb.get("outcome") == "ok" for lb, _ in mt.get("tideline_shadow_requests_total", [])) \
                or time.monotonic() > deadline:
            break
        time.sleep(0.1)

    def value(name: str, **labels: str) -> float:
        return sum(v for lb, v in mt.get(name, []) if all(lb.get(k) == x for k, x in labels.items()))

    base = {"model": MODEL, "version": "v1", "role": "active"}
    assert value("tideline_requests_total", code="200", **base) >= 1
    assert value("tideline_requests_total", code="422", **base) >= 1
    assert value("tideline_request_errors_total", code="422", **base) >= 1
    assert value("tideline_request_errors_total", code="200", **base) == 0
    assert value("tideline_request_duration_seconds_count", **base) >= 2
    assert value("tideline_prediction_value_count", version="v1", role="active") >= 3
    assert value("tideline_prediction_value_count", version="v2", role="shadow") >= 3
    assert value("tideline_shadow_requests_total", version="v2", outcome="ok") >= 1
    assert value("tideline_model_info", version="v1", role="active", ref="v1") == 1
    assert value("tideline_model_info", version="v2", role="shadow", ref="v2") == 1
    assert "tideline_model_reloads_total" in mt or "tideline_model_reloads" in {
        f.name for f in text_string_to_metric_families(main_pred.client.get("/metrics").text)}
    assert "request_predict_seconds_count" in mt  # kserve's own metrics on the same page


@pytest.mark.slow
def test_fuzzed_bodies_never_get_a_5xx(env: Env, main_pred: Predictor) -> None:
    rng = random.Random(1234)
    good = env.instances(2)
    cols = list(env.rows.columns)
    junk_values: list[Any] = [None, True, False, "", "1.0", [], {}, [1.0], {"a": 1}, 1e308, -1e308, 10**30,
                              0, -0.0, 1e-320, "NaN", "\u00ff\u0000"]

    def mutate_v1() -> bytes | Any:
        k = rng.randrange(8)
        if k == 0:
            raw = json.dumps({"instances": good}).encode()
            i = rng.randrange(len(raw))
            return raw[:i] + bytes([rng.randrange(256)]) + raw[i + 1:]
        if k == 1:
            raw = json.dumps({"instances": good}).encode()
            return raw[: rng.randrange(len(raw))]
        inst = [dict(x) for x in good]
        if k == 2:
            inst[rng.randrange(2)][rng.choice(cols)] = rng.choice(junk_values)
        elif k == 3:
            del inst[0][rng.choice(cols)]
        elif k == 4:
            inst[1][rng.choice(["", "x" * 300, "symbol", "timestamp", "ret_999"])] = rng.choice(junk_values)
        elif k == 5:
            return rng.choice([{"instances": rng.choice(junk_values)}, rng.choice(junk_values),
                               {"instances": inst, "extra": 1}, {"instances": [rng.choice(junk_values)]}])
        elif k == 6:
            return bytes(rng.randrange(256) for _ in range(rng.randrange(0, 200)))
        return {"instances": inst}

    def mutate_v2() -> bytes | Any:
        tensors = [{"name": c, "shape": [1], "datatype": "FP32", "data": [0.1]} for c in cols]
        k = rng.randrange(7)
        t = tensors[rng.randrange(len(tensors))]
        if k == 0:
            t[rng.choice(["shape", "datatype", "data", "name"])] = rng.choice(junk_values)
        elif k == 1:
            t["shape"] = rng.choice([[], [0], [2], [1, 2], [-1], [1, 1], [10**12]])
        elif k == 2:
            t["data"] = [rng.choice(junk_values)]
        elif k == 3:
            t["datatype"] = rng.choice(["BYTES", "BOOL", "FP16", "INT8", "UINT64", "COMPLEX", ""])
        elif k == 4:
            tensors.append({"name": rng.choice(["symbol", "timestamp", cols[0]]), "shape": [1],
                            "datatype": rng.choice(["BYTES", "FP32"]), "data": [rng.choice(junk_values)]})
        elif k == 5:
            raw = json.dumps({"inputs": tensors}).encode()
            i = rng.randrange(len(raw))
            return raw[:i] + bytes([rng.randrange(256)]) + raw[i + 1:]
        else:
            return rng.choice([{"inputs": rng.choice(junk_values)}, {"inputs": []}, rng.choice(junk_values),
                               {"id": 5, "inputs": tensors}, {"inputs": tensors, "parameters": {"a": []}}])
        return {"inputs": tensors}

    statuses: dict[int, int] = {}
    for _ in range(1000):
        v2 = rng.random() < 0.5
        body = mutate_v2() if v2 else mutate_v1()
        path = f"/v2/models/{MODEL}/infer" if v2 else f"/v1/models/{MODEL}:predict"
        ctype = rng.choice(["application/json", "application/json", "text/plain", "application/octet-stream"])
        content = body if isinstance(body, bytes) else json.dumps(body, allow_nan=True).encode()
        r = main_pred.client.post(path, content=content, headers={"content-type": ctype})
        statuses[r.status_code] = statuses.get(r.status_code, 0) + 1
        assert r.status_code < 500, (path, content[:300], r.status_code, r.text[:300])
        if r.status_code >= 400:
            assert isinstance(r.json().get("error"), str), r.text
    assert statuses.get(200, 0) > 0 and sum(v for k, v in statuses.items() if k >= 400) > 0, statuses
    assert main_pred.proc.poll() is None


@pytest.mark.slow
def test_hot_reload_switches_without_failures_and_refuses_a_corrupt_version(env: Env) -> None:
    env.registry.promote("v1", reason="test reset")
    p = start(env, "--ref", "production", "--reload-interval", "0.2", "--no-prediction-log", name="reload")
    try:
        assert p.version == "v1"
        want = {v: env.expected(v, 5) for v in ("v1", "v2")}
        seen: list[tuple[int, str, Any]] = []
        stop = threading.Event()

        def client() -> None:
            with httpx.Client(base_url=p.url, timeout=30) as c:
                while not stop.is_set():
                    r = c.post(f"/v1/models/{MODEL}:predict", json={"instances": env.instances(5)})
                    seen.append((r.status_code, r.headers.get("x-model-version", ""), r.json()))

        th = threading.Thread(target=client)
        th.start()
        try:
            wait_for(lambda: len(seen) >= 5, what="5 answers from v1")  # the switch happens under traffic
            env.registry.promote("v2", reason="test")
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline and not (seen and seen[-1][1] == "v2"):
                time.sleep(0.05)
            time.sleep(0.3)
        finally:
            stop.set()
            th.join(30)
        assert seen and all(code == 200 for code, _, _ in seen), [s for s in seen if s[0] != 200][:3]
        versions = [v for _, v, _ in seen]
        assert versions[0] == "v1" and versions[-1] == "v2"
        switch = versions.index("v2")
        assert set(versions[:switch]) == {"v1"} and set(versions[switch:]) == {"v2"}  # one clean switch
        for _, v, body in seen:
            assert body["model_version"] == v and body["predictions"] == want[v]

        # v3's stored artifact fails its sha256: the reload is refused, v2 keeps serving
        env.registry.promote("v3", reason="test")
        deadline = time.monotonic() + 15
        failed = 0.0
        while time.monotonic() < deadline:
            failed = sum(v for lb, v in p.metrics().get("tideline_model_reloads_total", [])
                         if lb.get("outcome") == "failed")
            if failed >= 1:
                break
            time.sleep(0.1)
        assert failed >= 1
        ok = sum(v for lb, v in p.metrics()["tideline_model_reloads_total"] if lb.get("outcome") == "ok")
        assert ok == 1
        r = p.v1({"instances": env.instances(5)})
        assert r.status_code == 200 and r.headers["x-model-version"] == "v2"
        assert r.json()["predictions"] == want["v2"]
        assert "sha256" in p.log.read_text()
    finally:
        env.registry.promote("v1", reason="test reset")
        assert p.stop() == 0


def test_kill_switch_answers_flat_and_keeps_logging_the_model(env: Env, tmp_path: Path) -> None:
    """Thrown in the registry, the kill switch reaches a running predictor on its next poll: every answer is a
    flat 0.0 (marked), the prediction log keeps the model's own predictions; lifted, the model answers again."""
    p = start(env, "--ref", "v1", "--reload-interval", "0.2", "--log-flush-seconds", "0.2", name="killswitch")
    try:
        want = env.expected("v1", 5)
        assert p.v1({"instances": env.instances(5)}).json()["predictions"] == want
        env.registry.set_kill_switch(True, reason="test: nothing passes the floors")
        wait_for(lambda: p.v1({"instances": env.instances(5)}).json().get("flat") is True, what="flat answers")
        r = p.v1({"instances": env.instances(5)})
        assert r.status_code == 200 and r.json()["predictions"] == [0.0] * 5 and r.headers["x-tideline-flat"] == "1"
        X = env.rows.iloc[:3]
        inputs = [{"name": c, "shape": [3], "datatype": "FP32", "data": [float(v) for v in X[c]]} for c in X.columns]
        r2 = p.v2({"inputs": inputs})
        assert r2.status_code == 200, r2.text
        assert r2.json()["outputs"][0]["data"] == [0.0] * 3 and r2.json()["parameters"]["flat"] is True
        assert [v for lb, v in p.metrics()["tideline_kill_switch"]] == [1.0]
        env.registry.set_kill_switch(False, reason="test: lifted")
        wait_for(lambda: "flat" not in p.v1({"instances": env.instances(5)}).json(), what="model answers")
        assert p.v1({"instances": env.instances(5)}).json()["predictions"] == want
        assert "kill switch ON" in p.log.read_text()
    finally:
        env.registry.set_kill_switch(False, reason="test reset")
        assert p.stop() == 0
    logged = read_predictions(env.registry, since=pd.Timestamp.now(tz="UTC") - pd.Timedelta(minutes=10))
    mine = logged.loc[logged["version"] == "v1", "prediction"].to_numpy()
    assert len(mine) and (mine != 0.0).all()  # the model's predictions, never the flat answers


@pytest.mark.slow
def test_broken_model_output_is_a_500(env: Env) -> None:
    p = start(env, "--ref", "v4", "--no-prediction-log", "--reload-interval", "0", name="broken")
    try:
        r = p.v1({"instances": env.instances(3)})
        assert r.status_code == 500 and "non-finite" in r.json()["error"]
        assert r.headers["x-model-version"] == "v4"
        codes = {lb["code"] for lb, _ in p.metrics()["tideline_request_errors_total"]}
        assert "500" in codes
    finally:
        p.stop()


@pytest.mark.slow
def test_chaos_fails_and_delays_a_share_of_predictions_and_the_log_is_flushed_on_shutdown(env: Env) -> None:
    t0 = pd.Timestamp.now(tz="UTC")
    p = start(env, "--ref", "v1", "--reload-interval", "0", "--log-flush-seconds", "3600",
              "--log-flush-rows", "100000", name="chaos", chaos="error_rate=0.5,delay_ms=40,seed=7")
    codes: dict[str, int] = {}
    try:
        for i in range(30):
            t = time.perf_counter()
            r = p.v1({"instances": env.instances(1)}, headers={"x-request-id": f"chaos-{i}"})
            assert time.perf_counter() - t >= 0.04
            codes[f"chaos-{i}"] = r.status_code
            if r.status_code == 500:
                assert "chaos" in r.json()["error"]
        assert set(codes.values()) == {200, 500} and 5 <= list(codes.values()).count(500) <= 25
    finally:
        assert p.stop() == 0
    # nothing was flushed before the SIGTERM (1 h / 100k rows); shutdown wrote every successful prediction
    logged = read_predictions(env.registry, since=t0)
    logged = logged[logged["request_id"].str.startswith("chaos-")]
    assert sorted(logged["request_id"]) == sorted(k for k, c in codes.items() if c == 200)


def test_chaos_parsing_is_strict() -> None:
    assert parse_chaos(None) is None and parse_chaos(" ") is None
    c = parse_chaos("error_rate=0.5,delay_ms=300")
    assert c is not None and c.error_rate == 0.5 and c.delay_ms == 300 and c.delay_rate == 1.0
    for bad in ("error_rate=2", "error_rate=x", "speed=1", "error_rate=0.1,error_rate=0.2", "delay_ms",
                "delay_ms=-1", "error_rate=nan", "error_rate=0.1,"):
        with pytest.raises(ConfigError):
            parse_chaos(bad)


@pytest.mark.slow
@pytest.mark.parametrize(("args", "chaos", "code", "fragment"), [
    (["--ref", "v99"], None, 6, "'v99' not found"),
    (["--ref", "candidate"], None, 6, "alias 'candidate' is not set"),
    (["--ref", "v3"], None, 8, "sha256"),
    (["--ref", "v1"], "error_rate=lots", 2, "TIDELINE_CHAOS"),
    (["--ref", "v1", "--max-rows", "0"], None, 2, "--max-rows"),
])
def test_startup_failures_are_one_line_and_non_zero(env: Env, args: list[str], chaos: str | None, code: int,
                                                    fragment: str) -> None:
    cmd = [sys.executable, "-m", "tideline.serving", "--registry", env.uri, "--http-port", "0", *args]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=60,
                       env=_env({"TIDELINE_CHAOS": chaos} if chaos else None))
    assert r.returncode == code, r.stderr[-2000:]
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("tideline-predictor: error:") and fragment in last, r.stderr[-2000:]
    assert "READY" not in r.stdout


@pytest.mark.slow
def test_unreachable_registry_refuses_to_start(tmp_path: Path) -> None:
    missing = (tmp_path / "nowhere").as_uri()
    r = subprocess.run([sys.executable, "-m", "tideline.serving", "--registry", missing, "--http-port", "0"],
                       capture_output=True, text=True, timeout=60, env=_env())
    assert r.returncode == 9 and "does not exist" in r.stderr.strip().splitlines()[-1]
    assert not (tmp_path / "nowhere").exists()


def test_read_predictions_of_an_empty_log_has_the_columns(tmp_path: Path) -> None:
    df = read_predictions(open_registry(tmp_path.as_uri()))
    assert list(df.columns) == list(COLUMNS) and df.empty
    assert np.issubdtype(df["prediction"].dtype, np.floating)


def _waiting(env: Env, ref: str) -> tuple[subprocess.Popen[str], str]:
    """A predictor started with --wait-for-model on ``ref`` (polling every 0.5 s); the process and its URL."""
    port = free_port()
    cmd = [sys.executable, "-m", "tideline.serving", "--registry", env.uri, "--http-port", str(port),
           "--ref", ref, "--reload-interval", "0.5", "--wait-for-model", "--no-prediction-log"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env())
    return proc, f"http://127.0.0.1:{port}"


@pytest.mark.slow
def test_wait_for_model_serves_unready_with_the_reason_and_loads_when_the_version_appears(env: Env) -> None:
    """--wait-for-model (the image and the chart): a version that cannot be loaded at start does not exit. The
    server answers, unready (readiness 503, every model request a 503 naming the reason, liveness 200), logs the
    reason on one line, and loads the version once it can: no crash loop that hides the cause."""
    alias = "candidate"  # unset in this module (the startup-failure test checks it), unset again after
    proc, base = _waiting(env, alias)
    try:
        def answers() -> bool:
            assert proc.poll() is None, proc.communicate()[1][-2000:]
            try:
                return httpx.get(f"{base}/v2/health/live", timeout=2).status_code == 200
            except httpx.TransportError:
                return False

        wait_for(answers, timeout=120, what="the unready predictor answering")
        ready = httpx.get(f"{base}/v2/health/ready", timeout=5)
        assert ready.status_code == 503 and f"alias '{alias}' is not set" in ready.json()["error"]
        assert httpx.get(f"{base}/v2/models/{MODEL}/ready", timeout=5).status_code == 503
        assert httpx.get(f"{base}/v2/models/{MODEL}", timeout=5).status_code == 503  # kserve would load here
        r = httpx.post(f"{base}/v1/models/{MODEL}:predict", json={"instances": env.instances(2)}, timeout=5)
        assert r.status_code == 503 and "not ready" in r.json()["error"] and r.headers["retry-after"] == "5"
        r = httpx.post(f"{base}/v2/models/{MODEL}/infer", json={"inputs": []}, timeout=5)
        assert r.status_code == 503

        env.registry.set_alias(alias, "v2", reason="test: the version appears")
        wait_for(lambda: httpx.get(f"{base}/v2/health/ready", timeout=5).status_code == 200, timeout=120,
                 what="ready after the alias was set")
        r = httpx.post(f"{base}/v1/models/{MODEL}:predict", json={"instances": env.instances(3)}, timeout=30)
        assert r.status_code == 200 and r.headers["x-model-version"] == "v2"
        assert np.allclose(r.json()["predictions"], env.expected("v2", 3))
    finally:
        proc.terminate()
        out, err = proc.communicate(timeout=60)
        env.registry.set_alias(alias, None, reason="test: cleanup")
    assert proc.returncode == 0, err[-2000:]
    assert "READY port=" in out  # announced once the version loaded
    reasons = [line for line in err.splitlines() if "not ready: cannot load" in line]
    assert len(reasons) == 1 and f"alias '{alias}' is not set" in reasons[0], err[-3000:]  # once, not per retry
    assert "Traceback" not in err


@pytest.mark.slow
def test_wait_for_model_never_serves_a_tampered_version(env: Env) -> None:
    proc, base = _waiting(env, "v3")
    try:
        def refused() -> bool:
            assert proc.poll() is None, proc.communicate()[1][-2000:]
            try:
                return httpx.get(f"{base}/v2/health/ready", timeout=2).status_code == 503
            except httpx.TransportError:
                return False

        wait_for(refused, timeout=120, what="the unready predictor answering")
        time.sleep(3)  # a few retries: still up, still unready
        r = httpx.post(f"{base}/v1/models/{MODEL}:predict", json={"instances": env.instances(2)}, timeout=5)
        assert r.status_code == 503 and "sha256" in r.json()["error"] and proc.poll() is None
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=60)
    lines = [line for line in err.splitlines() if "not ready: cannot load" in line]
    assert len(lines) == 1 and "IntegrityError" in lines[0] and "Traceback" not in err, err[-3000:]
