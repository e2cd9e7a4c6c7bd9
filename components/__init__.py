"""The retraining pipeline's KFP components (re-exported from ``tideline.training.kfp.components``)."""

from components.retrain_components import *  # noqa: F401,F403
from components.retrain_components import __all__  # noqa: F401
