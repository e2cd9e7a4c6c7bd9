"""The retraining pipeline (re-exported from ``tideline.training.kfp.pipeline``) and its compiled IR ``retrain.yaml``."""

from pipelines.retrain import retrain_pipeline  # noqa: F401

__all__ = ["retrain_pipeline"]
