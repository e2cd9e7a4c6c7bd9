"""Serving: a KServe custom predictor for registry versions (``python -m tideline.serving``).

Modules: ``predictor`` (the kserve Model, hot reload, shadow slot), ``server`` (ModelServer + middleware),
``validation`` (request checks), ``metrics`` (Prometheus names of the contract), ``predlog`` (prediction
log + ``read_predictions``), ``chaos`` (``TIDELINE_CHAOS`` fault injection). kserve is imported only by
``predictor`` and ``server``, so ``from tideline.serving.predlog import read_predictions`` stays light.
"""

from __future__ import annotations

from typing import Any

__all__ = ["read_predictions"]


def read_predictions(registry: Any, since: Any = None, until: Any = None) -> Any:
    """See ``tideline.serving.predlog.read_predictions``."""
    from tideline.serving.predlog import read_predictions as _read

    return _read(registry, since=since, until=until)
