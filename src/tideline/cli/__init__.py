"""The ``tideline`` command line (``tideline.cli.root``): ``app`` is the typer root, ``main`` the console script."""

from tideline.cli.root import app, main

__all__ = ["app", "main"]
