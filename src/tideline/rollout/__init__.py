"""Rollouts: shadow -> canary steps -> promote, or automatic rollback (Flagger's split, one scheduler loop).

* ``analysis``   pure: metrics snapshots and live outcomes in, ``AnalysisResult`` (pass/fail/inconclusive) out;
* ``machine``    pure: ``RolloutSpec``, ``RolloutStatus``, ``advance(...) -> (status, actions)``;
* ``controller`` the loop: status in the registry store (``rollouts/<name>.json``, compare-and-swap),
                 analysis, machine, then the actions through a backend;
* ``backends``   the ``Backend`` protocol and ``local`` (predictor processes + ``router``).

Import the modules themselves (``from tideline.rollout.controller import RolloutController``): this package
imports none of them, so importing one never drags in the others (``router`` runs as
``python -m tideline.rollout.router``).
"""
