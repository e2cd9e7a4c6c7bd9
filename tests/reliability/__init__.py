"""Reliability scenarios as tests: faults, bad input and attacks, each tried many times.

Every module here exposes ``scenarios(quick: bool, work: Path) -> list[dict]``; ``work`` is an empty scratch
directory and ``quick=True`` is the reduced form CI runs through the tests. Each row::

    {"area": "Faults" | "Bad input" | "Security",
     "scenario": str,    # what was tried
     "times": int,       # how many times
     "unit": str,        # what ``times`` counts (versions, kills, requests, cases ...)
     "result": str,      # what happened, with figures
     "lost": int,        # things lost or corrupted, half-written versions, wrong production changes
     "ok": bool,         # every check held
     "seconds": float}

``tests/reliability/test_scenarios.py`` runs every module in its reduced form (``make test``);
``tests/reliability/run.py`` (``make reliability``) runs the full form, each module in its own process, and renders
the table of docs/reliability.md.
Modules: ``registry`` (concurrent writers, SIGKILLed uploads), ``outage`` (S3 down mid cycle, drift check
and rollout), ``controller`` (killed at every crash point of a rollout), ``predictor`` (malformed requests,
oversized bodies, broken model files on reload), ``inputs`` (market-data defects and adversarial files, CLI
misuse), ``security`` (tampered and unsigned versions, path traversal, unsafe deserialisation, the cluster
objects).
"""
