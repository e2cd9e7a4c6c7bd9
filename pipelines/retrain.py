"""The retraining pipeline: ``retrain_pipeline`` (defined in ``tideline.training.kfp.pipeline``).

``pipelines/retrain.yaml`` next to this file is its compiled KFP IR; a test fails when it is stale.
Regenerate it with ``tideline pipeline compile`` or ``.venv/bin/python pipelines/retrain.py``.
Run it locally with ``tideline pipeline run --local --synthetic``; on a cluster with
``tideline pipeline submit --host URL --data s3://...`` or ``schedule``.
"""

from pathlib import Path

from tideline.training.kfp.pipeline import PIPELINE_NAME, retrain_pipeline

__all__ = ["PIPELINE_NAME", "retrain_pipeline"]

if __name__ == "__main__":
    from tideline.training.orchestration import compile_pipeline

    print(compile_pipeline(Path(__file__).resolve().with_name("retrain.yaml")))
