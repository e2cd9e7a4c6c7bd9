"""Training: the retraining cycle and how it runs.

``cycle`` (the steps in-process: validate, features, train every family, evaluate, gate, register, promote),
``steps`` (the same steps over files, one per pipeline component), ``kfp`` (the KFP components and pipeline)
and ``orchestration`` (compile, run with ``kfp.local`` or submit to a KFP server). Nothing here knows how a
run was triggered.
"""
