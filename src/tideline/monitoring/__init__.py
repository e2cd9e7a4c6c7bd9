"""Monitoring: what production does live — realized outcomes of served predictions, live metrics, drift.

``outcomes`` holds the live-outcome types the rollout analysis and the guard judge; the prediction-log
joins that fill them (``tideline.feedback``), the drift checks (``tideline.drift``) and the change
detectors are to move here too (issue 18). Monitoring never imports a rollout: the rollout imports these
types.
"""
