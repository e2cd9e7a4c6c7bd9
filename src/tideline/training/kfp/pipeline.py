"""``retrain_pipeline``: the retraining cycle as one KFP v2 pipeline (composition only).

ingest -> validate -> features -> { drift_report, train x family (ParallelFor) } -> evaluate_and_select
(fan-in with dsl.Collected) -> register -> gate -> [If approved] request_rollout.
"""

from kfp import dsl

from tideline.config import DEFAULT_FAMILIES
from tideline.training.kfp.components import (
    drift_report,
    evaluate_and_select,
    features,
    gate,
    ingest,
    register,
    request_rollout,
    train,
    validate,
)

PIPELINE_NAME = "tideline-retrain"


@dsl.pipeline(name=PIPELINE_NAME,
              description="Retrain every model family, evaluate honestly against production on the same "
                          "hold-out, register every candidate, hand the best approved one to rollout.")
def retrain_pipeline(
    registry_uri: str,
    source: str = "",
    synthetic_json: str = "",
    families: list = list(DEFAULT_FAMILIES),  # noqa: B006 - KFP reads the default into the pipeline spec
    settings_json: str = "{}",
    quarantine: bool = False,
    rollout_mode: str = "rollout",
    reason: str = "manual",
) -> str:
    """The retraining cycle as a KFP v2 pipeline: ingest, validate, features, a drift report and one
    train task per family, then evaluate and select, register, gate, and (approved only) request_rollout.

    Composition only: every task runs a ``tideline.training.kfp.components`` component, none is cached. The pipeline's
    output is the register task's output.
    """
    bars = ingest(source=source, synthetic_json=synthetic_json, settings_json=settings_json)
    checked = validate(bars=bars.outputs["bars"], quarantine=quarantine, settings_json=settings_json)
    feats = features(clean=checked.outputs["clean"], settings_json=settings_json)
    drift = drift_report(dataset=feats.outputs["dataset"])

    with dsl.ParallelFor(families) as family:
        trained = train(dataset=feats.outputs["dataset"], family=family, settings_json=settings_json,
                        registry_uri=registry_uri)

    judged = evaluate_and_select(
        dataset=feats.outputs["dataset"], clean=checked.outputs["clean"],
        results=dsl.Collected(trained.outputs["result"]), registry_uri=registry_uri, settings_json=settings_json,
    )
    registered = register(
        dataset=feats.outputs["dataset"], decisions=judged.outputs["decisions"],
        models=dsl.Collected(trained.outputs["model"]), registry_uri=registry_uri, settings_json=settings_json,
    )
    decision = gate(registered=registered.outputs["registered"])
    with dsl.If(decision.output == "approved", name="policy-approved"):
        rollout = request_rollout(registered=registered.outputs["registered"], registry_uri=registry_uri,
                                  mode=rollout_mode, settings_json=settings_json, reason=reason)

    # every step reads or writes the registry or fresh data: never reuse a cached result
    for task in (bars, checked, feats, drift, trained, judged, registered, decision, rollout):
        task.set_caching_options(False)
    return registered.outputs["Output"]
