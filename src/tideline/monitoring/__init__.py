"""Monitoring: what production does live — the prediction log, realized outcomes, live metrics, drift.

* ``predictions``: the prediction log's layout and columns, and its one reader (``read_predictions``); the
  predictor's writer (``tideline.serving.predlog``) uses the same layout.
* ``outcomes``: the live-outcome types the rollout analysis and the guard judge.

The prediction-log joins that fill them (``tideline.feedback``), the drift checks (``tideline.drift``) and the
change detectors are to move here too (issue 18). Monitoring never imports a rollout: the rollout imports
these types.
"""
