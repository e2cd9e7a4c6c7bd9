"""Kubernetes wiring with no business rule of its own: the kopf ``operator`` around the one rollout
reconciler, and the ``kubectl tideline`` plugin (``kubectl_plugin``).
"""
