"""``TidelinePredictor``: a KServe custom predictor (``kserve.Model``) serving one registry version.

* Loading: the ref (alias or version id) is resolved in the registry, every artifact is fetched and its
  sha256 verified by ``Registry.fetch`` BEFORE ``tideline.models.load_model`` reads it.
* Serving: kserve decodes v1 (dict) and v2 (``InferRequest``) bodies; ``preprocess`` validates them
  (``tideline.serving.validation``), ``predict`` runs the model captured when the request started and
  answers with the predictions, the positions the version's stored rule takes on them
  (``tideline.positions``, the same function as the offline evaluation) and the version that made them
  (also in the ``x-model-version`` header).
* Hot reload: a background task polls the registry every ``reload_interval`` seconds; when the alias
  moved, the new version is fetched, verified and loaded in a worker thread and swapped in with a single
  reference assignment. A failed reload keeps the old version serving and is counted and logged.
* Kill switch: the same poll reads the registry's kill switch; while it is on every answer is a flat
  position (0.0, ``"flat": true``, header ``x-tideline-flat``); the prediction log keeps the model's own
  predictions, so its live record goes on.
* Shadow slot: an optional second version runs on the same rows after the active response is computed,
  in its own worker thread with a timeout; its predictions are only logged and measured.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import shutil
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pandas as pd
from kserve import Model as KServeModel
from kserve.errors import InferenceError
from kserve.protocol.infer_type import InferOutput, InferRequest, InferResponse

from tideline.clock import utcnow
from tideline.errors import TidelineError, VersionNotFound
from tideline.models import Model, load_model
from tideline.positions import PositionRule, positions, stored_rule
from tideline.registry import Registry
from tideline.serving import metrics as m
from tideline.serving.bars import FeatureSource, is_bars_request, last_bar_features, parse_bars
from tideline.serving.chaos import Chaos, ChaosMonkey
from tideline.serving.predlog import PredictionLog
from tideline.serving.validation import (
    META_FIELDS,
    Batch,
    RequestError,
    Schema,
    _check_values,
    decode_v1,
    validate_v1,
    validate_v2,
)

log = logging.getLogger(__name__)

ROLES = ("active", "canary")
_LOAD_RETRY_MAX_S = 60.0  # serve_unloaded: the longest wait between two load attempts
_INLINE_ROWS = 512  # bigger batches are predicted in a worker thread so the event loop stays free
_MAX_SHADOW_INFLIGHT = 64


MAX_BARS = 200_000
"""Bars one request may send (e.g. 500 symbols x 400 bars); the body size limit applies too."""


@dataclass(frozen=True)
class Slot:
    """One loaded model version."""

    version: str
    model: Model
    role: str  # active | canary | shadow
    ref: str
    loaded_at: float
    rule: PositionRule = field(default_factory=PositionRule)
    """the version's position rule (``tideline.positions``), as stored with it"""
    features: FeatureSource | str = "no stored feature config"
    """how the version computes its features from bars (``tideline.serving.bars``), or why it cannot"""

    @property
    def columns(self) -> tuple[str, ...]:
        """The model's input columns, in its order."""
        return tuple(self.model.columns)


@dataclass(frozen=True)
class Serving:
    """What requests use; replaced as a whole (one reference assignment) on reload."""

    active: Slot
    shadow: Slot | None
    schema: Schema
    index: pd.Index  # schema.columns, built once (a DataFrame from a ready Index is ~4x faster)


@dataclass(frozen=True)
class Prepared:
    """A validated request on its way to ``predict``: the serving state it was checked against, rows, id, time."""
    serving: Serving
    batch: Batch
    v2: bool
    request_id: str
    started: datetime
    bars: bool = False  # the request sent bars: the answer names each symbol and its last bar


def load_slot(registry: Registry, ref: str, role: str, *, version: str | None = None,
              workdir: str | None = None) -> Slot:
    """Resolve ``ref`` (unless ``version`` is given), fetch with sha256 verification, load the model."""
    v = version or registry.resolve(ref)
    mv = registry.get(v)
    rule = stored_rule(mv.position, v)
    tmp = Path(tempfile.mkdtemp(prefix=f"tideline-{v}-", dir=workdir))
    try:
        dest = registry.fetch(v, tmp / "model")  # IntegrityError before anything is parsed
        model = load_model(dest)  # fully read into memory: the files can go
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if not model.columns:
        raise TidelineError(f"model {v} lists no input columns")
    if rule.needs_volatility and rule.vol_column not in model.columns:
        raise TidelineError(f"model {v} sizes positions by {rule.vol_column}, which is not among its inputs")
    log.info("loaded %s (%s, %d features) as %s from %r", v, model.family, len(model.columns), role, ref)
    features = FeatureSource.of(v, mv.feature_config, mv.feature_config_hash, model.columns)
    return Slot(version=v, model=model, role=role, ref=ref, loaded_at=time.time(), rule=rule, features=features)


def _schema(active: Slot, shadow: Slot | None, max_rows: int) -> Schema:
    req = active.columns
    extra = tuple(c for c in (shadow.columns if shadow else ()) if c not in set(req))
    return Schema(required=req, optional=extra, max_rows=max_rows)


class TidelinePredictor(KServeModel):
    """The kserve model. ``load()`` loads the slots (raising TidelineError on failure)."""

    def __init__(
        self,
        name: str,
        registry: Registry,
        *,
        ref: str = "production",
        role: str = "active",
        shadow_ref: str | None = None,
        reload_interval: float = 0.0,
        prediction_log: PredictionLog | None = None,
        max_rows: int = 10_000,
        chaos: Chaos | None = None,
        shadow_timeout: float = 2.0,
    ) -> None:
        super().__init__(name, return_response_headers=True)
        if role not in ROLES:
            raise ValueError(f"role must be one of {ROLES}")
        self.registry = registry
        self.ref = ref
        self.role = role
        self.shadow_ref = shadow_ref
        self.reload_interval = float(reload_interval)
        self.predlog = prediction_log
        self.max_rows = int(max_rows)
        self.monkey = ChaosMonkey(chaos) if chaos is not None and chaos.active else None
        self.shadow_timeout = float(shadow_timeout)
        self.serving: Serving | None = None
        self.engine = True  # kserve runs start_engine() inside the server's event loop: our background tasks
        self._tasks: set[asyncio.Task[Any]] = set()
        self._shadow_pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="tideline-shadow")
        self._shadow_inflight = 0
        self._retry_at: dict[tuple[str, str], tuple[float, int]] = {}  # (slot, version) -> (time, failures)
        self._request_prefix = uuid.uuid4().hex[:16]  # + a counter: unique without a syscall per request
        self._request_seq = 0
        self.flat: str | None = None
        """why every answer is flat (the registry's kill switch), or None."""
        self.load_error: str | None = None
        """why no version is loaded yet (``serve_unloaded``: the server answers, not ready), or None."""

    # -- loading -------------------------------------------------------------------------------
    @property
    def version(self) -> str:
        """The active slot's version (empty before ``load``)."""
        return self.serving.active.version if self.serving else ""

    def load(self) -> bool:
        """Read the kill switch, load the active slot (and the shadow slot, if its alias is set) and mark the
        predictor ready; returns True.

        Raises the registry's and the model's errors: ``VersionNotFound`` (unknown version or unset alias for the
        active ref), ``IntegrityError``, ``StorageUnavailable``, ``ModelError``, ``TidelineError``.
        """
        self._read_kill_switch(quiet=self.load_error is not None)  # waiting: the load's error says it
        active = load_slot(self.registry, self.ref, self.role)
        shadow = None
        if self.shadow_ref:
            try:
                shadow = load_slot(self.registry, self.shadow_ref, "shadow")
            except VersionNotFound as e:
                if not _is_unset_alias(e):
                    raise
                log.warning("shadow ref %r is not set; no shadow until it is", self.shadow_ref)
        self._install(active, shadow)
        self.ready = True
        return True

    def serve_unloaded(self, error: BaseException) -> None:
        """Start serving although ``load`` failed with ``error`` (an unreachable store, a missing or tampered
        version, a model that will not load): the server answers but is not ready (``healthy`` is False,
        every model request gets a 503 naming the reason), the reason is logged on one line, and
        ``start_engine`` retries the load with backoff until it succeeds. In Kubernetes the pod stays up and
        unready with the reason in its log, instead of a crash loop whose cause is in a previous container's log.
        """
        self.load_error = _one_line(error)
        self.ready = True  # kserve registers (and starts the engine of) ready models only; healthy() decides
        log.error("not ready: cannot load %r: %s; retrying every %.0f s at most", self.ref, self.load_error,
                  _LOAD_RETRY_MAX_S)

    async def healthy(self) -> bool:
        """Ready = a version is loaded (kserve's model and server readiness checks)."""
        return self.serving is not None

    async def _load_until_ready(self) -> None:
        loop = asyncio.get_running_loop()
        delay = min(max(self.reload_interval, 1.0), _LOAD_RETRY_MAX_S)
        while self.serving is None:
            await asyncio.sleep(delay)
            try:
                await loop.run_in_executor(None, self.load)
            except Exception as e:  # noqa: BLE001 - any failure: stay up, unready, and say why once
                m.MODEL_RELOADS.labels(outcome="failed").inc()
                reason = _one_line(e)
                if reason != self.load_error:
                    log.error("not ready: cannot load %r: %s", self.ref, reason)
                self.load_error = reason
                delay = min(delay * 2, _LOAD_RETRY_MAX_S)
        self.load_error = None
        m.MODEL_RELOADS.labels(outcome="ok").inc()
        log.warning("ready: serving %s for %r", self.version, self.ref)
        if self.reload_interval > 0:
            await self._reload_loop()

    def _install(self, active: Slot, shadow: Slot | None) -> None:
        old = self.serving
        schema = _schema(active, shadow, self.max_rows)
        self.serving = Serving(active, shadow, schema, pd.Index(schema.columns))  # the atomic swap
        for slot in (active, shadow):
            if slot is not None:
                m.MODEL_INFO.labels(version=slot.version, role=slot.role, ref=slot.ref).set(1)
        if old is not None:
            for slot, new in ((old.active, active), (old.shadow, shadow)):
                if slot is not None and (new is None or new.version != slot.version):
                    m.forget(m.MODEL_INFO, slot.version, slot.role, slot.ref)

    # -- background tasks (hot reload) -----------------------------------------------------------
    async def start_engine(self) -> None:
        """Start the background work inside the server's loop: the hot-reload poll and the prediction log writer."""
        if self.serving is None and self.load_error is not None:
            self._spawn(self._load_until_ready())
        else:
            self.ready = self.serving is not None
            if self.reload_interval > 0:
                self._spawn(self._reload_loop())
        if self.predlog is not None:
            self.predlog.start()

    def _spawn(self, coro: Any) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _reload_loop(self) -> None:
        while True:
            await asyncio.sleep(self.reload_interval)
            try:
                await self.check_reload()
            except Exception:  # pragma: no cover - the loop itself must never die
                log.exception("reload check failed")

    def _read_kill_switch(self, quiet: bool = False) -> None:
        try:
            ks = self.registry.kill_switch()
        except Exception as e:  # noqa: BLE001 - unreachable store: keep the last known state
            if not quiet:
                log.warning("registry unreachable while reading the kill switch (unchanged): %s", e)
            return
        flat = ks.reason if ks is not None else None
        if flat != self.flat:
            (log.error if flat else log.warning)("kill switch %s%s", "ON: answering flat: " if flat else "off",
                                                 flat or "")
        self.flat = flat
        m.KILL_SWITCH.set(1 if flat else 0)

    async def check_reload(self) -> None:
        """Resolve the refs; load and swap in whatever moved. Old versions keep serving on failure."""
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, self._read_kill_switch)
        serving = self.serving
        assert serving is not None
        wanted: dict[str, str | None] = {}
        for slot_name, ref in (("active", self.ref), ("shadow", self.shadow_ref)):
            if not ref:
                continue
            try:
                wanted[slot_name] = await loop.run_in_executor(None, self.registry.resolve, ref)
            except VersionNotFound as e:
                if slot_name == "shadow" and _is_unset_alias(e):
                    wanted["shadow"] = None
                else:
                    log.warning("cannot resolve %r in the registry (still serving %s): %s", ref,
                                serving.active.version if slot_name == "active" else "the old shadow", e)
            except Exception as e:
                log.warning("registry unreachable while polling %r (still serving): %s", ref, e)
        new_active, new_shadow = serving.active, serving.shadow
        changed = False
        if "active" in wanted and wanted["active"] != serving.active.version:
            slot = await self._reload("active", self.ref, self.role, wanted["active"], serving.active.version)
            if slot is not None:
                new_active, changed = slot, True
        if "shadow" in wanted:
            target = wanted["shadow"]
            current = serving.shadow.version if serving.shadow else None
            if target is None and current is not None:
                log.warning("shadow alias %r was unset: shadow %s stopped", self.shadow_ref, current)
                new_shadow, changed = None, True
            elif target is not None and target != current:
                slot = await self._reload("shadow", self.shadow_ref or "", "shadow", target, current)
                if slot is not None:
                    new_shadow, changed = slot, True
        if changed:
            self._install(new_active, new_shadow)

    async def _reload(self, slot_name: str, ref: str, role: str, version: str | None,
                      current: str | None) -> Slot | None:
        assert version is not None
        key = (slot_name, version)
        retry = self._retry_at.get(key)
        if retry is not None and time.monotonic() < retry[0]:
            return None
        loop = asyncio.get_running_loop()
        try:
            slot = await loop.run_in_executor(
                None, lambda: load_slot(self.registry, ref, role, version=version))
        except Exception as e:
            failures = (retry[1] if retry else 0) + 1
            backoff = min(60.0, max(self.reload_interval, 0.5) * 2 ** (failures - 1))
            self._retry_at[key] = (time.monotonic() + backoff, failures)
            m.MODEL_RELOADS.labels(outcome="failed").inc()
            log.error("reload of %s slot %r -> %s refused, still serving %s (retry in %.1fs): %s",
                      slot_name, ref, version, current or "nothing", backoff, e)
            return None
        # the slot moved on: forget the backoff of versions it was refusing (bounded bookkeeping)
        self._retry_at = {k: v for k, v in self._retry_at.items() if k[0] != slot_name}
        m.MODEL_RELOADS.labels(outcome="ok").inc()
        log.warning("hot reload: %s slot %r moved %s -> %s", slot_name, ref, current, version)
        return slot

    # -- kserve handlers ---------------------------------------------------------------------------
    def get_input_types(self) -> list[dict[str, Any]]:
        """``GET /v2/models/<name>``: one FP64 tensor of shape [-1] per feature the active model takes (in
        its order), then the optional BYTES ``symbol`` and ``timestamp`` tensors."""
        serving = self.serving
        features = serving.schema.required if serving else ()
        return ([{"name": c, "datatype": "FP64", "shape": [-1]} for c in features]
                + [{"name": c, "datatype": "BYTES", "shape": [-1]} for c in META_FIELDS])

    def get_output_types(self) -> list[dict[str, Any]]:
        """``GET /v2/models/<name>`` outputs: FP64 ``prediction`` and ``position`` tensors of shape [-1]."""
        return [{"name": "prediction", "datatype": "FP64", "shape": [-1]},
                {"name": "position", "datatype": "FP64", "shape": [-1]}]

    def validate(self, payload: Any) -> Any:
        """Returns ``payload`` unchanged: ``preprocess`` validates (kserve's own checks would answer 500)."""
        return payload  # preprocess did the validation (kserve's own checks would 500 on odd bodies)

    async def preprocess(self, payload: Any, headers: dict[str, str] | None = None) -> Prepared:
        """Validate a v1 (JSON) or v2 request against the current schema and give it a request id.

        Raises ``RequestError`` (a 4xx the client sees, or 503 before a model is loaded).
        """
        serving = self.serving
        if serving is None:
            raise RequestError(503, "no model loaded yet")
        if isinstance(payload, InferRequest):
            batch = validate_v2(payload.inputs, serving.schema)
            v2, rid = True, payload.id
        else:
            v2, rid, bars = False, None, False
            # the body undecoded (the gateway has kserve hand v1 bodies over as they came): the common body is
            # parsed and validated in one pass; any other is parsed here and validated row by row
            batch = decode_v1(payload, serving.schema) if isinstance(payload, bytes | bytearray | str) else None
            if batch is None:
                if isinstance(payload, bytes | bytearray | str):
                    try:
                        payload = orjson.loads(payload)
                    except orjson.JSONDecodeError as e:
                        raise RequestError(400, f"the body is not valid JSON: {e}") from None
                bars = is_bars_request(payload)
                batch = bars_batch(payload, serving) if bars else validate_v1(payload, serving.schema)
        request_id = (headers or {}).get("x-request-id") or rid or self._next_request_id()
        return Prepared(serving, batch, v2, _header_safe(str(request_id)[:128]), utcnow(), bars=not v2 and bars)

    def _next_request_id(self) -> str:
        self._request_seq += 1
        return f"{self._request_prefix}-{self._request_seq:x}"

    async def predict(self, payload: Prepared, headers: dict[str, str] | None = None,
                      response_headers: dict[str, str] | None = None) -> Any:
        """Predict the rows with the active model (log them, start the shadow copy) and answer in the request's
        protocol, with ``x-model-version`` and ``x-request-id``; flat (zeros) while the kill switch is on.

        Raises kserve's ``InferenceError`` (a 500) when the model fails or gives missing or non-finite predictions,
        or chaos injects a failure.
        """
        serving, batch = payload.serving, payload.batch
        active = serving.active
        if response_headers is not None:
            response_headers["x-model-version"] = active.version
            response_headers["x-request-id"] = payload.request_id
        if self.monkey is not None:
            delay = self.monkey.delay_s()
            if delay:
                await asyncio.sleep(delay)
            if self.monkey.fail():
                raise InferenceError(f"chaos: injected failure ({self.monkey.chaos.describe()})")
        # the request columns start with the active model's, in its order: no DataFrame needed
        n_req = len(serving.schema.required)
        X = batch.X if batch.X.shape[1] == n_req else batch.X[:, :n_req]
        try:
            if batch.n <= _INLINE_ROWS:
                preds = active.model.predict_array(X)
            else:
                preds = await asyncio.get_running_loop().run_in_executor(None, active.model.predict_array, X)
        except TidelineError as e:
            raise InferenceError(f"model {active.version} failed to predict: {e}") from None
        preds = np.asarray(preds, dtype=np.float64).reshape(-1)
        if preds.shape[0] != batch.n:
            raise InferenceError(
                f"model {active.version} returned {preds.shape[0]} predictions for {batch.n} rows")
        finite = np.isfinite(preds)
        if not finite.all():
            bad = int((~finite).sum())
            raise InferenceError(
                f"model {active.version} produced {bad} non-finite prediction(s) for {batch.n} row(s); "
                "the model is broken, not the request"
            )
        m.observe_predictions(preds, active.version, active.role)
        if self.predlog is not None:
            self.predlog.record(request_id=payload.request_id, X=X, symbols=batch.symbols,
                                bar_times=batch.bar_times, predictions=preds, version=active.version,
                                role=active.role, at=payload.started, bars=batch.bars)
        if serving.shadow is not None:
            self._start_shadow(serving.shadow, payload)
        vol = X[:, active.columns.index(active.rule.vol_column)] if active.rule.needs_volatility else None
        pos = positions(preds, active.rule, vol)
        if self.flat is not None:  # the kill switch: the model's predictions are logged, not served
            preds, pos = np.zeros_like(preds), np.zeros_like(pos)
            if response_headers is not None:
                response_headers["x-tideline-flat"] = "1"
        if payload.v2:
            return InferResponse(
                response_id=payload.request_id, model_name=self.name, model_version=active.version,
                infer_outputs=[InferOutput(name="prediction", shape=[batch.n], datatype="FP64", data=preds.tolist()),
                               InferOutput(name="position", shape=[batch.n], datatype="FP64", data=pos.tolist())],
                parameters={"role": active.role, **({"flat": True} if self.flat is not None else {})},
            )
        out = {"predictions": preds.tolist(), "positions": pos.tolist(), "model_name": self.name,
               "model_version": active.version, "role": active.role}
        if payload.bars:  # one answer per symbol, for its last bar
            out["symbols"] = list(batch.symbols)
            out["timestamps"] = [str(t) for t in batch.bar_times.astype("datetime64[s]")]
        if self.flat is not None:
            out["flat"] = True
        return out

    # -- shadow ------------------------------------------------------------------------------------
    def _start_shadow(self, shadow: Slot, payload: Prepared) -> None:
        """Fire and forget: the task starts after this request's response is on its way."""
        if self._shadow_inflight >= _MAX_SHADOW_INFLIGHT:
            m.SHADOW_REQUESTS.labels(version=shadow.version, outcome="dropped").inc()
            return
        self._shadow_inflight += 1
        try:
            self._spawn(self._run_shadow(shadow, payload))
        except Exception:  # pragma: no cover - no running loop
            self._shadow_inflight -= 1

    async def _run_shadow(self, shadow: Slot, payload: Prepared) -> None:
        batch = payload.batch
        try:
            fut = asyncio.get_running_loop().run_in_executor(
                self._shadow_pool, _shadow_predict, shadow, batch, payload.serving.index)
            preds, X = await asyncio.wait_for(fut, self.shadow_timeout)
        except TimeoutError:
            m.SHADOW_REQUESTS.labels(version=shadow.version, outcome="timeout").inc()
            log.warning("shadow %s took longer than %.1fs; dropped", shadow.version, self.shadow_timeout)
            return
        except Exception as e:
            m.SHADOW_REQUESTS.labels(version=shadow.version, outcome="error").inc()
            log.warning("shadow %s failed: %s", shadow.version, _one_line(e))
            return
        finally:
            self._shadow_inflight -= 1
        m.child(m.SHADOW_REQUESTS, shadow.version, "ok").inc()
        m.observe_predictions(preds, shadow.version, "shadow")
        if self.predlog is not None:
            self.predlog.record(request_id=payload.request_id, X=X, symbols=batch.symbols,
                                bar_times=batch.bar_times, predictions=preds, version=shadow.version,
                                role="shadow", at=payload.started, bars=batch.bars)

    def stop(self) -> None:
        """Cancel the background tasks, drop queued shadow work and stop the kserve model."""
        for task in list(self._tasks):
            task.cancel()
        self._shadow_pool.shutdown(wait=False, cancel_futures=True)
        super().stop()


def bars_batch(payload: dict[str, Any], serving: Serving) -> Batch:
    """A bars request as the batch of each symbol's last-bar features: the active version's columns by its
    own feature config, then a shadow version's extra columns by its own (``tideline.serving.bars``)."""
    instances = payload["instances"]
    extra_keys = [k for k in payload if k not in ("instances", "parameters")]
    if extra_keys:
        raise RequestError(400, f"unexpected top-level key(s) {', '.join(map(repr, extra_keys[:8]))}; "
                           "send only \"instances\"")
    if len(instances) > MAX_BARS:
        raise RequestError(422, f"{len(instances)} bars in one request; the limit is {MAX_BARS}")
    bars = parse_bars(instances)
    schema, parts, symbols, times, counts = serving.schema, [], None, None, None
    for slot, cols in ((serving.active, schema.required), (serving.shadow, schema.optional)):
        if slot is None or not cols:
            continue
        if isinstance(slot.features, str):
            if slot is serving.shadow:  # the shadow cannot follow: it gets no values (it is skipped, not failed)
                parts.append(np.full((len(parts[0]), len(cols)), np.nan))
                continue
            raise RequestError(422, f"this version cannot compute its features from bars ({slot.features}); "
                               "send the features instead")
        last = last_bar_features(bars, slot.features, cols)
        if symbols is None:
            symbols, times, counts = last.symbols, last.bar_times, last.bars
        parts.append(last.X)
    X = parts[0] if len(parts) == 1 else np.hstack(parts)
    if symbols is None:
        raise RequestError(422, "no features to compute")
    _check_values(X[:, :len(schema.required)], schema.columns, "symbol {row}")
    return Batch(X=X, columns=schema.columns, symbols=list(symbols), bar_times=np.asarray(times), bars=counts)


def _shadow_predict(shadow: Slot, batch: Batch, index: pd.Index) -> tuple[np.ndarray, np.ndarray]:
    """(predictions, the shadow's own features in its model's order)."""
    cols = shadow.columns
    if batch.columns[: len(cols)] == cols:  # same features as the active model (the usual case)
        X = batch.X[:, : len(cols)]
        preds = shadow.model.predict_array(X)
    else:
        frame = pd.DataFrame(batch.X, columns=index, copy=False)
        need = [c for c in cols if c in frame.columns]
        if len(need) != len(cols) or frame[need].isna().to_numpy().any():
            missing = [c for c in cols if c not in frame.columns or frame[c].isna().any()]
            raise TidelineError(
                f"the request lacks {len(missing)} feature(s) the shadow needs: {missing[:5]}")
        X = frame[list(cols)].to_numpy(dtype=np.float64)
        preds = shadow.model.predict(frame)
    preds = np.asarray(preds, dtype=np.float64).reshape(-1)
    if preds.shape[0] != batch.n or not np.isfinite(preds).all():
        raise TidelineError(f"shadow {shadow.version} produced non-finite or missing predictions")
    return preds, X


def _header_safe(text: str) -> str:
    """The request id goes back in the ``x-request-id`` header: printable ASCII only (a v2 ``id`` may hold
    anything; a header value that cannot be encoded would turn the answer into a 500)."""
    if text.isascii() and text.isprintable():
        return text
    return "".join(c if " " <= c <= "~" else "_" for c in text)


def _is_unset_alias(e: VersionNotFound) -> bool:
    return "is not set" in e.message


def _one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}"[:300]
