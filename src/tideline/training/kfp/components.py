"""One KFP component per retraining step. Each body calls one function of ``tideline.training.steps``.

Rules for this module (KFP embeds every component's source in the compiled pipeline):
- imports go INSIDE the function bodies (the container runs the function on its own);
- no ``from __future__ import annotations`` (KFP reads the annotations as types);
- ``IMAGE`` is read from ``TIDELINE_IMAGE`` when this module is imported (the image must have tideline
  and kfp installed: ``install_kfp_package=False``).
"""

import os

from kfp import dsl
from kfp.dsl import HTML, Artifact, Dataset, Input, Metrics, Model, Output

DEFAULT_IMAGE = "ghcr.io/tideline/tideline:" + __import__("tideline").__version__  # = TIDELINE_VERSION (tested)
IMAGE = os.environ.get("TIDELINE_IMAGE") or DEFAULT_IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def ingest(source: str, synthetic_json: str, settings_json: str, bars: Output[Dataset],
           metrics: Output[Metrics]):
    """Read raw bars: a file, a directory, s3://bucket/prefix, or the synthetic market (unvalidated)."""
    from tideline.training import steps

    info = steps.ingest(bars.path, source, synthetic_json, steps.settings_from_json(settings_json).endpoint_url())
    bars.metadata.update({"source": info["source"], "rows": info["rows"]})
    metrics.log_metric("rows", info["rows"])


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def validate(bars: Input[Dataset], quarantine: bool, settings_json: str, clean: Output[Dataset],
             report: Output[Artifact], metrics: Output[Metrics]):
    """Validate the bars; strict by default (any defect, or data quality below the threshold, fails the run
    before anything is registered). The data quality score of each symbol is in the metrics."""
    from tideline.training import steps

    info = steps.validate(bars.path, clean.path, report.path, quarantine, settings_json)
    quality = info["data_quality"]["symbols"]
    clean.metadata.update({"data_hash": info["data_hash"], "rows": info["rows"], "symbols": info["symbols"],
                           "data_quality": {sym: q["score"] for sym, q in quality.items()}})
    for key in ("rows", "rows_input", "rows_quarantined"):
        metrics.log_metric(key, info[key])
    if quality:
        metrics.log_metric("data_quality_min", min(q["score"] for q in quality.values()))


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def features(clean: Input[Dataset], settings_json: str, dataset: Output[Dataset], metrics: Output[Metrics]):
    """Features + labels, the hold-out window and the purged walk-forward folds."""
    from tideline.training import steps

    info = steps.features(clean.path, settings_json, dataset.path)
    dataset.metadata.update({"rows": info["dataset_rows"], "features": info["features"],
                             "holdout": info["holdout"], "training_end": info["training_end"]})
    for key in ("dataset_rows", "features", "training_rows", "walk_forward_folds"):
        metrics.log_metric(key, info[key])
    metrics.log_metric("holdout_rows", info["holdout"]["rows"])


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def drift_report(dataset: Input[Dataset], report: Output[HTML], metrics: Output[Metrics]):
    """HTML drift report of the hold-out rows' features against the development rows."""
    from tideline.training import steps

    summary = steps.drift_report(dataset.path, report.path)
    for key, value in summary.items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            metrics.log_metric(key, value)


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def train(dataset: Input[Dataset], family: str, settings_json: str, model: Output[Model],
          result: Output[Artifact], metrics: Output[Metrics], registry_uri: str = ""):
    """Purged walk-forward + final fit of one model family; hold-out figures as metrics (a policy family
    warm-starts from, and fine-tunes on the experiences in, the registry at ``registry_uri``)."""
    from tideline.training import steps

    figures = steps.train(dataset.path, family, settings_json, model.path, result.path, registry_uri=registry_uri)
    if "failed" in figures:  # recorded; the run goes on with the other families
        model.metadata.update({"family": family, "failed": figures["failed"]})
        result.metadata.update({"family": family, "failed": figures["failed"]})
        return
    model.metadata.update({"family": family, "holdout_sharpe": figures["holdout_sharpe"]})
    result.metadata["family"] = family
    for key, value in figures.items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            metrics.log_metric(key, value)


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def evaluate_and_select(dataset: Input[Dataset], clean: Input[Dataset], results: Input[list[Artifact]],
                        registry_uri: str, settings_json: str, decisions: Output[Artifact],
                        metrics: Output[Metrics]):
    """Score production on the same hold-out rows; judge every candidate (significance + policy)."""
    from tideline.training import steps

    out = steps.evaluate_and_select(dataset.path, clean.path, [r.path for r in results], registry_uri,
                                    settings_json, decisions.path)
    decisions.metadata.update({"production": out["production_version"], "approved": out["approved"]})
    if out["production_sharpe"] is not None:
        metrics.log_metric("production_sharpe", out["production_sharpe"])
    for family, c in out["candidates"].items():
        metrics.log_metric(f"{family}_sharpe", c["sharpe"])
        metrics.log_metric(f"{family}_approved", int(c["approved"]))
        metrics.log_metric(f"{family}_deflated_sharpe", c["deflated_sharpe"])
        if c["pbo"] is not None:  # one figure for the whole cycle
            metrics.log_metric("pbo", c["pbo"])
    metrics.log_metric("approved_candidates", len(out["approved"]))
    metrics.log_metric("failed_families", len(out["failed"]))


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def register(dataset: Input[Dataset], decisions: Input[Artifact], models: Input[list[Model]],
             registry_uri: str, settings_json: str, registered: Output[Artifact]) -> str:
    """Register every candidate with its lineage and decision; returns the summary as JSON."""
    import json

    from tideline.training import steps

    out = steps.register(dataset.path, decisions.path, [m.path for m in models], registry_uri, settings_json,
                         registered.path)
    registered.metadata.update({"versions": out["versions"], "decision": out["decision"]})
    return json.dumps(out, sort_keys=True)


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def gate(registered: Input[Artifact]) -> str:
    """The promotion gate: "approved" when the policy approved a registered candidate, else "rejected"."""
    from tideline.training import steps

    return steps.gate(registered.path)


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def request_rollout(registered: Input[Artifact], registry_uri: str, mode: str, settings_json: str,
                    reason: str, rollout: Output[Artifact]) -> str:
    """Set the registry's candidate alias (mode "rollout") or promote directly (mode "direct")."""
    from tideline.training import steps

    out = steps.rollout(registered.path, registry_uri, mode, settings_json, rollout.path, reason)
    rollout.metadata.update(out)
    return out["version"]


ALL_COMPONENTS = (ingest, validate, features, drift_report, train, evaluate_and_select, register, gate,
                  request_rollout)
