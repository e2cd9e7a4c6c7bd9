"""The Argo CronWorkflows in manifests/cronworkflows: strictly valid against hera's Argo models (v4 form),
in sync with their generator, with valid crons, timezones and a CLI command line the CLI really accepts.

hera's pydantic models ignore unknown fields (and accept Python field names next to the camelCase
aliases), so a misspelled key would pass ``model_validate`` silently and then be dropped or refused by
the cluster. ``strict_errors`` walks the model classes and rejects every key that is not a declared
field's wire name, recursively.
"""

from __future__ import annotations

import copy
import enum
import importlib.util
import re
import types
import typing
import zoneinfo
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel, RootModel, TypeAdapter
from pydantic import ValidationError as PydanticValidationError

hera_models = pytest.importorskip("hera.workflows.models")

ROOT = Path(__file__).resolve().parents[1]
CRON_DIR = ROOT / "manifests" / "cronworkflows"
MANIFESTS = sorted(CRON_DIR.glob("*.yaml"))
IMAGE = "ghcr.io/tideline/tideline:0.1.0"


# ---- strict structural validation against the model classes ------------------------------------------
def strict_errors(value: Any, annotation: Any, path: str = "$") -> list[str]:
    """Every place where ``value`` does not fit ``annotation`` exactly (unknown keys included)."""
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return strict_errors(value, typing.get_args(annotation)[0], path)
    if annotation is Any or annotation is object:
        return []
    if origin in (typing.Union, types.UnionType):
        arms = typing.get_args(annotation)
        if value is None:
            return [] if type(None) in arms else [f"{path}: null not allowed"]
        best: list[str] | None = None
        for arm in arms:
            if arm is type(None):
                continue
            errs = strict_errors(value, arm, path)
            if not errs:
                return []
            if best is None or len(errs) < len(best):
                best = errs
        return best or [f"{path}: no union member fits"]
    if value is None:
        return [f"{path}: null not allowed"]
    if origin is list:
        if not isinstance(value, list):
            return [f"{path}: expected a list, got {type(value).__name__}"]
        (item,) = typing.get_args(annotation) or (Any,)
        return [e for i, v in enumerate(value) for e in strict_errors(v, item, f"{path}[{i}]")]
    if origin is dict:
        if not isinstance(value, dict):
            return [f"{path}: expected a mapping, got {type(value).__name__}"]
        _, vt = typing.get_args(annotation) or (Any, Any)
        return [e for k, v in value.items() for e in strict_errors(v, vt, f"{path}.{k}")]
    if origin is typing.Literal:
        allowed = typing.get_args(annotation)
        return [] if value in allowed else [f"{path}: {value!r} not one of {allowed}"]
    if isinstance(annotation, type) and issubclass(annotation, RootModel):
        return strict_errors(value, annotation.model_fields["root"].annotation, path)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        if not isinstance(value, dict):
            return [f"{path}: expected a {annotation.__name__} mapping, got {type(value).__name__}"]
        fields = {(f.alias or name): f for name, f in annotation.model_fields.items()}
        errs = [f"{path}.{k}: unknown field of {annotation.__name__}" for k in value if k not in fields]
        errs += [f"{path}.{k}: required field of {annotation.__name__} missing"
                 for k, f in fields.items() if f.is_required() and k not in value]
        for k, v in value.items():
            if k in fields:
                errs += strict_errors(v, fields[k].annotation, f"{path}.{k}")
        return errs
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        return [] if value in {m.value for m in annotation} else [f"{path}: {value!r} not a {annotation.__name__}"]
    if annotation is bool:
        return [] if isinstance(value, bool) else [f"{path}: expected a boolean, got {value!r}"]
    if annotation is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
        return [] if ok else [f"{path}: expected an int, got {value!r}"]
    if annotation is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        return [] if ok else [f"{path}: expected a number, got {value!r}"]
    if annotation is str:
        return [] if isinstance(value, str) else [f"{path}: expected a string, got {value!r}"]
    try:  # anything else (datetimes, constrained strings): pydantic itself, strictly
        TypeAdapter(annotation).validate_python(value, strict=True)
    except PydanticValidationError as e:
        return [f"{path}: {e.errors()[0]['msg']}"]
    return []


def validate_cron_workflow(doc: Any) -> list[str]:
    errs = strict_errors(doc, hera_models.CronWorkflow)
    if not errs:
        try:
            hera_models.CronWorkflow.model_validate(doc)
        except PydanticValidationError as e:
            errs.append(f"hera model: {e}")
    return errs


# ---- cron expressions (Argo: standard 5 fields) ---------------------------------------------------------
_NAMES = {
    3: {m: i + 1 for i, m in enumerate("JAN FEB MAR APR MAY JUN JUL AUG SEP OCT NOV DEC".split())},
    4: {d: i for i, d in enumerate("SUN MON TUE WED THU FRI SAT".split())},
}
_RANGES = [(0, 59), (0, 23), (1, 31), (1, 12), (0, 7)]
_ITEM = re.compile(r"^(\*|[0-9A-Za-z]+(?:-[0-9A-Za-z]+)?)(?:/([0-9]+))?$")


def expand_cron(expr: str) -> list[set[int]]:
    """The value sets of a 5-field cron (minute hour day-of-month month day-of-week); ValueError if bad.

    Day-of-week 7 is folded onto 0 (Sunday)."""
    fields = expr.split()
    if len(fields) != 5:
        raise ValueError(f"{expr!r}: a cron needs 5 fields, got {len(fields)}")
    out = []
    for pos, (field, (lo, hi)) in enumerate(zip(fields, _RANGES, strict=True)):
        values: set[int] = set()
        for item in field.split(","):
            m = _ITEM.match(item)
            if not m:
                raise ValueError(f"{expr!r}: bad item {item!r}")

            def num(tok: str, pos: int = pos) -> int:
                v = _NAMES.get(pos, {}).get(tok.upper()) if not tok.isdigit() else int(tok)
                if v is None:
                    raise ValueError(f"{expr!r}: bad value {tok!r}")
                return v

            if m.group(1) == "*":
                a, b = lo, hi
            elif "-" in m.group(1):
                a, b = (num(t) for t in m.group(1).split("-"))
            else:
                a = b = num(m.group(1))
                if m.group(2):
                    b = hi
            step = int(m.group(2) or 1)
            if not (lo <= a <= hi and lo <= b <= hi and a <= b and step >= 1):
                raise ValueError(f"{expr!r}: {item!r} outside {lo}-{hi}")
            values.update(range(a, b + 1, step))
        if pos == 4:
            values = {0 if v == 7 else v for v in values}
        out.append(values)
    return out


def market_hours_hits(expr: str) -> list[str]:
    """Firing times on a weekday between 09:30 and 16:00 (in the workflow's timezone)."""
    minutes, hours, dom, _month, dow = expand_cron(expr)
    days = set(range(7)) if dom != set(range(1, 32)) else dow  # a restricted day-of-month ORs with dow
    return [f"day {d} {h:02d}:{m:02d}" for d in sorted(days & {1, 2, 3, 4, 5}) for h in sorted(hours)
            for m in sorted(minutes) if (9, 30) <= (h, m) <= (16, 0)]


def test_cron_parser() -> None:
    assert expand_cron("30 17 * * *")[:2] == [{30}, {17}]
    assert expand_cron("0 22 * * 1-5")[4] == {1, 2, 3, 4, 5}
    assert expand_cron("*/15 0 1 JAN sun,7")[0] == {0, 15, 30, 45}
    assert expand_cron("0 12 * * 0,6")[4] == {0, 6}
    for bad in ["0 24 * * *", "60 1 * * *", "* * * *", "0 0 0 * *", "0 0 * 13 *", "0 0 * * 8", "a b c d e",
                "@daily", "0 0 * * 1-", "5-1 * * * *"]:
        with pytest.raises(ValueError):
            expand_cron(bad)
    assert market_hours_hits("0 22 * * 1-5") == []
    assert market_hours_hits("0 10 * * 1-5") and market_hours_hits("30 9 * * 3")
    assert market_hours_hits("0 12 1 * 6")  # the 1st of a month can be a weekday
    assert not market_hours_hits("0 12 * * 0,6")


# ---- the manifests -------------------------------------------------------------------------------------
def load(path: Path) -> dict[str, Any]:
    docs = list(yaml.safe_load_all(path.read_text(encoding="utf-8")))
    assert len(docs) == 1, f"{path.name}: one document per file"
    return docs[0]


def test_the_three_manifests_exist() -> None:
    assert {p.name for p in MANIFESTS} == {
        "trigger-check-daily.yaml", "retrain-weekly.yaml", "trigger-check-off-hours.yaml"}


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_strictly_valid_argo_v4(path: Path) -> None:
    doc = load(path)
    assert validate_cron_workflow(doc) == []
    assert doc["apiVersion"] == "argoproj.io/v1alpha1" and doc["kind"] == "CronWorkflow"
    assert doc["metadata"]["name"] and doc["metadata"]["namespace"] == "kubeflow"  # where KFP's Argo watches
    spec = doc["spec"]
    assert "schedule" not in spec
    assert isinstance(spec["schedules"], list) and spec["schedules"]
    for cron in spec["schedules"]:
        expand_cron(cron)
    zoneinfo.ZoneInfo(spec["timezone"])  # a real IANA zone
    assert spec["concurrencyPolicy"] == "Forbid"
    assert spec["startingDeadlineSeconds"] > 0
    assert spec["successfulJobsHistoryLimit"] >= 1 and spec["failedJobsHistoryLimit"] >= 1


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_pod_is_locked_down_and_gets_s3_credentials_from_a_secret(path: Path) -> None:
    ws = load(path)["spec"]["workflowSpec"]
    assert ws["serviceAccountName"] and ws["securityContext"]["runAsNonRoot"] is True
    assert ws["securityContext"]["runAsUser"] != 0
    (tpl,) = [t for t in ws["templates"] if t["name"] == ws["entrypoint"]]
    c = tpl["container"]
    assert c["image"] == IMAGE
    assert c["securityContext"]["runAsNonRoot"] is True and c["securityContext"]["allowPrivilegeEscalation"] is False
    for kind in ("requests", "limits"):
        assert set(c["resources"][kind]) == {"cpu", "memory"}
    env = {e["name"]: e for e in c["env"]}
    assert env["TIDELINE_REGISTRY"]["value"].startswith("s3://")
    assert env["AWS_ENDPOINT_URL"]["value"] == "http://minio.tideline.svc:9000"
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        ref = env[key]["valueFrom"]["secretKeyRef"]
        assert ref["name"] and ref["key"] and "value" not in env[key]


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_command_line_is_accepted_by_the_cli(path: Path) -> None:
    """The container runs one tick of the loop, ``tideline loop --once ...``, and the CLI parses it."""
    import typer

    from tideline.cli.loop import loop_app

    c = load(path)["spec"]["workflowSpec"]["templates"][0]["container"]
    assert c["command"] == ["tideline"] and c["args"][:2] == ["loop", "--once"]
    cmd = typer.main.get_command(loop_app)
    params = cmd.make_context("loop", list(c["args"][1:])).params
    assert params["once"] is True and params["as_json"] is True and params["wait"] == 60
    assert params["force"] is (path.name == "retrain-weekly.yaml")
    with pytest.raises(Exception, match="No such option"):  # the same check does catch a wrong option
        cmd.make_context("loop", [*c["args"][1:], "--no-such-option"])


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_the_environment_configures_the_loop_on_a_cluster(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The container's TIDELINE_* variables are real settings (an unknown one fails: extra="forbid"): bars
    from S3, retrains on Kubeflow Pipelines, rollouts as ModelRollouts in the namespace, the S3 registry."""
    from tideline.config import load_settings

    c = load(path)["spec"]["workflowSpec"]["templates"][0]["container"]
    for e in c["env"]:
        if "value" in e:
            monkeypatch.setenv(e["name"], e["value"])
    s = load_settings()
    assert s.registry_uri() == "s3://tideline-models/registry" and s.loop.bars == "s3://tideline-data/bars/"
    assert (s.loop.pipeline, s.loop.kfp_host) == ("kfp", "http://ml-pipeline.kubeflow.svc:8888")
    assert (s.loop.rollouts, s.loop.namespace) == ("kubernetes", "tideline")
    assert s.loop.rollout.mode == "RawDeployment" and s.loop.rollout.metrics_source == "pods"
    assert {e["name"] for e in c["env"] if "valueFrom" in e} == {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}


def test_off_hours_schedules_avoid_market_hours() -> None:
    spec = load(CRON_DIR / "trigger-check-off-hours.yaml")["spec"]
    assert spec["timezone"] == "America/New_York"  # market hours are New York hours
    assert len(spec["schedules"]) >= 2
    for cron in spec["schedules"]:
        assert market_hours_hits(cron) == [], cron
    daily = load(CRON_DIR / "trigger-check-daily.yaml")["spec"]
    assert all(len(expand_cron(c)[4]) == 7 for c in daily["schedules"])  # every day


def test_manifests_in_sync_with_generator() -> None:
    spec = importlib.util.spec_from_file_location("cron_generate", CRON_DIR / "generate.py")
    assert spec and spec.loader
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    rendered = gen.render()
    assert set(rendered) == {p.name for p in MANIFESTS}
    for name, text in rendered.items():
        assert (CRON_DIR / name).read_text(encoding="utf-8") == text, (
            f"{name} is out of date: run .venv/bin/python manifests/cronworkflows/generate.py")


# ---- negative cases: the strict check catches what hera's own validation lets through ------------------
@pytest.fixture
def daily() -> dict[str, Any]:
    return load(CRON_DIR / "trigger-check-daily.yaml")


def _mutated(doc: dict[str, Any], fn) -> dict[str, Any]:  # noqa: ANN001
    d = copy.deepcopy(doc)
    fn(d)
    return d


def test_misspelled_field_rejected(daily: dict[str, Any]) -> None:
    bad = _mutated(daily, lambda d: d["spec"].update(concurrencyPolicyy=d["spec"].pop("concurrencyPolicy")))
    hera_models.CronWorkflow.model_validate(bad)  # hera alone accepts it (extra fields are ignored) ...
    assert validate_cron_workflow(bad) == ["$.spec.concurrencyPolicyy: unknown field of CronWorkflowSpec"]


def test_singular_schedule_rejected(daily: dict[str, Any]) -> None:
    replaced = _mutated(daily, lambda d: d["spec"].update(schedule=d["spec"].pop("schedules")[0]))
    errs = validate_cron_workflow(replaced)
    assert "$.spec.schedule: unknown field of CronWorkflowSpec" in errs
    assert "$.spec.schedules: required field of CronWorkflowSpec missing" in errs
    both = _mutated(daily, lambda d: d["spec"].update(schedule="0 1 * * *"))
    assert validate_cron_workflow(both) == ["$.spec.schedule: unknown field of CronWorkflowSpec"]


def test_nested_typos_python_names_and_wrong_types_rejected(daily: dict[str, Any]) -> None:
    def container(d: dict[str, Any]) -> dict[str, Any]:
        return d["spec"]["workflowSpec"]["templates"][0]["container"]

    deep = _mutated(daily, lambda d: container(d).update(resource=container(d).pop("resources")))
    assert validate_cron_workflow(deep) == [
        "$.spec.workflowSpec.templates[0].container.resource: unknown field of Container"]
    i = next(i for i, e in enumerate(container(daily)["env"]) if "valueFrom" in e)
    env = _mutated(daily, lambda d: container(d)["env"][i]["valueFrom"].update(
        secretRef=container(d)["env"][i]["valueFrom"].pop("secretKeyRef")))
    assert validate_cron_workflow(env) == [
        f"$.spec.workflowSpec.templates[0].container.env[{i}].valueFrom.secretRef: unknown field of EnvVarSource"]
    pyname = _mutated(daily, lambda d: d["spec"].update(
        starting_deadline_seconds=d["spec"].pop("startingDeadlineSeconds")))
    assert validate_cron_workflow(pyname) == [
        "$.spec.starting_deadline_seconds: unknown field of CronWorkflowSpec"]
    wrong = _mutated(daily, lambda d: d["spec"].update(schedules="30 17 * * *"))
    assert validate_cron_workflow(wrong) == ["$.spec.schedules: expected a list, got str"]
    wrong = _mutated(daily, lambda d: d["spec"].update(startingDeadlineSeconds="900"))
    assert validate_cron_workflow(wrong) == ["$.spec.startingDeadlineSeconds: expected an int, got '900'"]
