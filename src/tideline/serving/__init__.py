"""Serving: a KServe custom predictor for registry versions (``python -m tideline.serving``).

Modules: ``predictor`` (the kserve Model, hot reload, shadow slot), ``server`` (ModelServer + middleware),
``validation`` (request checks), ``metrics`` (Prometheus names of the contract), ``predlog`` (the prediction
log's writer; its reader is ``tideline.monitoring.predictions.read_predictions``), ``chaos``
(``TIDELINE_CHAOS`` fault injection). kserve is imported only by ``predictor`` and ``server``.
"""
