"""What every command shares: the root options' state, the consoles, the registry opener, JSON output.

Every command module imports this one at module level; it imports no command module, so the ``cli``
package has no import cycle (``make lint`` checks it). The library is imported inside the helpers that need
it: ``tideline --help`` must not load pandas, torch or the registry.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from tideline.config import Settings, load_settings
from tideline.errors import ConfigError, StorageUnavailable

if TYPE_CHECKING:
    from tideline.registry import Registry
    from tideline.training.cycle import Reporter

# Wide enough for the result tables when output goes to a file or a pipe (rich uses 80 there).
_WIDTH = None if sys.stdout.isatty() else int(os.environ.get("COLUMNS", "150"))
out = Console(width=_WIDTH)
"""Results (stdout)."""
err = Console(stderr=True)
"""Progress, notes and errors (stderr)."""


class State:
    """The root options (``--registry``, ``--config``), kept on the click context for every command."""

    def __init__(self) -> None:
        self.config: Path | None = None
        self.registry: str | None = None

    def settings(self, **overrides: Any) -> Settings:
        """The settings file (or defaults and ``TIDELINE_*``), with ``--registry`` on top; sets up logging."""
        s = load_settings(self.config, **overrides)
        if self.registry:
            s = s.model_copy(update={"registry": self.registry})
        logging.basicConfig(level=s.log_level, format="%(asctime)s %(levelname)s %(name)s %(message)s",
                            stream=sys.stderr)
        return s


def state(ctx: typer.Context) -> State:
    """The root options of this invocation (empty when a command group runs on its own, as in tests)."""
    return ctx.ensure_object(State)


def open_registry(s: Settings, *, must_exist: bool = False) -> Registry:
    """The registry of the settings.

    ``must_exist``: a ``file://`` registry directory that does not exist is an error (a command that only
    reads or moves versions must not create an empty registry at a typo). Raises ``ConfigError`` when the
    path is a file, ``StorageUnavailable`` when it must exist and does not.
    """
    from urllib.parse import urlparse

    from tideline.registry import open_registry as _open

    uri = s.registry_uri()
    parsed = urlparse(uri)
    local = Path(parsed.path) if parsed.scheme == "file" else None if "://" in uri else Path(uri)
    if local is not None and local.expanduser().is_file():
        raise ConfigError(f"registry path {local} is a file, not a directory", hint="check --registry")
    if must_exist and local is not None and not local.expanduser().exists():
        raise StorageUnavailable(f"no registry at {local}: the directory does not exist",
                                 hint="check --registry / TIDELINE_REGISTRY; `tideline cycle` creates one")
    return _open(uri, endpoint_url=s.endpoint_url())


def print_json(obj: Any) -> None:
    """``obj`` as indented JSON on stdout (dates and other objects as strings)."""
    sys.stdout.write(json.dumps(obj, indent=2, default=str) + "\n")


def fmt(v: Any, nd: int = 3) -> str:
    """A table cell: floats to ``nd`` places, None as ``-``."""
    return f"{v:.{nd}f}" if isinstance(v, float) else "-" if v is None else str(v)


def parse_now(now: str | None) -> datetime | None:
    """``--now``: an ISO timestamp as an aware UTC datetime (naive means UTC); None stays None."""
    if now is None:
        return None
    import pandas as pd

    from tideline.clock import aware

    try:
        ts = pd.Timestamp(now)
    except (ValueError, TypeError):
        raise ConfigError(f"--now {now!r} is not an ISO timestamp", hint="e.g. 2026-11-23T21:00:00Z") from None
    return aware(ts.to_pydatetime())


def reporter(enabled: bool) -> Reporter:
    """A cycle progress reporter: rich progress bars on stderr, or nothing when ``enabled`` is False."""
    from tideline.training.cycle import Reporter

    class RichReporter(Reporter):
        def __init__(self) -> None:
            self.progress = Progress(
                SpinnerColumn(), TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                TimeElapsedColumn(), console=err, transient=False, disable=not enabled,
            )

        @contextlib.contextmanager
        def stage(self, name: str, total: int | None = None) -> Iterator[Callable[[int], None]]:
            task = self.progress.add_task(name, total=total if total is not None else 1)
            try:
                yield lambda n=1: self.progress.advance(task, n)
            finally:
                self.progress.update(task, completed=total if total is not None else 1)

    return RichReporter()
