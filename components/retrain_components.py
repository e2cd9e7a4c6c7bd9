"""The KFP v2 components of the retraining pipeline, one per step.

The definitions live in the installed package (``tideline.training.kfp.components``) so that an installed tideline
(a container image, the trigger service) can compile and submit the pipeline without this checkout; this
module re-exports them for readers of the repository. Each component body calls one function of
``tideline.training.steps``; the image is ``TIDELINE_IMAGE`` (default ``ghcr.io/tideline/tideline:<TIDELINE_VERSION>``).
"""

from tideline.training.kfp.components import (
    ALL_COMPONENTS,
    DEFAULT_IMAGE,
    IMAGE,
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

__all__ = [
    "ALL_COMPONENTS", "DEFAULT_IMAGE", "IMAGE", "drift_report", "evaluate_and_select", "features", "gate",
    "ingest", "register", "request_rollout", "train", "validate",
]
