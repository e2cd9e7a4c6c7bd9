"""The ModelRollout CRD: a valid, structural CustomResourceDefinition whose schema accepts good rollouts and
rejects bad ones (unknown fields count as errors here: the API server would silently prune them)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from kube_doubles import SchemaViolation, validate

CRD_PATH = Path(__file__).resolve().parents[1] / "manifests" / "crds" / "modelrollouts.tideline.io.yaml"


@pytest.fixture(scope="module")
def crd() -> dict[str, Any]:
    return yaml.safe_load(CRD_PATH.read_text())


@pytest.fixture(scope="module")
def schema(crd: dict[str, Any]) -> dict[str, Any]:
    return crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


def strict(node: Any) -> Any:
    """The CRD schema as JSON Schema (draft 4, like OpenAPI 3.0's boolean exclusiveMinimum), closed:
    ``additionalProperties: false`` wherever properties are listed; ``nullable`` -> a "null" type."""
    if isinstance(node, list):
        return [strict(x) for x in node]
    if not isinstance(node, dict):
        return node
    out = {k: strict(v) for k, v in node.items() if k != "nullable"}
    if "properties" in node:
        out.setdefault("additionalProperties", False)
    if node.get("nullable") and "type" in node:
        out["type"] = [node["type"], "null"]
    return out


def check(schema: dict[str, Any], obj: dict[str, Any]) -> None:
    jsonschema.Draft4Validator(strict(schema)).validate(obj)


def _walk(node: Any, path: str = "$") -> list[tuple[str, dict[str, Any]]]:
    out = []
    if isinstance(node, dict):
        out.append((path, node))
        for k, v in (node.get("properties") or {}).items():
            out += _walk(v, f"{path}.{k}")
        if isinstance(node.get("items"), dict):
            out += _walk(node["items"], f"{path}[]")
    return out


# -- the CRD itself -------------------------------------------------------------------------------
def test_crd_is_a_valid_custom_resource_definition(crd: dict[str, Any]) -> None:
    # strict walk over the kubernetes client's models (V1CustomResourceDefinition, V1JSONSchemaProps, ...)
    validate(crd, "V1CustomResourceDefinition")
    spec = crd["spec"]
    assert crd["metadata"]["name"] == f"{spec['names']['plural']}.{spec['group']}" == "modelrollouts.tideline.io"
    assert spec["scope"] == "Namespaced"
    assert spec["names"]["kind"] == "ModelRollout" and spec["names"]["shortNames"] == ["mro"]
    (v,) = spec["versions"]
    assert v["name"] == "v1alpha1" and v["served"] and v["storage"]
    assert v["subresources"] == {"status": {}}
    cols = {c["name"]: c for c in v["additionalPrinterColumns"]}
    assert list(cols) == ["Phase", "Weight", "Candidate", "Age"]
    assert cols["Age"]["jsonPath"] == ".metadata.creationTimestamp" and cols["Age"]["type"] == "date"


def test_validator_catches_a_malformed_crd(crd: dict[str, Any]) -> None:
    bad = copy.deepcopy(crd)
    bad["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["typo"] = "object"
    with pytest.raises(SchemaViolation, match="unknown field 'typo'"):
        validate(bad, "V1CustomResourceDefinition")
    bad = copy.deepcopy(crd)
    bad["spec"]["versions"][0]["served"] = "yes"
    with pytest.raises(SchemaViolation, match="expected bool"):
        validate(bad, "V1CustomResourceDefinition")


def test_schema_is_structural_and_closed(schema: dict[str, Any]) -> None:
    nodes = _walk(schema)
    assert len(nodes) > 50

    def keys(n: Any) -> set[str]:
        if isinstance(n, dict):
            return set(n) | set().union(*(keys(v) for v in n.values()))
        if isinstance(n, list):
            return set().union(*(keys(v) for v in n)) if n else set()
        return set()

    assert "x-kubernetes-preserve-unknown-fields" not in keys(schema)
    for path, node in nodes:
        assert "type" in node, f"{path} has no type (structural schemas need one everywhere)"
        assert node.get("uniqueItems") is not True, path  # forbidden in structural schemas
        if node["type"] == "object" and path not in ("$.metadata",):
            assert node.get("properties"), f"{path} is an open object"
        if node["type"] == "array":
            assert isinstance(node.get("items"), dict), f"{path} has no items schema"
        for key in ("default",):
            if key in node:  # a default must satisfy its own schema
                jsonschema.Draft4Validator(strict(node)).validate(node[key])
    assert set(schema["properties"]["metadata"]) == {"type"}  # metadata stays the API server's


def test_printer_columns_point_at_schema_fields(crd: dict[str, Any], schema: dict[str, Any]) -> None:
    for col in crd["spec"]["versions"][0]["additionalPrinterColumns"]:
        parts = col["jsonPath"].lstrip(".").split(".")
        if parts[0] == "metadata":
            continue
        node = schema
        for p in parts:
            node = node["properties"][p]
        assert {"string": "string", "integer": "integer"}[col["type"]] == node["type"]


def test_status_enums_match_the_state_machine(schema: dict[str, Any]) -> None:
    from tideline.rollout.machine import Phase

    status = schema["properties"]["status"]["properties"]
    assert status["phase"]["enum"] == [p.value for p in Phase]
    assert status["lastAnalyses"]["items"]["properties"]["verdict"]["enum"] == ["pass", "fail", "inconclusive"]


# -- sample objects --------------------------------------------------------------------------------
MINIMAL = {
    "apiVersion": "tideline.io/v1alpha1",
    "kind": "ModelRollout",
    "metadata": {"name": "gbm-v7", "namespace": "trading"},
    "spec": {"targetRef": "tideline", "candidate": "v7"},
}

FULL = {
    **MINIMAL,
    "spec": {
        "targetRef": "tideline",
        "candidate": "v7",
        "baseline": "v6",
        "registry": "s3://tideline-models/registry",
        "mode": "RawDeployment",
        "metricsSource": "http://prometheus-operated.monitoring:9090",
        "strategy": {"shadow": {"minDurationSeconds": 900, "minLabelledSamples": 200},
                     "canary": {"steps": [10, 25, 50, 100]}},
        "analysis": {"intervalSeconds": 60, "failureLimit": 2, "maxInconclusive": 20,
                     "thresholds": {"maxErrorRate": 0.01, "maxP99LatencyMs": 250, "accuracyMargin": 0.02,
                                    "maxKS": 0.25, "maxPredictionDivergence": 0.35, "minRequests": 20,
                                    "minLabelled": 50}},
    },
    "status": {
        "phase": "Canary", "weight": 25, "step": 1, "failures": 0, "inconclusive": 0,
        "message": "canary passed at 10%; now 25%", "candidate": "v7", "baseline": "v6",
        "startedAt": 1700000000.0, "phaseSince": 1700000900.5, "lastAnalysisAt": 1700000900.5,
        "machineGeneration": 3, "appliedGeneration": 3, "observedGeneration": 1,
        "lastAnalyses": [{"time": "2023-11-14T22:28:20.500000Z", "at": 1700000900.5, "verdict": "pass",
                          "reasons": ["error rate 0.00% <= 1.00% (0/120)"], "phase": "Canary", "weight": 10,
                          "labelled": 240, "checks": [
                              {"name": "error_rate", "value": 0.0, "threshold": 0.01, "passed": True,
                               "reason": "ok"},
                              {"name": "directional_accuracy", "value": None, "threshold": -0.02,
                               "passed": None, "reason": "too few"}]}],
        "events": [{"time": "2023-11-14T22:13:20Z", "message": "shadowing v7 next to v6"}],
        "conditions": [{"type": "Progressing", "status": "True", "reason": "Canary", "message": "",
                        "lastTransitionTime": "2023-11-14T22:28:20Z"}],
    },
}


@pytest.mark.parametrize("obj", [MINIMAL, FULL], ids=["minimal", "full"])
def test_good_samples_validate(schema: dict[str, Any], obj: dict[str, Any]) -> None:
    check(schema, obj)


def _mutate(path: str, value: Any, *, delete: bool = False) -> dict[str, Any]:
    obj = copy.deepcopy(FULL)
    *parents, last = path.split(".")
    node: Any = obj
    for p in parents:
        node = node[int(p)] if isinstance(node, list) else node[p]
    if delete:
        del node[last]
    elif isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value
    return obj


BAD = {
    "unknown spec field": _mutate("spec.replicas", 3),
    "unknown nested field": _mutate("spec.strategy.canary.stepWeight", 10),
    "unknown status field": _mutate("status.kopf", {"progress": {}}),
    "bad mode enum": _mutate("spec.mode", "Knative"),
    "bad phase enum": _mutate("status.phase", "Paused"),
    "weight 150": _mutate("status.weight", 150),
    "negative failures": _mutate("status.failures", -1),
    "step of 0%": _mutate("spec.strategy.canary.steps", [0, 50, 100]),
    "step over 100%": _mutate("spec.strategy.canary.steps", [10, 101]),
    "no steps": _mutate("spec.strategy.canary.steps", []),
    "missing candidate": _mutate("spec.candidate", None, delete=True),
    "candidate not a version": _mutate("spec.candidate", "latest"),
    "interval below 5s": _mutate("spec.analysis.intervalSeconds", 1),
    "failureLimit 0": _mutate("spec.analysis.failureLimit", 0),
    "error rate above 1": _mutate("spec.analysis.thresholds.maxErrorRate", 1.5),
    "maxKS of 0": _mutate("spec.analysis.thresholds.maxKS", 0),
    "string where a number goes": _mutate("spec.analysis.thresholds.maxP99LatencyMs", "250ms"),
    "bad verdict": _mutate("status.lastAnalyses.0.verdict", "PASS"),
    "analysis without time": _mutate("status.lastAnalyses.0.time", None, delete=True),
    "bad metrics source": _mutate("spec.metricsSource", "prometheus:9090"),
    "bad condition status": _mutate("status.conditions.0.status", "yes"),
}


@pytest.mark.parametrize("name", list(BAD))
def test_bad_samples_are_rejected(schema: dict[str, Any], name: str) -> None:
    with pytest.raises(jsonschema.ValidationError):
        check(schema, BAD[name])
