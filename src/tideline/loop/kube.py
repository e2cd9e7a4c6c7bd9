"""The loop on a cluster: a retrain is a Kubeflow Pipelines run, a rollout is a ModelRollout the operator runs.

The CronWorkflows (``manifests/cronworkflows``) run ``tideline loop --once`` with ``loop.pipeline = "kfp"`` and
``loop.rollouts = "kubernetes"``; everything else in the tick is the same code as on one machine.

**Candidate -> rollout, no human in between.** The loop creates the ModelRollout itself (``KubeRollouts.
start``), through the Kubernetes API, under the CronWorkflow's ServiceAccount with a Role that allows
exactly ``get``, ``list`` and ``create`` on ``modelrollouts`` (``manifests/base/trigger-rbac.yaml``). Why
the loop and not the operator watching the registry's ``candidate`` alias: the loop is already the one
place that decides (it holds the loop lease, knows about cooldowns after a revert, the kill switch and a
rollout still in flight, and records every decision in its tick record); an operator polling S3 would be a
second decider racing it, and would need S3 credentials and a polling loop of its own. The KFP run's gate
names the candidate (the ``candidate`` alias, as ``request_rollout`` does); the next tick finds it
(``Loop._pick_up_candidate``) and creates its ModelRollout — the same path as a candidate set by hand.

Live outcomes on a cluster: the operator reads the recent bars from the registry's store
(``loop/recent-bars.parquet``, rewritten by every tick: ``publish_recent``), named in the ModelRollout's
``spec.bars``.
"""

from __future__ import annotations

import io
import re
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any, Final

import pandas as pd

from tideline.config import Settings
from tideline.errors import ConfigError, PolicyError, StorageUnavailable
from tideline.loop.rollouts import rollout_spec
from tideline.registry import Registry
from tideline.rollout import machine
from tideline.rollout.cr import GROUP, KIND, PLURAL, VERSION, api_reason, spec_to_cr

ROLLOUT_LABEL: Final = "tideline.io/rollout"
CANDIDATE_LABEL: Final = "tideline.io/candidate"
REASON_ANNOTATION: Final = "tideline.io/reason"
RECENT_BARS_KEY: Final = "loop/recent-bars.parquet"
LAKE_PREFIX: Final = "loop/lake/"
GRACE_S: Final = 300.0
"""a ModelRollout no operator has taken yet is "stalled" only after this long"""
_DNS1123 = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


def store_uri(registry: Registry, key: str) -> str:
    """The URI of ``key`` in the registry's store (``s3://bucket/prefix/key``): what a pod elsewhere reads."""
    return f"{registry.store.uri.rstrip('/')}/{key}"


def _created(obj: dict[str, Any]) -> float:
    ts = (obj.get("metadata") or {}).get("creationTimestamp")
    try:
        return datetime.fromisoformat(str(ts).replace("Z", "+00:00")).timestamp()
    except ValueError:
        return 0.0


class KubeRollouts:
    """The loop's ``Rollouts`` on a cluster: ModelRollouts in ``loop.namespace``, run by the operator."""

    def __init__(self, settings: Settings, registry: Registry, api: Any, *,
                 clock: Callable[[], float] = time.time) -> None:
        self.s = settings
        self.registry = registry
        self.api = api
        self.namespace = settings.loop.namespace
        self.name = settings.loop.rollout.name
        self.clock = clock

    def _where(self) -> str:
        return f"ModelRollouts in namespace {self.namespace}"

    # -- Rollouts ----------------------------------------------------------------------------------------------
    def publish_recent(self, bars: pd.DataFrame) -> None:
        """Write ``bars`` to the store at ``loop/recent-bars.parquet``, where the operator reads live outcomes."""
        buf = io.BytesIO()
        bars.to_parquet(buf, index=False)
        self.registry.store.put(RECENT_BARS_KEY, buf.getvalue())

    def _list(self) -> list[dict[str, Any]]:
        try:
            res = self.api.list_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL,
                                                         label_selector=f"{ROLLOUT_LABEL}={self.name}")
        except Exception as e:  # ApiException and transport errors
            if getattr(e, "status", None) in (401, 403, 404):
                raise ConfigError(f"cannot list {self._where()}: {api_reason(e)}",
                                  hint="is the ModelRollout CRD installed and the tideline-trigger Role bound?") from e
            raise StorageUnavailable(f"cannot list {self._where()}: {api_reason(e)}") from e
        return list((res or {}).get("items") or [])

    def latest(self) -> dict[str, Any] | None:
        """The newest ModelRollout of ``loop.rollout.name`` in the namespace, as the loop sees it, or None.

        ``controller_alive``: an operator holds its lease, or nobody has taken it yet within ``GRACE_S``. Raises
        ``ConfigError`` when listing is forbidden or the CRD is missing (401/403/404), else ``StorageUnavailable``.
        """
        items = sorted(self._list(), key=lambda o: (_created(o), o["metadata"]["name"]))
        if not items:
            return None
        obj = items[-1]
        meta, spec, st = obj["metadata"], obj.get("spec") or {}, obj.get("status") or {}
        phase = str(st.get("phase") or "Pending")
        now = self.clock()
        owner = st.get("owner")
        alive = (bool(owner) and float(st.get("leaseUntil") or 0) > now) or (
            not owner and not st.get("machineGeneration") and now - _created(obj) < GRACE_S)
        return {"name": meta["name"], "id": f"{spec.get('candidate')}@{meta.get('uid') or meta['name']}",
                "phase": phase, "weight": int(st.get("weight") or 0), "candidate": str(spec.get("candidate")),
                "baseline": st.get("baseline") or spec.get("baseline"), "terminal": machine.Phase(phase).terminal,
                "message": str(st.get("message") or ""), "kill_switch": bool(st.get("killSwitch")),
                "controller_alive": alive}

    def restart(self) -> str:
        """Always raises ``PolicyError``: on a cluster the operator Deployment restarts a dead controller, not
        the loop (the message says where to look).
        """
        last = self.latest()
        which = f"ModelRollout {self.namespace}/{last['name']}" if last else self._where()
        raise PolicyError(f"no operator is running {which} (no lease held): the operator Deployment restarts it, "
                          "the loop cannot",
                          hint=f"kubectl -n {self.namespace} get deploy tideline-operator; kubectl -n "
                               f"{self.namespace} logs deploy/tideline-operator")

    def body(self, candidate: str, baseline: str, reason: str) -> dict[str, Any]:
        """The ModelRollout the loop creates for ``candidate`` (validated against the CRD in the tests)."""
        spec = rollout_spec(self.s.loop.rollout, candidate, baseline, store_uri(self.registry, RECENT_BARS_KEY))
        name = f"{self.name}-{candidate}".lower()
        if len(name) > 63 or not _DNS1123.match(name):
            raise ConfigError(f"cannot name a ModelRollout {name!r}: not a DNS-1123 label",
                              hint="loop.rollout.name must be lowercase letters, digits and '-'")
        cfg = self.s.loop.rollout
        return {
            "apiVersion": f"{GROUP}/{VERSION}", "kind": KIND,
            "metadata": {"name": name, "namespace": self.namespace,
                         "labels": {ROLLOUT_LABEL: self.name, CANDIDATE_LABEL: candidate.lower(),
                                    "app.kubernetes.io/name": "tideline",
                                    "app.kubernetes.io/managed-by": "tideline-loop"},
                         "annotations": {REASON_ANNOTATION: reason[:300]}},
            "spec": spec_to_cr(spec, registry=self.registry.store.uri, mode=cfg.mode,
                               metrics_source=cfg.metrics_source),
        }

    def start(self, candidate: str, baseline: str, reason: str) -> str:
        """Create the ModelRollout of ``candidate`` against ``baseline`` (one that exists already is fine: an
        earlier tick made it) and set the ``candidate`` alias; what was done.

        Raises ``ConfigError`` for a bad name or a request the API refuses (400/401/403/404/422),
        ``StorageUnavailable`` when the API cannot be reached, and the registry's errors from ``set_alias``.
        """
        body = self.body(candidate, baseline, reason)
        name = body["metadata"]["name"]
        try:
            self.api.create_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, body)
            done = "created"
        except Exception as e:
            if getattr(e, "status", None) != 409:
                if getattr(e, "status", None) in (400, 401, 403, 404, 422):
                    raise ConfigError(f"cannot create ModelRollout {self.namespace}/{name}: {api_reason(e)}") from e
                raise StorageUnavailable(f"cannot create ModelRollout {self.namespace}/{name}: "
                                         f"{api_reason(e)}") from e
            done = "found (an earlier tick created it)"
        self.registry.set_alias("candidate", candidate, reason=f"loop: {reason}"[:300], actor="loop")
        spec = body["spec"]
        return (f"{done} ModelRollout {self.namespace}/{name}: {candidate} vs production {baseline} (shadow "
                f"{spec['strategy']['shadow']['minDurationSeconds']} s, canary "
                f"{'/'.join(map(str, spec['strategy']['canary']['steps']))}%); the operator runs it")


def kfp_pipeline(host: str, registry: Registry) -> Callable[..., dict[str, Any]]:
    """The loop's ``Pipeline`` on a cluster: the training window goes to the registry's store, a KFP run is
    submitted on it and the tick goes on (the run's gate names the candidate; a later tick rolls it out)."""
    if not host:
        raise ConfigError("loop.pipeline = 'kfp' needs loop.kfp_host (the Kubeflow Pipelines API URL)")

    def run(settings: Settings, *, source: str | Path, rollout_mode: str, reason: str) -> dict[str, Any]:
        from tideline.training.orchestration import start_retrain

        key = LAKE_PREFIX + Path(source).name
        registry.store.put_file(key, Path(source))
        res = start_retrain(settings, mode="kfp", host=host, source=store_uri(registry, key),
                            rollout_mode=rollout_mode, reason=reason)
        return {"submitted": True, "run_id": res["run_id"], "host": host, "source": store_uri(registry, key)}

    return run
