"""Monitoring: what production does live — the prediction log, realized outcomes, live metrics, change
detection and drift.

* ``predictions``: the prediction log's layout and columns, and its one reader (``read_predictions``); the
  predictor's writer (``tideline.serving.predlog``) uses the same layout.
* ``outcomes``: the live-outcome types the rollout analysis and the guard judge.
* ``feedback``: logged predictions joined with what the market did next; live metrics per served version
  (the ``live-metrics.json`` attachment the decay rule reads); ``outcomes_from_log`` for rollouts.
* ``drift``: feature drift against the training reference (Evidently) and the change detectors (ADWIN,
  Page-Hinkley) over live errors.

Monitoring never imports a rollout, the loop or the pipeline (an import-linter contract): the rollout and the
triggers import it.
"""
