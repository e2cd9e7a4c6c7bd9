"""KServe traffic backend: the machine's actions as patches of one InferenceService; raw metrics.

Every patch is a JSON merge patch (``application/merge-patch+json``) on ``serving.kserve.io/v1beta1``
``inferenceservices``, computed from the live object: lists it touches (args, ``spec.canary``) are written
back whole, it carries the ``metadata.resourceVersion`` it was computed from (a concurrent writer makes it
fail with 409 rather than be overwritten), and an action whose result is already live sends nothing.
The predictor is ``spec.predictor.model`` (a ServingRuntime running ``tideline-predictor``): a version is
its ``storageUri`` (the registry's ``s3://bucket/prefix/artifacts/<uuid>``, what KServe's storage
initializer downloads) plus ``--ref=<vN>`` in ``model.args`` (the manifest the predictor verifies).

Serverless (Knative) mode — KServe's revision canary on ``spec.predictor.canaryTrafficPercent``:
  SetShadow(v)     ``model.args`` gets ``--shadow-ref=v`` (or loses it); with a leftover
                   ``canaryTrafficPercent`` (a past rollback leaves 0) also ``canaryTrafficPercent: null``,
                   so the revision carrying the shadow slot takes the traffic.
  DeployCanary(v)  ``model.storageUri``/``--ref`` of v (no shadow) and ``canaryTrafficPercent: 0``: v is
                   the latest revision with no traffic; the last rolled-out (baseline) revision keeps 100%.
  SetWeight(N)     ``canaryTrafficPercent: N``.
  SetActive(v)     ``canaryTrafficPercent: null`` (removed) with v's storageUri: v takes 100%.
  RemoveCanary     ``canaryTrafficPercent: 0`` and the baseline's storageUri/``--ref`` restored: the
                   rolled-out baseline revision keeps every request and the revision built from the
                   restored spec is the baseline again, never the candidate.

RawDeployment (standard) mode — ``spec.canary[]``. The kserve 0.21 SDK has it:
``V1beta1InferenceServiceSpec.canary: list[V1beta1CanarySpec]`` with ``predictor`` (a full
``V1beta1PredictorSpec``) and ``trafficPercent`` (sum <= 100, 0 = dark launch); the canary's
``predictor.name`` names its Deployment ``{isvc}-{name}-predictor``; "to promote a canary without
restart, set predictor.name to the canary name and remove the canary entry" (SDK docstring):
  SetShadow(v)     the main predictor's ``model.args`` as above (a Deployment rolling update).
  DeployCanary(v)  ``spec.canary = [..others, {trafficPercent: 0, predictor: <main predictor, name=v,
                   storageUri/--ref of v, no shadow>}]``.
  SetWeight(N)     our entry's ``trafficPercent: N``.
  SetActive(v)     ``spec.predictor`` = our canary's predictor (its name keeps its Deployment: no
                   restart; old keys it lacks are nulled) and ``canary`` without our entry (null if empty).
  RemoveCanary     ``canary`` without our entry; the main (baseline) predictor was never touched.

Registry vs cluster ordering is the machine's (``tideline.rollout.machine``) and this backend keeps it:
promotion is ``PromoteInRegistry`` (compare-and-swap ``production: baseline -> candidate``) BEFORE
``SetActive``: the registry is the source of truth and the cluster follows it; a lost CAS (production
moved meanwhile) is a permanent error, the rollout fails and the cluster is left on the baseline. If
``SetActive`` fails after the registry moved, the candidate already had the last canary weight and the
retry (same idempotent actions, rebuilt from the persisted status) finishes it. A rollback is the
other way round, cluster FIRST (``SetWeight(0)``, ``SetShadow(None)``, ``RemoveCanary``) and then
``RetireInRegistry``: cutting the candidate's traffic is the urgent part, production never moved, so
the cluster only ever moves towards what the registry already says.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Protocol

from tideline.errors import ConfigError
from tideline.monitoring.outcomes import LiveOutcomes
from tideline.registry import Registry
from tideline.rollout.analysis import MetricsSnapshot, SeriesMetrics, delta
from tideline.rollout.backends import BackendError, RegistryOps
from tideline.rollout.cr import api_reason as _api_reason

log = logging.getLogger(__name__)

GROUP = "serving.kserve.io"
VERSION = "v1beta1"
PLURAL = "inferenceservices"
MODES = ("Serverless", "RawDeployment")
ACTOR = "tideline-operator"


class CustomObjectsApiLike(Protocol):
    """The part of ``kubernetes.client.CustomObjectsApi`` the backend uses."""

    def get_namespaced_custom_object(self, group: str, version: str, namespace: str, plural: str,
                                     name: str) -> dict[str, Any]:
        """The custom object ``name`` (here: an InferenceService) as a dict."""

    def patch_namespaced_custom_object(self, group: str, version: str, namespace: str, plural: str,
                                       name: str, body: Any) -> dict[str, Any]:
        """Merge-patch the custom object ``name`` with ``body``; the patched object."""


# -- raw metrics ------------------------------------------------------------------------------------
# Both readers return one analysis interval's INCREASE of the predictors' counters as a
# ``tideline.rollout.analysis.MetricsSnapshot`` keyed by (version, role), ready for ``analyze``.


def _http_get(url: str, timeout: float) -> bytes:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 - URL from the CR / pod IP
            return bytes(resp.read())
    except urllib.error.HTTPError as e:
        raise BackendError(f"GET {url.split('?')[0]} failed: HTTP {e.code}") from e
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise BackendError(f"cannot reach {url.split('?')[0]}: {reason}") from e


class CumulativeCounters:
    """Per-pod cumulative counters summed into one cumulative reading per (version, role).

    The metrics contract of every backend (``Backend.read_metrics``): counters only ever grow, except at a
    reset, and the reconciler takes the increase between two readings (``analysis.delta``, one place). A
    pod's counters restart from zero when the pod does, so a plain sum over pods would go down whenever one
    restarts; instead each pod's increase since its previous reading (``delta``: a pod whose counters went
    down counts from zero) is added to a running total. The first reading only primes (those lifetime
    totals are not traffic the rollout saw); a pod that appears later counts from zero. A new reader (a
    restarted operator) starts its totals at zero, which the reconciler's ``delta`` reads as a reset.
    """

    def __init__(self) -> None:
        self._last: dict[str, MetricsSnapshot] = {}
        self._total = MetricsSnapshot()
        self._primed = False

    def update(self, per_pod: Mapping[str, MetricsSnapshot]) -> MetricsSnapshot:
        """Take one reading per pod and return the running cumulative totals per (version, role).

        The first call only primes; afterwards each pod's increase is added (a pod whose counters went down, or a
        new pod, counts from zero) and pods that went away are dropped.
        """
        for key, cur in per_pod.items():
            prev = self._last.get(key)
            if prev is not None or self._primed:
                self._total = self._total.merge(delta(prev, cur))
            self._last[key] = cur
        for key in set(self._last) - set(per_pod):  # pods that went away
            del self._last[key]
        self._primed = True
        return MetricsSnapshot(dict(self._total.series))


class PrometheusMetricsReader:
    """Reads the predictor's counters (names from docs/CONTRACTS.md) from the Prometheus HTTP API.

    Each counter summed by (pod, version, role[, code|le]), accumulated per pod into cumulative totals
    (``CumulativeCounters``): the reconciler takes the increase between two readings.
    """

    def __init__(self, url: str, *, selector: str = "", http_get: Callable[[str, float], bytes] = _http_get,
                 timeout: float = 10.0) -> None:
        if not url.startswith(("http://", "https://")):
            raise ConfigError(f"Prometheus URL must be http(s)://, got {url!r}")
        self.url = url.rstrip("/")
        self.selector = selector
        self.http_get = http_get
        self.timeout = timeout
        self._counters = CumulativeCounters()

    def queries(self, versions: Iterable[str]) -> dict[str, str]:
        """The PromQL instant queries (requests, buckets, count, sum by pod/version/role) for ``versions``."""
        vs = "|".join(sorted(set(versions)))
        sel = ",".join(s for s in (self.selector, f'version=~"{vs}"') if s)
        d = "tideline_request_duration_seconds"
        return {
            "requests": f"sum by (pod, version, role, code) (tideline_requests_total{{{sel}}})",
            "buckets": f"sum by (pod, version, role, le) ({d}_bucket{{{sel}}})",
            "count": f"sum by (pod, version, role) ({d}_count{{{sel}}})",
            "sum": f"sum by (pod, version, role) ({d}_sum{{{sel}}})",
        }

    def _query(self, promql: str) -> list[dict[str, Any]]:
        url = f"{self.url}/api/v1/query?{urllib.parse.urlencode({'query': promql})}"
        raw = self.http_get(url, self.timeout)
        try:
            doc = json.loads(raw)
        except ValueError as e:
            raise BackendError(f"Prometheus at {self.url} answered something that is not JSON") from e
        if doc.get("status") != "success":
            raise BackendError(f"Prometheus query failed: {doc.get('errorType', '')} {doc.get('error', '')}".strip())
        data = doc.get("data") or {}
        if data.get("resultType") != "vector":
            raise BackendError(f"Prometheus answered a {data.get('resultType')!r}, expected an instant vector")
        return list(data.get("result") or [])

    def read(self, *, versions: Iterable[str]) -> MetricsSnapshot:
        """Query Prometheus for the counters of ``versions`` and return the cumulative totals per (version, role).

        Raises ``BackendError`` when Prometheus cannot be reached or answers an error or an unexpected shape.
        """
        per_pod: dict[str, MetricsSnapshot] = {}
        for key, promql in self.queries(versions).items():
            for sample in self._query(promql):
                labels = sample.get("metric") or {}
                version, role = labels.get("version"), labels.get("role")
                value = float(sample["value"][1])
                if not version or not role or math.isnan(value):
                    continue
                snap = per_pod.setdefault(str(labels.get("pod", "")), MetricsSnapshot())
                m = snap.series.setdefault((version, role), SeriesMetrics())
                if key == "requests":
                    m.requests += value
                    code = str(labels.get("code", ""))
                    if code.startswith("5"):
                        m.errors += value
                    elif code.startswith("4"):
                        m.client_errors += value
                elif key == "buckets":
                    le = float(labels.get("le", "+Inf"))
                    m.buckets[le] = m.buckets.get(le, 0.0) + value
                elif key == "count":
                    m.latency_count += value
                else:
                    m.latency_sum += value
        return self._counters.update(per_pod)


class PodMetricsReader:
    """Scrapes ``GET /metrics`` of the InferenceService's running pods (no Prometheus needed), accumulated
    per pod into cumulative totals (``CumulativeCounters``)."""

    def __init__(self, core_api: Any, namespace: str, isvc_name: str, *, port: int = 8080,
                 http_get: Callable[[str, float], bytes] = _http_get, timeout: float = 5.0) -> None:
        self.core_api = core_api
        self.namespace = namespace
        self.isvc_name = isvc_name
        self.port = port
        self.http_get = http_get
        self.timeout = timeout
        self._counters = CumulativeCounters()

    def _targets(self) -> list[tuple[str, str]]:
        try:
            pods = self.core_api.list_namespaced_pod(
                self.namespace, label_selector=f"serving.kserve.io/inferenceservice={self.isvc_name}"
            )
        except Exception as e:
            raise BackendError(f"cannot list the pods of {self.namespace}/{self.isvc_name}: {_api_reason(e)}") from e
        out = []
        for p in pods.items:
            ip = getattr(p.status, "pod_ip", None)
            if ip and getattr(p.status, "phase", "") == "Running":
                out.append((str(p.metadata.uid or p.metadata.name), f"http://{ip}:{self.port}/metrics"))
        return out

    def read(self, *, versions: Iterable[str]) -> MetricsSnapshot:
        """Scrape ``/metrics`` of every running pod of the InferenceService and return the cumulative totals of
        ``versions`` per (version, role). Raises ``BackendError`` when the pods cannot be listed or a pod's
        metrics cannot be fetched or parsed.
        """
        wanted = set(versions)
        per_pod = {}
        for key, url in self._targets():
            try:
                cur = MetricsSnapshot.parse(self.http_get(url, self.timeout).decode())
            except ValueError as e:
                raise BackendError(f"unparsable /metrics from {url}: {e}") from e
            per_pod[key] = MetricsSnapshot({k: v for k, v in cur.series.items() if k[0] in wanted})
        return self._counters.update(per_pod)


def make_metrics_reader(source: str, *, core_api: Any, namespace: str, isvc_name: str) -> Any:
    """``spec.metricsSource``: a Prometheus base URL, or ``pods`` to scrape the predictor pods."""
    if source == "pods":
        return PodMetricsReader(core_api, namespace, isvc_name)
    return PrometheusMetricsReader(source, selector=f'namespace="{namespace}"')


# -- patch builders (pure) ---------------------------------------------------------------------------
def storage_uri(registry: Registry, version: str) -> str:
    """``s3://bucket/prefix/artifacts/<uuid>`` of a version: what KServe's storage initializer downloads."""
    uri = registry.store.uri
    if not uri.startswith("s3://"):
        raise ConfigError(
            f"KServe cannot read models from {uri}", hint="a cluster rollout needs an s3:// (MinIO) registry"
        )
    return f"{uri.rstrip('/')}/{registry.get(version).artifact_prefix.strip('/')}"


def _with_flag(args: list[str] | None, flag: str, value: str | None) -> list[str]:
    """``args`` without any ``flag=...`` (or ``flag`` followed by its value), plus ``flag=value``."""
    out: list[str] = []
    skip = False
    for a in args or []:
        if skip:
            skip = False
            continue
        if a == flag:
            skip = True
            continue
        if a.startswith(flag + "="):
            continue
        out.append(a)
    if value is not None:
        out.append(f"{flag}={value}")
    return out


def _flag(args: list[str] | None, flag: str) -> str | None:
    args = list(args or [])
    for i, a in enumerate(args):
        if a.startswith(flag + "="):
            return a.split("=", 1)[1]
        if a == flag and i + 1 < len(args):
            return args[i + 1]
    return None


def _predictor(isvc: Mapping[str, Any]) -> dict[str, Any]:
    pred = (isvc.get("spec") or {}).get("predictor")
    if not isinstance(pred, dict) or not isinstance(pred.get("model"), dict):
        name = (isvc.get("metadata") or {}).get("name", "?")
        raise ConfigError(
            f"InferenceService {name} has no spec.predictor.model",
            hint="tideline rolls out the predictor's model (runtime + storageUri + args)",
        )
    return pred


def merged(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch applied to a copy of ``target`` (what the API server does with it)."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    for k, v in patch.items():
        if v is None:
            result.pop(k, None)
        else:
            result[k] = merged(result.get(k), v)
    return result


# What a spec.canary[] predictor must not set: kserve v0.20.0 pkg/apis/serving/v1beta1/
# inference_service_validation.go, validateCanarySpecs ("must not set maxReplicas (canary uses fixed replicas)",
# scaleTarget, scaleMetric, autoScaling, workerSpec); minReplicas may not exceed the stable one's, and without it
# the controller sizes the canary from its trafficPercent (components/predictor.go).
CANARY_FORBIDDEN = ("minReplicas", "maxReplicas", "scaleTarget", "scaleMetric", "autoScaling", "workerSpec")


def canary_name(version: str) -> str:
    """Name of the candidate's predictor variant (RawDeployment): a DNS label, e.g. ``v7``."""
    return version.lower()


class PatchBuilder:
    """The InferenceService merge patches of one rollout. Pure: live object in, patch (or None) out.

    None means "the live object already is what the action asks for" (every action is idempotent).
    Each patch carries the live ``metadata.resourceVersion`` (optimistic concurrency).
    """

    def __init__(self, mode: str, uris: Mapping[str, str]) -> None:
        if mode not in MODES:
            raise ConfigError(f"unknown KServe mode {mode!r}", hint=f"one of {', '.join(MODES)}")
        self.mode = mode
        self.uris = dict(uris)  # version -> storageUri

    def _uri(self, version: str) -> str:
        try:
            return self.uris[version]
        except KeyError:
            raise ConfigError(f"version {version} is not part of this rollout") from None

    def _version_of(self, pred: Mapping[str, Any]) -> str | None:
        uri = (pred.get("model") or {}).get("storageUri")
        return next((v for v, u in self.uris.items() if u == uri), None)

    def _finish(self, isvc: Mapping[str, Any], spec_patch: dict[str, Any]) -> dict[str, Any] | None:
        if merged(isvc.get("spec") or {}, spec_patch) == (isvc.get("spec") or {}):
            return None
        meta = isvc.get("metadata") or {}
        head = {"resourceVersion": meta["resourceVersion"]} if meta.get("resourceVersion") else {}
        return {"metadata": head, "spec": spec_patch}

    @staticmethod
    def _ours(entry: Mapping[str, Any], version: str) -> bool:
        return (entry.get("predictor") or {}).get("name") == canary_name(version)

    def _variant(self, main: Mapping[str, Any], version: str, *, canary: bool = False) -> dict[str, Any]:
        """The main predictor, serving ``version`` (named after it), without a shadow slot. As a ``spec.canary[]``
        entry (``canary``) without what KServe's webhook refuses there (``CANARY_FORBIDDEN``): KServe sizes a
        canary from its trafficPercent (none at 0%)."""
        pred = copy.deepcopy(dict(main))
        pred.pop("canaryTrafficPercent", None)
        if canary:
            for k in CANARY_FORBIDDEN:
                pred.pop(k, None)
        pred["name"] = canary_name(version)
        model = pred["model"]
        model["storageUri"] = self._uri(version)
        model["args"] = _with_flag(_with_flag(model.get("args"), "--shadow-ref", None), "--ref", version)
        return pred

    def _our_canary(self, isvc: Mapping[str, Any]) -> tuple[str | None, list[dict[str, Any]], list[dict[str, Any]]]:
        canaries = list((isvc.get("spec") or {}).get("canary") or [])
        names = {canary_name(v): v for v in self.uris}
        ours = [c for c in canaries if (c.get("predictor") or {}).get("name") in names]
        version = names[ours[0]["predictor"]["name"]] if ours else None
        return version, ours, [c for c in canaries if c not in ours]

    # -- one patch per machine action -------------------------------------------------------------
    def set_shadow(self, isvc: Mapping[str, Any], version: str | None) -> dict[str, Any] | None:
        """The patch that mirrors requests to ``version`` (None: no shadow), or None when nothing changes."""
        pred = _predictor(isvc)
        p: dict[str, Any] = {"model": {"args": _with_flag(pred["model"].get("args"), "--shadow-ref", version)}}
        if self.mode == "Serverless" and version is not None and pred.get("canaryTrafficPercent") is not None:
            # no canary revision is running while shadowing: the revision carrying the shadow slot must
            # take all traffic (a rollback leaves canaryTrafficPercent: 0 behind)
            p["canaryTrafficPercent"] = None
        return self._finish(isvc, {"predictor": p})

    def deploy_canary(self, isvc: Mapping[str, Any], version: str) -> dict[str, Any] | None:
        """The patch that deploys ``version`` as the canary at its current weight (0 when new), or None when it
        is already deployed or already the main predictor.
        """
        pred = _predictor(isvc)
        if self.mode == "Serverless":
            live = self._version_of(pred)
            if live == version and pred.get("canaryTrafficPercent") is None:
                return None  # already the active revision (promoted): never cut its traffic to 0
            # the candidate becomes the latest revision; it keeps the weight it has (0 when new)
            weight = pred.get("canaryTrafficPercent") if live == version else 0
            variant = self._variant(pred, version)["model"]
            return self._finish(isvc, {"predictor": {
                "canaryTrafficPercent": int(weight or 0),
                "model": {"storageUri": variant["storageUri"], "args": variant["args"]},
            }})
        if self._version_of(pred) == version and not self._our_canary(isvc)[1]:
            return None  # already the main predictor (promoted)
        current, ours, others = self._our_canary(isvc)
        weight = int(ours[0].get("trafficPercent", 0)) if ours and current == version else 0
        entry = {"trafficPercent": weight, "predictor": self._variant(pred, version, canary=True)}
        return self._finish(isvc, {"canary": [*others, entry]})

    def set_weight(self, isvc: Mapping[str, Any], percent: int) -> dict[str, Any] | None:
        """The patch that routes ``percent`` of traffic to the canary, or None when nothing changes.

        Raises ``ConfigError`` for a weight outside 0..100, or a non-zero weight with no canary deployed.
        """
        percent = int(percent)
        if not 0 <= percent <= 100:
            raise ConfigError(f"traffic weight must be 0..100, got {percent}")
        pred = _predictor(isvc)
        if self.mode == "Serverless":
            if pred.get("canaryTrafficPercent") is None and percent == 0:
                return None  # no canary revision: nothing gets canary traffic
            if pred.get("canaryTrafficPercent") is None:
                raise ConfigError(f"cannot route {percent}% to a canary: no canary revision is deployed")
            return self._finish(isvc, {"predictor": {"canaryTrafficPercent": percent}})
        _, ours, others = self._our_canary(isvc)
        if not ours:
            if percent == 0:
                return None
            raise ConfigError(f"cannot route {percent}% to a canary: no canary predictor is deployed")
        entry = {**ours[0], "trafficPercent": percent}
        return self._finish(isvc, {"canary": [*others, entry]})

    def remove_canary(self, isvc: Mapping[str, Any], baseline: str) -> dict[str, Any] | None:
        """The patch that takes the canary away and serves ``baseline`` only, or None when nothing changes."""
        pred = _predictor(isvc)
        if self.mode == "Serverless":
            if pred.get("canaryTrafficPercent") is None or self._version_of(pred) in (None, baseline):
                return None  # the live revision already is the baseline (or no canary ran)
            # weight 0 keeps every request on the last rolled-out (baseline) revision; the spec is the
            # baseline's again, so the revision built from it is the baseline, never the candidate
            variant = self._variant(pred, baseline)["model"]
            return self._finish(isvc, {"predictor": {
                "canaryTrafficPercent": 0,
                "model": {"storageUri": variant["storageUri"], "args": variant["args"]},
            }})
        _, ours, others = self._our_canary(isvc)
        if not ours:
            return None
        return self._finish(isvc, {"canary": others or None})

    def set_active(self, isvc: Mapping[str, Any], version: str) -> dict[str, Any] | None:
        """The patch that makes ``version`` the main predictor without a canary, or None when nothing changes."""
        pred = _predictor(isvc)
        if self.mode == "Serverless":
            variant = self._variant(pred, version)["model"]
            return self._finish(isvc, {"predictor": {
                "canaryTrafficPercent": None,
                "model": {"storageUri": variant["storageUri"], "args": variant["args"]},
            }})
        current, ours, others = self._our_canary(isvc)
        if current == version and ours:
            new_main = copy.deepcopy(ours[0]["predictor"])  # its name keeps its Deployment: no restart
            for k in CANARY_FORBIDDEN:  # production keeps its own scaling
                if k in pred:
                    new_main[k] = copy.deepcopy(pred[k])
        elif self._version_of(pred) == version:
            return self._finish(isvc, {"canary": others or None}) if ours else None
        else:
            new_main = self._variant(pred, version)
        for k in pred:  # merge patch: keys of the old main predictor the new one lacks must go
            new_main.setdefault(k, None)
        return self._finish(isvc, {"predictor": new_main, "canary": others or None})


def _ready(conditions: Iterable[Mapping[str, Any]] | None) -> bool | None:
    for c in conditions or []:
        if c.get("type") == "Ready":
            return str(c.get("status")) == "True"
    return None


# -- the backend -------------------------------------------------------------------------------------
class KServeBackend(RegistryOps):
    """``Backend`` over one InferenceService; the registry half comes from ``RegistryOps``."""

    actor = ACTOR

    def __init__(
        self,
        api: CustomObjectsApiLike,
        namespace: str,
        isvc_name: str,
        registry: Registry,
        mode: str = "Serverless",
        metrics_reader: Any = None,
        *,
        versions: Iterable[str],
        baseline: str,
        outcomes_reader: Callable[[str, str], LiveOutcomes | None] | None = None,
        paired_reader: Callable[[str], tuple[list[float], list[float]] | None] | None = None,
    ) -> None:
        super().__init__(registry)
        self.api = api
        self.namespace = namespace
        self.isvc_name = isvc_name
        self.mode = mode
        self.metrics_reader = metrics_reader
        self.baseline = baseline
        self.outcomes_reader = outcomes_reader
        self.paired_reader = paired_reader
        vs = sorted(set(versions) | {baseline})
        self.builder = PatchBuilder(mode, {v: storage_uri(registry, v) for v in vs})

    # cluster I/O
    def get(self) -> dict[str, Any]:
        """The InferenceService as it is now; ``BackendError`` when it cannot be read."""
        try:
            return dict(self.api.get_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL,
                                                              self.isvc_name))
        except Exception as e:  # kubernetes ApiException and transport errors
            raise BackendError(f"cannot read InferenceService {self.namespace}/{self.isvc_name}: "
                               f"{_api_reason(e)}") from e

    def _apply(self, what: str, build: Callable[[dict[str, Any]], dict[str, Any] | None]) -> None:
        body = build(self.get())
        if body is None:
            log.debug("isvc=%s/%s action=%s already applied", self.namespace, self.isvc_name, what)
            return
        log.info("patch isvc=%s/%s action=%r body=%s", self.namespace, self.isvc_name, what,
                 json.dumps(body, sort_keys=True))
        try:
            self.api.patch_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, self.isvc_name, body)
        except Exception as e:
            raise BackendError(f"cannot {what} on InferenceService {self.namespace}/{self.isvc_name}: "
                               f"{_api_reason(e)}") from e

    # traffic
    def set_shadow(self, version: str | None) -> None:
        """Patch the InferenceService to mirror requests to ``version`` (None: off); ``BackendError`` on failure."""
        self._apply(f"set shadow {version or 'off'}", lambda o: self.builder.set_shadow(o, version))

    def deploy_canary(self, version: str) -> None:
        """Patch the InferenceService to deploy ``version`` as the canary; ``BackendError`` on failure."""
        self._apply(f"deploy canary {version}", lambda o: self.builder.deploy_canary(o, version))

    def set_weight(self, percent: int) -> None:
        """Patch the canary's traffic share to ``percent``; ``BackendError`` when the patch fails, ``ConfigError``
        for a non-zero weight without a canary.
        """
        self._apply(f"set canary weight {percent}%", lambda o: self.builder.set_weight(o, percent))

    def remove_canary(self) -> None:
        """Patch the InferenceService back to the baseline only; ``BackendError`` on failure."""
        self._apply("remove canary", lambda o: self.builder.remove_canary(o, self.baseline))

    def set_active(self, version: str) -> None:
        """Patch the InferenceService so ``version`` is the main predictor, no canary; ``BackendError`` on failure."""
        self._apply(f"make {version} active", lambda o: self.builder.set_active(o, version))

    # raw metrics
    def read_metrics(self) -> MetricsSnapshot:
        """The predictors' cumulative counters, keyed by (version, role) (the reconciler takes the increase)."""
        if self.metrics_reader is None:
            raise ConfigError("no metrics source configured for this rollout")
        return self.metrics_reader.read(versions=sorted(self.builder.uris))

    def candidate_up(self, version: str) -> bool | None:
        """Readiness of the slot serving ``version`` as KServe reports it; None when not deployed/known."""
        isvc = self.get()
        status = isvc.get("status") or {}
        pred = _predictor(isvc)
        if self.mode == "RawDeployment":
            for c in status.get("canaryStatuses") or []:
                if c.get("name") == canary_name(version):
                    return bool(c.get("ready")) if c.get("ready") is not None else None
            if self.builder._version_of(pred) == version:
                return _ready(status.get("conditions"))
            return None
        if self.builder._version_of(pred) != version:
            return None
        comp = (status.get("components") or {}).get("predictor") or {}
        latest, ready = comp.get("latestCreatedRevision"), comp.get("latestReadyRevision")
        if latest and ready:
            return latest == ready
        return None

    def read_outcomes(self, candidate: str, baseline: str) -> LiveOutcomes | None:
        """The outcomes reader's live outcomes, or None without a reader."""
        return self.outcomes_reader(candidate, baseline) if self.outcomes_reader else None

    def read_paired_predictions(self, candidate: str) -> tuple[list[float], list[float]] | None:
        """The paired reader's (candidate, active) shadow predictions, or None without a reader."""
        return self.paired_reader(candidate) if self.paired_reader else None
