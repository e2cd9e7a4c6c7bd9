"""The rollout controller killed at every crash point (and SIGKILLed at phases), restarted: consistent ends.

The harness lives in ``tests/reliability/controller.py`` (a reliability scenario module). These tests run
its quick form, and show that it really detects a controller that is not crash safe: a variant that skips
the recovery of unconfirmed actions ends inconsistent after some kills (and only after kills), and one
that applies actions BEFORE persisting the status is caught running ahead of the stored document.
"""

from __future__ import annotations

from pathlib import Path

import jsonschema
import pytest
import yaml

from reliability.controller import (
    KINDS,
    NAME,
    NS,
    SPEC,
    T0,
    CRPlace,
    Kill,
    Killer,
    MemStore,
    Observer,
    SimBackend,
    SimServing,
    base_registry,
    crash_sweep,
    run_one,
    sigkill_one,
)
from test_crd import CRD_PATH, strict
from tideline.clock import FakeClock
from tideline.registry import Registry
from tideline.registry.signing import Signing
from tideline.rollout import machine as m
from tideline.rollout.backends import apply_action
from tideline.rollout.controller import RolloutController, RolloutDoc
from tideline.rollout.cr import GROUP, PLURAL


class SkipsRecovery(RolloutController):
    """Broken: trusts that the last pass's actions were applied (no ``desired_actions`` re-apply)."""

    def _reconcile(self, doc: RolloutDoc, etag: str) -> m.RolloutStatus:
        doc.applied_generation = max(doc.applied_generation, doc.status.generation)
        return super()._reconcile(doc, etag)


class AppliesBeforePersisting(RolloutController):
    """Broken: applies a transition's actions first and records the new status afterwards."""

    def _reconcile(self, doc: RolloutDoc, etag: str) -> m.RolloutStatus:
        now = self.clock.now()
        spec = doc.spec
        if doc.owner not in (None, self.owner) and doc.lease_until > now:
            return doc.status
        if doc.status.terminal and doc.applied_generation >= doc.status.generation:
            return doc.status
        doc.owner, doc.lease_until = self.owner, now + 3 * spec.interval_s
        etag = self._write(doc, etag)
        if doc.applied_generation < doc.status.generation:
            done, etag = self._apply(doc, etag, m.desired_actions(spec, doc.status))
            if not done or doc.status.terminal:
                return doc.status
        analysis = self._analyze(doc, now) if doc.status.phase in (m.Phase.SHADOW, m.Phase.CANARY) else None
        req = doc.requested_action
        new, actions = m.advance(spec, doc.status, analysis, now, req)  # type: ignore[arg-type]
        if doc.requested_action:
            doc.add_event(now, f"manual {doc.requested_action} requested")
        doc.requested_action = None
        if new.message != doc.status.message:
            doc.add_event(now, new.message)
        for a in actions:  # the bug: the world moves before the decision is recorded
            apply_action(self.backend, a, spec)
        doc.status, doc.applied_generation = new, new.generation
        self._write(doc, etag)
        return doc.status


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> MemStore:
    store = MemStore()
    base_registry(tmp_path_factory.mktemp("crash-base"), store)
    return store


def test_crash_points_cover_document_writes_actions_and_registry_moves(base: MemStore) -> None:
    assert issubclass(Kill, BaseException) and not issubclass(Kill, Exception)
    seen: dict[str, set[str]] = {}
    for kind in KINDS:
        out = run_one(kind, None, base)
        assert out.problems == [] and out.killed_at is None and out.points == len(out.labels) > 20, out
        seen[kind] = set(out.labels)
    for what in ("document write", "set_weight", "set_shadow", "deploy_canary", "set_active", "promote",
                 "registry promote", "registry set_status", "registry set_alias", "mark"):
        assert {f"before {what}", f"after {what}"} <= seen["good"], what
    assert {"before retire", "after remove_canary", "after registry set_alias"} <= seen["bad"]
    assert "before promote" not in seen["bad"] | seen["manual"]


def test_harness_catches_a_controller_that_skips_recovery(tmp_path: Path, base: MemStore) -> None:
    t = crash_sweep("good", tmp_path, quick=True, controller_cls=SkipsRecovery, base=base)
    assert not any("no kill" in p for p in t.problems), t.problems  # fine when nothing dies ...
    assert 0 < t.lost < t.kills, t  # ... inconsistent ends after some kills (mid-transition ones)
    # e.g. killed after Canary 10 was stored, before its actions: never deployed, never promoted
    assert any("expected Promoted" in p for p in t.problems), t.problems


def test_harness_catches_a_controller_that_applies_before_persisting(tmp_path: Path, base: MemStore) -> None:
    t = crash_sweep("good", tmp_path, quick=True, controller_cls=AppliesBeforePersisting, base=base)
    assert t.lost > 0, t
    assert any("ahead of the document" in p for p in t.problems), t.problems


def test_sigkill_drill_reports_a_phase_it_could_not_kill_at(tmp_path: Path) -> None:
    # a phase the rollout never reaches cannot be "killed at": the drill reports it instead of passing
    problems, where = sigkill_one("bad", "Canary 50", tmp_path / "x")
    assert where == "never reached"
    assert any("not killed at Canary 50" in p for p in problems), problems


def test_the_cr_status_store_has_the_same_crash_points_plus_the_request_removal(base: MemStore) -> None:
    """The drill on a ModelRollout: every status write is a crash point, like every document write, and so
    is the removal of a consumed kubectl request (the annotation); every status written fits the CRD."""
    for kind in KINDS:
        doc_run, cr_run = run_one(kind, None, base), run_one(kind, None, base, place="cr")
        assert cr_run.problems == [] and doc_run.problems == [], (kind, cr_run.problems)
        extra = [lab for lab in cr_run.labels if "request removal" in lab]
        assert [lab for lab in cr_run.labels if "request removal" not in lab] == doc_run.labels, kind
        assert len(extra) == (2 if kind == "manual" else 0), kind


def test_the_cr_drill_writes_only_what_the_crd_admits(base: MemStore) -> None:
    schema = strict(yaml.safe_load(CRD_PATH.read_text())["spec"]["versions"][0]["schema"]["openAPIV3Schema"])
    store = base.copy()
    reg = Registry(store, signing=Signing.off())
    place = CRPlace(store, reg)
    place.create(SPEC, T0)
    serving = SimServing()
    obs = Observer(place.load, reg, serving)
    clock = FakeClock(T0, on_sleep=serving.serve)
    seen: list[str] = []

    def validate(verb: str, plural: str, name: str) -> None:  # before each call: what the last one left
        obj = place.api.objects[(GROUP, NS, PLURAL, NAME)]
        jsonschema.Draft4Validator(schema).validate(obj)
        seen.append((obj.get("status") or {}).get("phase", ""))

    place.api.on_call = validate
    RolloutController(NAME, SimBackend(reg, serving, Killer(None), obs), place.status_store(Killer(None), obs),
                      clock).run(max_iterations=60)
    obj = place.api.objects[(GROUP, NS, PLURAL, NAME)]
    jsonschema.Draft4Validator(schema).validate(obj)
    st = obj["status"]
    assert st["phase"] == "Promoted" and st["appliedGeneration"] == st["machineGeneration"]
    assert {"Shadow", "Canary", "Promoting"} <= set(seen)
