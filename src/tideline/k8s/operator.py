"""The ModelRollout operator: kopf wiring around the one rollout reconciler.

Run it with ``kopf run -m tideline.k8s.operator --all-namespaces`` (in the cluster: the operator Deployment;
locally: with a kubeconfig). There is no reconcile loop here: on every create / resume / timer tick /
change of the ``tideline.io/action`` annotation, a ``RolloutController`` (``tideline.rollout.controller``,
the same reconciler the embedded default runs) makes one ``reconcile_once`` pass over

* a ``CRStatusStore`` (``tideline.rollout.cr``): the ModelRollout's status subresource, written with the
  ``resourceVersion`` it was read at (a concurrent write gets a 409 and this pass steps back), and
* a ``KServeBackend`` (``tideline.rollout.backends.kserve``): the InferenceService, the predictors'
  cumulative counters (from Prometheus or the pods' ``/metrics``) and, with ``spec.bars``, live outcomes.

The pass writes the new status first, then applies the actions, then records ``appliedGeneration``; a
restarted operator (a new pod, a new lease owner) waits for the old pod's lease to run out and then
continues from the recorded status. kopf's own bookkeeping lives in annotations under ``kopf.tideline.io``,
never in the status (its schema is closed) and never under the ``tideline.io/action`` name.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

import pandas as pd

from tideline.config import ROLLOUT_DEFAULTS
from tideline.errors import ConfigError, StorageUnavailable, TidelineError
from tideline.registry import Registry, open_registry
from tideline.rollout import machine
from tideline.rollout.backends import BackendError
from tideline.rollout.backends.kserve import KServeBackend, make_metrics_reader
from tideline.rollout.controller import RolloutController
from tideline.rollout.cr import (  # noqa: F401  (re-exported: the kubectl plugin and tests import them here)
    ACTION_ANNOTATION,
    ACTIONS,
    FIELDS,
    GROUP,
    PLURAL,
    VERSION,
    CRStatusStore,
    doc_from_cr,
    plain,
    rollout_spec,
    status_from_cr,
    status_to_cr,
)

log = logging.getLogger(__name__)

TICK_S = 5.0  # the timer's period; analyses run every spec.analysis.intervalSeconds (>= 5, the CRD's minimum)
KOPF_PREFIX = "kopf.tideline.io"  # kopf's progress/diff-base annotations: apart from tideline.io/action


class _Clock:
    """The controller's clock over a plain ``() -> float`` (the operator never sleeps: kopf ticks)."""

    def __init__(self, now: Callable[[], float]) -> None:
        self._now = now

    def now(self) -> float:
        return self._now()

    def sleep(self, seconds: float) -> None:  # pragma: no cover - reconcile_once never sleeps
        time.sleep(seconds)


class Reconciler:
    """Builds the reconciler's ports for one ModelRollout and runs one pass; everything is injected."""

    def __init__(
        self,
        custom_api: Any,
        core_api: Any = None,
        *,
        open_registry_fn: Callable[[str], Registry] | None = None,
        clock: Callable[[], float] = time.time,
        default_registry: str | None = None,
        metrics_reader_factory: Callable[[str, str, str], Any] | None = None,
        owner: str | None = None,
    ) -> None:
        self.custom_api = custom_api
        self.core_api = core_api
        self.clock = clock
        self.owner = owner or f"operator-{os.environ.get('HOSTNAME') or socket.gethostname()}"
        self.default_registry = default_registry if default_registry is not None else os.environ.get(
            "TIDELINE_REGISTRY", "")
        self._open = open_registry_fn or (lambda uri: open_registry(uri, endpoint_url=os.environ.get(
            "AWS_ENDPOINT_URL")))
        self._reader_factory = metrics_reader_factory or (lambda source, ns, isvc: make_metrics_reader(
            source, core_api=self.core_api, namespace=ns, isvc_name=isvc))
        self._registries: dict[str, Registry] = {}
        self._readers: dict[tuple[str, str], Any] = {}
        self._outcomes: dict[tuple[str, str], Any] = {}
        self._locks: dict[tuple[str, str], threading.Lock] = {}
        self._guard = threading.Lock()

    def _lock(self, key: tuple[str, str]) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault(key, threading.Lock())

    def _registry(self, uri: str) -> Registry:
        if not uri:
            raise ConfigError("no registry: set spec.registry or the operator's TIDELINE_REGISTRY")
        if uri not in self._registries:
            self._registries[uri] = self._open(uri)
        return self._registries[uri]

    def forget(self, namespace: str, name: str) -> None:
        """Drop what is cached for the ModelRollout ``namespace/name`` (outcome sources, metric readers, its lock)."""
        self._outcomes.pop((namespace, name), None)
        self._readers.pop((namespace, name), None)
        with self._guard:
            self._locks.pop((namespace, name), None)

    def reconcile(self, body: Mapping[str, Any], patch: Any = None, logger: logging.Logger | None = None) -> None:
        """One reconcile pass of the ModelRollout ``body`` names (its current state is read from the API)."""
        del patch  # the status store writes the status and removes a consumed annotation itself
        meta = plain(body).get("metadata") or {}
        ns, name = meta.get("namespace") or "default", meta["name"]
        with self._lock((ns, name)):
            self._reconcile(ns, name, logger or log)

    def _reconcile(self, ns: str, name: str, logger: logging.Logger) -> None:
        store: CRStatusStore | None = None
        try:  # the ports of this ModelRollout; what cannot be built fails it with one line and no action
            obj = CRStatusStore(self.custom_api, ns, name).get()
            spec_cr = obj.get("spec") or {}
            registry = self._registry(str(spec_cr.get("registry") or self.default_registry))
            store = CRStatusStore(self.custom_api, ns, name, baseline=lambda: registry.aliases().get("production"))
            doc = doc_from_cr(obj, store.baseline)  # the object just read: no second GET before the pass
            if doc.status.terminal and doc.applied_generation >= doc.status.generation \
                    and doc.requested_action is None and doc.owner is None:
                return  # a finished rollout is left alone
            backend = self._backend(ns, name, spec_cr, doc.spec, registry, doc.status.started_at)
        except ConfigError as e:  # an invalid spec, no registry, nothing in production, no metrics source
            try:
                (store or CRStatusStore(self.custom_api, ns, name)).fail_invalid(e.message, self.clock())
            except Exception as e2:  # noqa: BLE001 - retried on the next tick
                logger.warning("rollout %s/%s: %s; recording it failed: %s", ns, name, e.message, e2)
            return
        except TidelineError as e:  # the API server or the registry unreachable: the next tick tries again
            logger.warning("rollout %s/%s: %s; retrying on the next tick", ns, name, e)
            return
        try:
            RolloutController(doc.spec.name, backend, store, _Clock(self.clock), owner=self.owner).reconcile_once()
        except (StorageUnavailable, BackendError) as e:  # transient: the next tick continues from the status
            logger.warning("rollout %s/%s: %s; retrying on the next tick", ns, name, e)
        except TidelineError as e:  # recorded nowhere else: the status stays, the next tick tries again
            logger.error("rollout %s/%s: %s", ns, name, e)

    def _backend(self, ns: str, name: str, spec_cr: Mapping[str, Any], spec: machine.RolloutSpec,
                 registry: Registry, started_at: float | None) -> KServeBackend:
        source = str(spec_cr.get("metricsSource") or "pods")
        reader = self._readers.get((ns, name))
        if reader is None:
            reader = self._readers[(ns, name)] = self._reader_factory(source, ns, spec.target)
        outcomes = None
        if spec.bars:  # live outcomes: the prediction log joined with realized returns from these bars
            outcomes = self._outcomes.get((ns, name))
            if outcomes is None:
                from tideline.monitoring.feedback import outcomes_from_log

                since = pd.Timestamp(started_at, unit="s", tz="UTC") if started_at else None
                outcomes = self._outcomes[(ns, name)] = outcomes_from_log(
                    registry, spec.bars, since=since, endpoint_url=os.environ.get("AWS_ENDPOINT_URL"))
        return KServeBackend(
            self.custom_api, ns, spec.target, registry, str(spec_cr.get("mode") or ROLLOUT_DEFAULTS.mode), reader,
            versions=[spec.candidate], baseline=spec.baseline, outcomes_reader=outcomes,
        )


# -- kopf wiring ---------------------------------------------------------------------------------------
_reconciler: Reconciler | None = None


def _get_reconciler() -> Reconciler:
    global _reconciler
    if _reconciler is None:
        from kubernetes import client, config

        try:
            config.load_incluster_config()
        except config.ConfigException:
            config.load_kube_config()
        _reconciler = Reconciler(client.CustomObjectsApi(), client.CoreV1Api())
    return _reconciler


def on_startup(settings: Any, **_: Any) -> None:
    """kopf keeps its progress and diff-base in annotations: the status schema is closed."""
    import kopf

    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=KOPF_PREFIX)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(prefix=KOPF_PREFIX)
    settings.persistence.finalizer = f"{GROUP}/finalizer"
    settings.posting.level = logging.INFO
    start_metrics(os.environ)
    start_alerts(os.environ)


def start_metrics(env: Mapping[str, str]) -> int | None:
    """With ``TIDELINE_METRICS_PORT`` set, serve the control-plane metrics (``tideline.loop.metrics``: what the
    loop's one-shot ticks, the pipeline runs and the rollouts recorded in the registry store) on that port,
    every interface, for Prometheus; returns the port (None when off). ``TIDELINE_REGISTRY`` names the store."""
    port = env.get("TIDELINE_METRICS_PORT")
    if not port:
        return None
    if not env.get("TIDELINE_REGISTRY"):
        raise ConfigError("TIDELINE_METRICS_PORT needs TIDELINE_REGISTRY (the store the metrics are read from)")
    from tideline.loop.metrics import serve

    registry = open_registry(env["TIDELINE_REGISTRY"], endpoint_url=env.get("AWS_ENDPOINT_URL") or None)
    _, bound = serve(registry, int(port), host=env.get("TIDELINE_METRICS_HOST", "0.0.0.0"))
    return bound


def start_alerts(env: Mapping[str, str], *, interval_s: float | None = None) -> threading.Thread | None:
    """With ``TIDELINE_REGISTRY`` set, a daemon thread runs ``tideline.loop.alerts.process`` every
    ``TIDELINE_ALERTS_INTERVAL`` seconds (60): it raises what the loop's ticks and the rollouts recorded and
    delivers to the apprise URLs of the settings (``TIDELINE_NOTIFICATIONS__<SEVERITY>``, from a Secret). A
    pass never raises; None when there is no registry."""
    if not env.get("TIDELINE_REGISTRY"):
        return None
    from tideline.config import load_settings
    from tideline.loop.alerts import process

    every = interval_s if interval_s is not None else float(env.get("TIDELINE_ALERTS_INTERVAL", "60"))
    settings = load_settings(registry=env["TIDELINE_REGISTRY"])
    registry = open_registry(env["TIDELINE_REGISTRY"], endpoint_url=env.get("AWS_ENDPOINT_URL") or None)

    def run() -> None:
        while True:
            process(registry, settings)
            time.sleep(every)

    thread = threading.Thread(target=run, name="tideline-alerts", daemon=True)
    thread.start()
    return thread


def on_reconcile(body: Mapping[str, Any], patch: Any, logger: logging.Logger, **_: Any) -> None:
    """create / resume / timer / annotation change: one reconcile (returns nothing: no kopf status)."""
    _get_reconciler().reconcile(body, patch, logger)


def on_delete(body: Mapping[str, Any], **_: Any) -> None:
    """kopf's delete handler: forget the deleted ModelRollout's cached state (nothing else to clean up)."""
    meta = body.get("metadata") or {}
    if _reconciler is not None:
        _reconciler.forget(meta.get("namespace") or "default", meta.get("name", ""))


def _register() -> None:
    try:
        import kopf
    except ImportError:  # pragma: no cover - kopf is a dependency
        return
    kopf.on.startup()(on_startup)
    kopf.on.create(GROUP, VERSION, PLURAL, id="rollout-create")(on_reconcile)
    kopf.on.resume(GROUP, VERSION, PLURAL, id="rollout-resume")(on_reconcile)
    kopf.on.field(GROUP, VERSION, PLURAL, id="rollout-action",
                  field=("metadata", "annotations", ACTION_ANNOTATION))(on_reconcile)
    kopf.timer(GROUP, VERSION, PLURAL, id="rollout-tick", interval=TICK_S, initial_delay=TICK_S)(on_reconcile)
    kopf.on.delete(GROUP, VERSION, PLURAL, id="rollout-forget", optional=True)(on_delete)


_register()
