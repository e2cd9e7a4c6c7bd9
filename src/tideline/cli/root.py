"""The ``tideline`` command line. Thin: parses options, calls the library, renders results.

One module per command group (``cycle``, ``models``, ``data``, ``pipeline``, ``drift``, ``feedback``,
``rollout``/``serve``, ``trigger``, ``loop``, ``demo``, ``replay``), one shared context (``tideline.cli.context``); this
module wires them under one root. Errors from the library (``TidelineError``) become one line on stderr and a
non-zero exit code; a traceback is shown only with ``TIDELINE_DEBUG=1``.

The root options ``--registry`` and ``--config`` may be given anywhere before ``--``, as kubectl takes its
global flags: ``tideline cycle --registry URI`` is ``tideline --registry URI cycle``.
"""

from __future__ import annotations

import os
import sys
import traceback
from pathlib import Path
from typing import Annotated

import click
import typer
from rich.text import Text
from typer.core import TyperGroup

from tideline import __version__
from tideline.cli.alerts import alerts_app
from tideline.cli.context import err, out, state
from tideline.cli.cycle import cycle
from tideline.cli.data import data_app
from tideline.cli.demo import demo
from tideline.cli.drift import drift_app
from tideline.cli.experience import experience_app
from tideline.cli.feedback import feedback
from tideline.cli.loop import loop_app
from tideline.cli.models import models_app
from tideline.cli.pipeline import pipeline_app
from tideline.cli.replay import replay
from tideline.cli.rollout import rollout_app, serve
from tideline.cli.trigger import trigger_app
from tideline.errors import TidelineError

GLOBAL_OPTIONS = ("--registry", "--config")
"""Root options accepted after the sub-command too (they take one value each)."""


def hoist_global_options(args: list[str]) -> list[str]:
    """``args`` with every ``--registry``/``--config`` (``--opt V`` or ``--opt=V``) moved to the front, so the
    root parses them wherever they were typed; nothing after ``--`` moves.

    >>> hoist_global_options(["cycle", "--synthetic", "--registry", "/tmp/r"])
    ['--registry', '/tmp/r', 'cycle', '--synthetic']
    """
    front: list[str] = []
    rest: list[str] = []
    i = 0
    while i < len(args):
        a = args[i]
        if a == "--":
            rest.extend(args[i:])
            break
        if a in GLOBAL_OPTIONS and i + 1 < len(args):
            front += [a, args[i + 1]]
            i += 2
            continue
        if a.split("=", 1)[0] in GLOBAL_OPTIONS and "=" in a:
            front.append(a)
        else:
            rest.append(a)
        i += 1
    return front + rest


class _RootGroup(TyperGroup):
    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        return super().parse_args(ctx, hoist_global_options(list(args)))


app = typer.Typer(
    name="tideline", help="Keep trading models good as markets change.", no_args_is_help=True,
    pretty_exceptions_enable=False, add_completion=False, cls=_RootGroup,
)


def _version(value: bool) -> None:
    if value:
        out.print(f"tideline {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    ctx: typer.Context,
    registry: Annotated[str | None, typer.Option(
        "--registry", envvar="TIDELINE_REGISTRY",
        help="Registry URI: file:///path or s3://bucket/prefix (endpoint from AWS_ENDPOINT_URL). Also taken after the command.")] = None,
    config: Annotated[Path | None, typer.Option(
        "--config", envvar="TIDELINE_CONFIG", help="Settings file (.toml, .yaml or .json). Also taken after the command.")] = None,
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Show the version and exit.")] = False,
) -> None:
    st = state(ctx)
    st.registry, st.config = registry, config


app.command()(cycle)
app.add_typer(models_app, name="models")
app.add_typer(data_app, name="data")
app.add_typer(pipeline_app, name="pipeline")
app.add_typer(drift_app, name="drift")
app.command("feedback")(feedback)
app.add_typer(rollout_app, name="rollout")
app.command("serve")(serve)
app.add_typer(trigger_app, name="trigger")
app.add_typer(loop_app, name="loop")
app.add_typer(alerts_app, name="alerts")
app.add_typer(experience_app, name="experience")
app.command("demo")(demo)
app.command("replay")(replay)


# ---- entry point --------------------------------------------------------------------------------------
def _classes(name: str) -> tuple[type[BaseException], ...]:
    """The exception class ``name`` from click and from the click copy typer may ship (typer._click)."""
    import importlib

    found: list[type[BaseException]] = []
    for mod in ("click.exceptions", "typer._click.exceptions", "typer.exceptions"):
        try:
            cls = getattr(importlib.import_module(mod), name, None)
        except ImportError:
            continue
        if isinstance(cls, type) and issubclass(cls, BaseException) and cls not in found:
            found.append(cls)
    return tuple(found)


_USAGE, _CLICK_ERR, _EXIT, _ABORT = (_classes(n) for n in ("UsageError", "ClickException", "Exit", "Abort"))


def main(argv: list[str] | None = None) -> int:
    """Console-script entry: turns every failure into a one-line message and an exit code."""
    debug = os.environ.get("TIDELINE_DEBUG") == "1"
    try:
        rv = app(args=argv, prog_name="tideline", standalone_mode=False)
        return int(rv or 0)
    except _USAGE as e:
        e.show(file=sys.stderr)  # type: ignore[attr-defined]
        return 2
    except _CLICK_ERR as e:
        e.show(file=sys.stderr)  # type: ignore[attr-defined]
        return int(getattr(e, "exit_code", 1) or 1)
    except _EXIT as e:
        return int(getattr(e, "exit_code", 0) or 0)
    except _ABORT:
        err.print("aborted")
        return 130
    except KeyboardInterrupt:
        err.print("interrupted")
        return 130
    except TidelineError as e:
        if debug:
            traceback.print_exc()
        err.print(Text.assemble(("error: ", "bold red"), str(e)), highlight=False, soft_wrap=True)
        return e.exit_code
    except Exception as e:  # an unexpected failure: one line, traceback only on request
        if debug:
            traceback.print_exc()
        err.print(Text.assemble(("internal error: ", "bold red"), f"{type(e).__name__}: {e} "
                                "(set TIDELINE_DEBUG=1 for the traceback)"), highlight=False, soft_wrap=True)
        return 70


if __name__ == "__main__":
    sys.exit(main())
