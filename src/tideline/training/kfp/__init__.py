"""The retraining cycle as a Kubeflow Pipelines (KFP v2) pipeline.

``tideline.training.kfp.components`` holds one ``@dsl.component`` per step (each calls one function of
``tideline.training.steps``); ``tideline.training.kfp.pipeline`` composes them into ``retrain_pipeline``. The same definition
runs locally with ``kfp.local`` (``tideline.training.orchestration.run_local``) and on a cluster (``submit``,
``schedule``). The repository's top-level ``components/`` and ``pipelines/`` re-export these and hold the
compiled ``pipelines/retrain.yaml``; the definitions live in the package so that an installed tideline (a
container, a trigger service) can compile and submit the pipeline without a checkout.

(``from kfp import dsl`` inside this package still means the ``kfp`` distribution: imports are absolute.)
"""
