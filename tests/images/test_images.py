"""The three images, built and run for real (``make images-test``; ``pytest --images tests/images`` once built).

* The retraining pipeline with every task in the pipeline image (``kfp.local.DockerRunner``: host network, the
  image's user 10001 writing into a pipeline root this process made) decides as the subprocess runner does, with
  the registry on an S3 server on loopback (moto's server).
* The predictor image under the chart's security context (uid 10001, read-only root filesystem, tmpfs /tmp, no
  capabilities, no privilege escalation) loads a version from that S3 registry, answers v1 and v2 with the
  model's own predictions, hot-reloads a promotion, and stays up unready with a one-line reason when the store
  is unreachable, the version tampered or missing.
* A rollout through the local router with the candidate in a predictor container promotes a good candidate
  and rolls back a broken one.
* The controller image exits 2 with one line when there is no cluster.

The figures (run times, image sizes) go to ``.tideline/images-test.json`` for the README.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import httpx
import numpy as np
import pandas as pd
import pytest

from conftest import FAST_PARAMS, free_port, moto_server, wait_for
from tideline.config import FeatureConfig, load_settings
from tideline.containers import RESTRICTED
from tideline.data import synthetic_market
from tideline.features import build_dataset, feature_config_hash
from tideline.k8s.entrypoint import NO_CLUSTER
from tideline.models import load_model, make_model
from tideline.monitoring.feedback import outcomes_from_log
from tideline.registry import Registry, Status, open_registry
from tideline.rollout import machine as m
from tideline.rollout.backends.local import LocalBackend, container_predictor_factory, default_predictor_factory
from tideline.training.orchestration import run_local

ROOT = Path(__file__).resolve().parents[2]
VERSION = dict(line.split("=", 1) for line in (ROOT / "versions.env").read_text().splitlines()
               if line and not line.startswith("#"))["TIDELINE_VERSION"]
PIPELINE = f"ghcr.io/tideline/tideline:{VERSION}"
PREDICTOR = f"ghcr.io/tideline/tideline-predictor:{VERSION}"
CONTROLLER = f"ghcr.io/tideline/tideline-controller:{VERSION}"
DEPS = f"tideline-deps:{VERSION}"  # the dependency image the three start from
DOCKER = os.environ.get("DOCKER") or ("/usr/bin/docker" if Path("/usr/bin/docker").exists() else "docker")
LABEL = "tideline.io/images-test"
REPORT = ROOT / ".tideline" / "images-test.json"
MODEL = "tideline"

SYN = {"n_symbols": 3, "n_bars": 900, "seed": 7}
FAMILIES = ["lightgbm", "sklearn"]
PERMISSIVE = {"min_sharpe": -100.0, "min_trades": 0, "max_drawdown": 10.0, "require_significance": False,
              "min_deflated_sharpe": 0.0, "require_baseline": False, "require_folds_agree": False,
              "min_relative_improvement": -100.0, "key_metric_floor": 0.0}
COMPONENTS = {"ingest", "validate", "features", "drift-report", "train", "evaluate-and-select", "register", "gate",
              "request-rollout"}
# a container start copies the whole image with the vfs storage driver: minutes on a busy disk, not seconds
START_S = 600.0


def docker(*args: str, check: bool = True, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    r = subprocess.run([DOCKER, *args], capture_output=True, text=True, timeout=timeout)
    if check and r.returncode != 0:
        pytest.fail(f"docker {' '.join(args[:3])} ... failed ({r.returncode}): {r.stderr.strip()[-1500:]}")
    return r


# ----------------------------------------------------------------------------------------- session
@pytest.fixture(scope="session", autouse=True)
def images() -> Iterator[None]:
    if shutil.which(DOCKER) is None or docker("info", check=False).returncode != 0:
        pytest.fail(f"no container engine answers ({DOCKER} info); run: make images-test (it installs and starts one)")
    missing = [i for i in (PIPELINE, PREDICTOR, CONTROLLER) if docker("image", "inspect", i, check=False).returncode]
    if missing:
        pytest.fail(f"images not built: {', '.join(missing)}; run: make images-test (or make images-local first)")
    yield
    left = docker("ps", "-aq", "--filter", f"label={LABEL}", check=False).stdout.split()
    if left:
        docker("rm", "-f", *left, check=False)


@pytest.fixture(scope="session")
def report() -> Iterator[dict[str, Any]]:
    figures: dict[str, Any] = json.loads(REPORT.read_text()) if REPORT.is_file() else {}
    yield figures
    for image in (PIPELINE, PREDICTOR, CONTROLLER, DEPS):
        size = docker("image", "inspect", "-f", "{{.Size}}", image, check=False).stdout.strip()
        figures.setdefault("images", {})[image] = {"bytes": int(size)} if size.isdigit() else {}
    REPORT.parent.mkdir(parents=True, exist_ok=True)
    REPORT.write_text(json.dumps(figures, indent=1, sort_keys=True))


@pytest.fixture(scope="session")
def s3() -> Iterator[str]:
    """moto's S3 server on loopback; the containers reach it on the host network."""
    saved = os.environ.get("AWS_ENDPOINT_URL")
    with moto_server() as url:
        os.environ["AWS_ENDPOINT_URL"] = url
        try:
            yield url
        finally:
            if saved is None:
                os.environ.pop("AWS_ENDPOINT_URL", None)
            else:
                os.environ["AWS_ENDPOINT_URL"] = saved


def _bucket(url: str) -> str:
    name = f"images-{uuid.uuid4().hex[:10]}"
    boto3.client("s3", endpoint_url=url).create_bucket(Bucket=name)
    return name


# ----------------------------------------------------------------------------------------- the pipeline
@pytest.fixture(scope="session")
def pipeline_runs(s3: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The same pipeline, settings and market run twice: subprocess runner, then every task in the image."""
    runs: dict[str, Any] = {}
    for runner in ("subprocess", "docker"):
        tmp = tmp_path_factory.mktemp(runner)
        uri = f"s3://{_bucket(s3)}/models"
        s = load_settings(registry=uri, home=str(tmp / "home"),
                          training={"params": FAST_PARAMS, "families": FAMILIES},
                          evaluation={"n_splits": 2, "bootstrap_samples": 200}, policy=PERMISSIVE)
        t0 = time.perf_counter()
        summary = run_local(s, synthetic=SYN, runner=runner, rollout_mode="direct", reason=f"images-test {runner}")
        runs[runner] = {"summary": summary, "seconds": time.perf_counter() - t0, "uri": uri,
                        "registry": open_registry(uri, endpoint_url=s3)}
    return runs


def test_the_pipeline_in_its_image_decides_as_the_subprocess_runner(pipeline_runs: dict[str, Any],
                                                                     report: dict[str, Any]) -> None:
    sub, dock = pipeline_runs["subprocess"]["summary"], pipeline_runs["docker"]["summary"]
    assert sub["runner"] == "subprocess" and dock["runner"] == "docker"
    for summary in (sub, dock):
        assert {t.rsplit("/", 1)[-1] for t in summary["tasks"]} == COMPONENTS, summary["tasks"]
    # same candidates, same decision, same winner, promoted the same way
    assert dock["versions"].keys() == sub["versions"].keys() and "recalibrated" not in dock["versions"]
    assert dock["decision"] == sub["decision"] == "approved"
    assert dock["best"]["family"] == sub["best"]["family"]
    assert dock["promoted"] == dock["best"]["version"] and sub["promoted"] == sub["best"]["version"]
    # the same figures: same code, data and seeds in another process tree
    reg_s, reg_d = pipeline_runs["subprocess"]["registry"], pipeline_runs["docker"]["registry"]
    for family, version in dock["versions"].items():
        a, b = reg_s.get(sub["versions"][family]), reg_d.get(version)
        for key in ("sharpe", "directional_accuracy", "n_obs"):
            assert b.metrics[key] == pytest.approx(a.metrics[key], rel=1e-9, abs=1e-12), (family, key)
        assert b.data_hash == a.data_hash
    # every task ran as the image's user, in a pipeline root this process owns
    root = Path(dock["pipeline_root"])
    owners = {p.stat().st_uid for p in root.rglob("executor_output.json")}
    assert owners == {10001}, owners
    assert root.parent.stat().st_uid == os.getuid()
    report["pipeline"] = {
        runner: {"seconds": round(pipeline_runs[runner]["seconds"], 1), "decision": s["decision"],
                 "best": s["best"]["family"], "best_sharpe": round(s["best"]["sharpe"], 4),
                 "versions": len(s["versions"])}
        for runner, s in (("subprocess", sub), ("docker", dock))}


# ----------------------------------------------------------------------------------------- the predictor
def _run(image: str, *args: str, network: str = "host", env: dict[str, str] | None = None,
         extra: tuple[str, ...] = ()) -> str:
    """Start a detached container of ``image`` under the chart's security context; its id."""
    opts = ["run", "-d", "--label", LABEL, "--network", network, *RESTRICTED, *extra]
    for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION", "AWS_ENDPOINT_URL"):
        if k in (env or {}):
            opts += ["-e", f"{k}={env[k]}"]  # type: ignore[index]
        elif os.environ.get(k):
            opts += ["-e", k]
    return docker(*opts, image, *args).stdout.strip()


def _logs(cid: str) -> str:
    r = docker("logs", cid, check=False)
    return r.stdout + r.stderr


def _rows(registry: Registry, version: str, n: int) -> tuple[pd.DataFrame, list[float]]:
    """``n`` feature rows of the training market and what ``version`` predicts for them (loaded here)."""
    mv = registry.get(version)
    ds = build_dataset(synthetic_market(**SYN), FeatureConfig(**mv.feature_config))
    dest = registry.fetch(version, Path(f"/tmp/images-test-{uuid.uuid4().hex[:8]}"))
    try:
        model = load_model(dest)
    finally:
        shutil.rmtree(dest, ignore_errors=True)
    X = ds.X[model.columns].iloc[-n:].reset_index(drop=True)
    return X, [float(v) for v in model.predict(X)]


def _ready(base: str) -> int | None:
    try:
        return httpx.get(f"{base}/v2/health/ready", timeout=3).status_code
    except httpx.TransportError:
        return None


def test_the_predictor_image_serves_a_registry_version_under_the_chart_security_context(
        pipeline_runs: dict[str, Any], report: dict[str, Any]) -> None:
    run = pipeline_runs["docker"]
    reg: Registry = run["registry"]
    production = reg.aliases()["production"]
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    t0 = time.perf_counter()
    # the chart's arguments (ServingRuntime + InferenceService), the registry from TIDELINE_REGISTRY as there
    cid = _run(PREDICTOR, f"--http-port={port}", "--host=127.0.0.1", "--wait-for-model", "--reload-interval=1",
               "--name=tideline", "--ref=production", extra=("-e", f"TIDELINE_REGISTRY={run['uri']}"))
    try:
        wait_for(lambda: _ready(base) == 200, timeout=START_S, what="the predictor container ready")
        report.setdefault("predictor", {})["start_to_ready_s"] = round(time.perf_counter() - t0, 1)
        # the engine applied the chart's security context
        info = json.loads(docker("inspect", cid).stdout)[0]
        assert info["Config"]["User"] == "10001:10001" and info["HostConfig"]["ReadonlyRootfs"] is True
        assert info["HostConfig"]["CapDrop"] == ["ALL"] and "no-new-privileges" in info["HostConfig"]["SecurityOpt"]
        assert "/tmp" in info["HostConfig"]["Tmpfs"]
        assert docker("exec", cid, "id", "-u").stdout.strip() == "10001"
        wrote = docker("exec", cid, "sh", "-c", "touch /opt/venv/x", check=False)
        assert wrote.returncode != 0 and "Read-only file system" in wrote.stderr

        # v1 and v2 answer with the model's own predictions
        X, want = _rows(reg, production, 8)
        r = httpx.post(f"{base}/v1/models/{MODEL}:predict",
                       json={"instances": [{k: float(v) for k, v in row.items()} for row in X.to_dict("records")]},
                       timeout=30)
        assert r.status_code == 200 and r.headers["x-model-version"] == production, r.text
        assert np.allclose(r.json()["predictions"], want, rtol=1e-6, atol=1e-12)
        inputs = [{"name": c, "shape": [len(X)], "datatype": "FP64", "data": [float(v) for v in X[c]]}
                  for c in X.columns]
        r = httpx.post(f"{base}/v2/models/{MODEL}/infer", json={"inputs": inputs}, timeout=30)
        assert r.status_code == 200 and r.json()["model_version"] == production, r.text
        assert np.allclose(r.json()["outputs"][0]["data"], want, rtol=1e-6, atol=1e-12)

        # hot reload: a promotion in the registry is served without a restart
        other = next(v for f, v in run["summary"]["versions"].items() if v != production and f != "ensemble")
        reg.promote(other, reason="images-test: hot reload")

        def serves_other() -> bool:
            got = httpx.post(f"{base}/v1/models/{MODEL}:predict", json={"instances": [X.iloc[0].to_dict()]},
                             timeout=30)
            return got.status_code == 200 and got.headers["x-model-version"] == other

        wait_for(serves_other, timeout=120, what=f"the container serving {other} after the promotion")
        info = json.loads(docker("inspect", cid).stdout)[0]
        assert info["State"]["Running"] is True and info["RestartCount"] == 0
        assert "Traceback" not in _logs(cid)
    finally:
        docker("rm", "-f", cid, check=False)
        reg.rollback(reason="images-test: back to the pipeline's production")


def test_predictor_faults_leave_it_up_unready_with_one_line(pipeline_runs: dict[str, Any], s3: str) -> None:
    """Unreachable store, tampered version, missing model: the container keeps running (no crash loop), its
    readiness answers 503 with the reason, and its log says why on one line, once."""
    run = pipeline_runs["docker"]
    reg: Registry = run["registry"]
    production = reg.aliases()["production"]
    # a tampered version: production's files registered again, then one stored object changed behind the registry
    dest = reg.fetch(production, Path(f"/tmp/images-test-{uuid.uuid4().hex[:8]}"))
    mv = reg.get(production)
    tampered = reg.register(dest, {k: getattr(mv, k) for k in ("family", "features", "feature_config",
                                                                "feature_config_hash")}).version
    shutil.rmtree(dest, ignore_errors=True)
    bucket, prefix = run["uri"][len("s3://"):].split("/", 1)
    client = boto3.client("s3", endpoint_url=s3)
    key = next(o["Key"] for o in client.list_objects_v2(
        Bucket=bucket, Prefix=f"{prefix}/{reg.get(tampered).artifact_prefix}")["Contents"] if o["Key"].endswith("json"))
    body = client.get_object(Bucket=bucket, Key=key)["Body"].read()
    client.put_object(Bucket=bucket, Key=key, Body=body + b" ")

    cases = {  # name -> (port, arguments, environment, what the one line must say)
        "unreachable store": (free_port(), ["--ref=production"], {"AWS_ENDPOINT_URL": "http://127.0.0.1:9"},
                              "StorageUnavailable"),
        "tampered version": (free_port(), [f"--ref={tampered}"], {}, "sha256"),
        "missing model": (free_port(), ["--ref=v999"], {}, "'v999' not found"),
    }
    started = {}
    try:
        for name, (port, args, env, _) in cases.items():
            started[name] = _run(PREDICTOR, f"--http-port={port}", "--host=127.0.0.1", "--wait-for-model",
                                 "--reload-interval=1", f"--registry={run['uri']}", *args, env=env)
        for name, (port, _, _, why) in cases.items():
            base = f"http://127.0.0.1:{port}"
            wait_for(lambda b=base: _ready(b) is not None, timeout=START_S, what=f"{name}: the container answering")
            time.sleep(4)  # a few retries later
            r = httpx.get(f"{base}/v2/health/ready", timeout=5)
            assert r.status_code == 503 and why in r.json()["error"], (name, r.text)
            r = httpx.post(f"{base}/v1/models/{MODEL}:predict", json={"instances": [{"x": 1.0}]}, timeout=5)
            assert r.status_code == 503, (name, r.text)
            info = json.loads(docker("inspect", started[name]).stdout)[0]
            assert info["State"]["Running"] is True and info["RestartCount"] == 0, name
            log = _logs(started[name])
            lines = [line for line in log.splitlines() if "not ready: cannot load" in line]
            assert len(lines) == 1 and why in lines[0], (name, log[-3000:])
            assert "Traceback" not in log, (name, log[-3000:])
    finally:
        for cid in started.values():
            docker("rm", "-f", cid, check=False)


# ----------------------------------------------------------------------------------------- a rollout
@pytest.fixture(scope="module")
def rollout_world(s3: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """An S3 registry with production, a good candidate and a broken one (an infinite target scale: every
    prediction non-finite, so the predictor answers 500), and client bodies with their realized outcomes."""
    from test_rollout_e2e import client_bodies, market

    root = tmp_path_factory.mktemp("rollout")
    cfg = FeatureConfig()
    bars_path, ds, train = market(root)
    uri = f"s3://{_bucket(s3)}/models"
    reg = open_registry(uri, endpoint_url=s3)
    meta = {"family": "lightgbm", "feature_config": cfg.model_dump(), "feature_config_hash": feature_config_hash(cfg)}
    versions: dict[str, str] = {}
    columns: list[str] = []
    for key, seed, lr in (("prod", 1, 0.05), ("good", 2, 0.1)):
        mdl = make_model("lightgbm", seed=seed, params={**FAST_PARAMS["lightgbm"], "learning_rate": lr}, n_threads=1)
        mdl.fit(ds.X[train], ds.y[train], ds.spec)
        mdl.save(root / key)
        versions[key] = reg.register(root / key, {**meta, "features": mdl.columns}).version
        columns = list(mdl.columns)
    shutil.copytree(root / "prod", root / "broken")
    mj = json.loads((root / "broken" / "model.json").read_text())
    mj["target_scaler"]["scale"] = float("inf")
    (root / "broken" / "model.json").write_text(json.dumps(mj))
    versions["broken"] = reg.register(root / "broken", {**meta, "features": columns}).version
    reg.promote(versions["prod"], reason="images-test rollout start")
    return {"uri": uri, "registry": reg, "bars": bars_path, "bodies": client_bodies(ds, train, columns),
            "versions": versions, "root": root}


def test_a_rollout_with_the_candidate_in_a_container_promotes_a_good_one_and_rolls_back_a_broken_one(
        rollout_world: dict[str, Any], report: dict[str, Any]) -> None:
    from test_rollout_e2e import Monitor, Serving, Traffic, run_rollout, spec

    w = rollout_world
    reg: Registry = w["registry"]
    local = default_predictor_factory(w["uri"], MODEL, extra_args=["--log-flush-seconds", "0.5"])
    contained = container_predictor_factory(PREDICTOR, w["uri"], MODEL, docker=DOCKER,
                                            extra_args=["--log-flush-seconds", "0.5"])

    started: list[tuple[str, str, str]] = []

    def factory(version: str, role: str) -> list[str]:  # production here, the candidate in its image
        argv = local(version, role) if role == "active" else contained(version, role)
        started.append((version, role, argv[0]))
        return argv

    backend = LocalBackend(reg, MODEL, predictor_factory=factory, home=w["root"] / "home", ready_timeout=START_S,
                           outcomes=outcomes_from_log(reg, str(w["bars"]), since=pd.Timestamp.now(tz="UTC")))
    backend.start_serving(reg.aliases()["production"], port=0)
    port = int(backend.router_url.rsplit(":", 1)[1])
    traffic, monitor = Traffic(port, w["bodies"]), Monitor(port)
    traffic.start()
    monitor.start()
    sv = Serving(backend, port, traffic, monitor)
    try:
        prod, bad, good = w["versions"]["prod"], w["versions"]["broken"], w["versions"]["good"]
        t0 = time.perf_counter()
        status, seen = run_rollout(sv, spec(bad, prod, shadow_s=0.0), reg)
        assert status.phase == m.Phase.ROLLED_BACK and "error rate" in status.message, (status.message, seen)
        assert reg.aliases()["production"] == prod and reg.status(bad) == Status.RETIRED
        t1 = time.perf_counter()
        status, seen = run_rollout(sv, spec(good, prod), reg)
        assert status.phase == m.Phase.PROMOTED, (status.message, seen)
        assert [w_ for p, w_ in seen if p == "Canary"] == [10, 25, 50], seen
        assert reg.aliases()["production"] == good and reg.aliases()["previous"] == prod
        traffic.finish()
        monitor.finish()
        traffic.assert_clean()  # no client saw a 5xx: the broken candidate's 500s were answered by production
        candidates = {(v, exe) for v, role, exe in started if role != "active"}
        assert candidates == {(bad, DOCKER), (good, DOCKER)}, started  # both candidates ran in the image
        assert not monitor.problems, monitor.problems[:3]
        report["rollout"] = {"rolled_back_s": round(t1 - t0, 1), "promoted_s": round(time.perf_counter() - t1, 1)}
    finally:
        traffic.finish()
        monitor.finish()
        backend.shutdown()
        backend.close()
        left = docker("ps", "-aq", "--filter", f"label=tideline.io/predictor={MODEL}", check=False).stdout.split()
        if left:
            docker("rm", "-f", *left, check=False)


# ----------------------------------------------------------------------------------------- the controller
def test_the_controller_image_exits_2_with_one_line_without_a_cluster() -> None:
    r = docker("run", "--rm", "--label", LABEL, "--network", "none", *RESTRICTED, CONTROLLER, check=False)
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    assert r.stderr.strip() == NO_CLUSTER and r.stdout == "", r.stderr
