"""Run the retraining pipeline: locally with ``kfp.local`` or on a Kubeflow Pipelines cluster.

The same pipeline definition (``tideline.training.kfp.pipeline.retrain_pipeline``) serves both:

- ``run_local``: every component runs as a subprocess of this Python (``SubprocessRunner(use_venv=False)``),
  or with ``runner="docker"`` in its own container of the pipeline image (``DockerRunner``: host network, the
  image's user 10001 - the caller's uid when not root -, S3 credentials passed in), with artifacts under a
  per-run directory; the ParallelFor fan-out, the ``dsl.Collected`` fan-in and the ``dsl.If`` gate all run as
  they would on a cluster.
- ``submit`` / ``schedule``: compile the pipeline and create a run / a recurring run through the KFP API.
- ``start_retrain``: the single entry point the triggers use to start a run in either mode.

The definitions live in the package (``tideline.training.kfp``) so an installed tideline can compile and submit
without a checkout; the repository's ``components/`` and ``pipelines/`` re-export them and keep the
compiled ``pipelines/retrain.yaml`` (``compile_pipeline()`` rewrites it).
"""

from __future__ import annotations

import builtins
import contextlib
import json
import logging
import os
import re
import tempfile
import time
import uuid
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from tideline import errors
from tideline.clock import utcnow
from tideline.config import MODEL_FAMILIES, Settings
from tideline.containers import container_environment
from tideline.errors import (  # noqa: F401  (re-exported: callers import them from here)
    ConfigError,
    PipelineFailed,
    PipelinesUnavailable,
    RunInProgress,
    TidelineError,
)

log = logging.getLogger(__name__)

ROLLOUT_MODES = ("rollout", "direct")
LOCAL_RUNNERS = ("subprocess", "docker")
DEFAULT_EXPERIMENT = "tideline"
DEFAULT_CRON = "0 0 2 * * *"
PIPELINE_YAML = Path("pipelines") / "retrain.yaml"
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_CRON_FIELD = re.compile(r"^[0-9A-Za-z*/,\-?#]+$")


# ---- arguments ----------------------------------------------------------------------------------------
def _families(settings: Settings, families: Sequence[str] | None) -> list[str]:
    fams = list(families) if families else list(settings.training.families)
    bad = sorted(set(fams) - set(MODEL_FAMILIES))
    if bad or not fams:
        raise ConfigError(f"unknown model families {bad}; choose from {', '.join(MODEL_FAMILIES)}")
    if len(set(fams)) != len(fams):
        raise ConfigError(f"model families listed twice: {fams}")
    return fams


def pipeline_arguments(settings: Settings, *, source: str | Path | None = None,
                       synthetic: Mapping[str, Any] | None = None, families: Sequence[str] | None = None,
                       rollout_mode: str = "rollout", quarantine: bool = False, reason: str = "manual",
                       for_cluster: bool = False, where: str = "a cluster run") -> dict[str, Any]:
    """The ``retrain_pipeline`` arguments for these settings (settings travel as one JSON string).

    ``for_cluster``: the tasks run elsewhere (pods, containers; ``where`` names them in the errors) and see
    only S3: the registry and a data source must be s3:// URIs."""
    from tideline.training.steps import settings_to_json

    if (source is None or source == "") == (synthetic is None):
        raise ConfigError("give exactly one market data source: --data PATH|s3://... or --synthetic")
    if rollout_mode not in ROLLOUT_MODES:
        raise ConfigError(f"unknown rollout mode {rollout_mode!r}; choose one of {', '.join(ROLLOUT_MODES)}")
    fams = _families(settings, families)
    settings = settings.model_copy(update={"training": settings.training.model_copy(update={"families": fams})})
    registry = settings.registry_uri()
    src = ""
    if source is not None:
        src = str(source)
        if "://" not in src:
            src = str(Path(src).expanduser().resolve())
    if for_cluster:
        if not registry.startswith("s3://"):
            raise ConfigError(f"{where} needs an s3:// registry, not {registry}",
                              hint="pass --registry s3://bucket/prefix; file:// paths are not shared with its tasks")
        if src and not src.startswith("s3://"):
            raise ConfigError(f"{where} reads its data from s3://, not {src}", hint="upload the bars first")
    return {
        "registry_uri": registry,
        "source": src,
        "synthetic_json": json.dumps(dict(synthetic), sort_keys=True) if synthetic is not None else "",
        "families": fams,
        "settings_json": settings_to_json(settings),
        "quarantine": bool(quarantine),
        "rollout_mode": rollout_mode,
        "reason": reason or "manual",
    }


# ---- local runs ---------------------------------------------------------------------------------------
def _run_id() -> str:
    return f"{utcnow():%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:8]}"


def _task_dirs(run_dir: Path) -> dict[str, str]:
    """Task name (``for-loop-1-iteration-0/train`` inside a loop) -> its outputs directory."""
    out: dict[str, str] = {}
    for f in sorted(run_dir.rglob("executor_output.json")):
        out[f.parent.relative_to(run_dir).as_posix()] = str(f.parent)
    return out


def _failure(run_dir: Path | None, exc: BaseException, log_path: Path) -> TidelineError:
    """The tideline error for a failed local run: the failing task's name and its own error."""
    text = _ANSI.sub("", str(exc))
    m = re.search(r"Inner task failed: '([^']+)'", text)
    task = m.group(1) if m else None
    recorded = sorted(run_dir.rglob("tideline_error.json")) if run_dir else []
    hint = f"task logs: {log_path}"
    if recorded:
        f = recorded[0]
        d = json.loads(f.read_text(encoding="utf-8"))
        name = f.parent.relative_to(run_dir).as_posix() if run_dir else (task or d.get("step"))
        cls = getattr(errors, str(d.get("type")), None)
        if not (isinstance(cls, type) and issubclass(cls, TidelineError)):
            cls = PipelineFailed
            message = f"pipeline task '{name}' failed: {d.get('type')}: {d.get('message')}"
        else:
            message = f"pipeline task '{name}' failed: {d.get('message')}"
        return cls(message, hint=hint)
    # no step recorded its error (e.g. the component could not start): take the last error line of the log
    last = ""
    with contextlib.suppress(OSError):
        for line in log_path.read_text(encoding="utf-8", errors="replace").splitlines():
            s = _ANSI.sub("", line).strip()
            if re.match(r"^[\w.]+(Error|Exception|Exit)\b.*:", s) and not s.startswith("RuntimeError: Pipeline"):
                last = s
    where = f"pipeline task '{task}' failed" if task else "pipeline run failed"
    detail = last or (text.strip().splitlines()[-1] if text.strip() else "unknown error")
    return PipelineFailed(f"{where}: {detail}", hint=hint)


def run_local(settings: Settings, *, source: str | Path | None = None, synthetic: Mapping[str, Any] | None = None,
              families: Sequence[str] | None = None, rollout_mode: str = "rollout",
              pipeline_root: str | Path | None = None, quarantine: bool = False,
              reason: str = "manual", runner: str = "subprocess") -> dict[str, Any]:
    """Run ``retrain_pipeline`` on this machine with ``kfp.local``.

    ``runner``: ``"subprocess"`` runs each task as a subprocess of this Python; ``"docker"`` runs each in its
    own container of the pipeline image (``TIDELINE_IMAGE``, as the components name it; see
    ``docker_runner``), which needs an s3:// registry and an s3:// or synthetic data source.
    Artifacts go under ``pipeline_root/<run id>/`` (default ``<settings.home>/pipeline-runs``); the task
    logs (kfp.local prints them) go to ``kfp-local.log`` there, not to stdout. Returns a summary: the
    versions registered, the decision, the candidate / promoted version and where each task's outputs are.
    A failing task raises the tideline error it raised (e.g. ``ValidationError``, exit 3), named after it.
    Not thread-safe: ``kfp.local`` keeps one global configuration per process.
    """
    from kfp import local

    from tideline.registry import open_registry
    from tideline.training.kfp.pipeline import retrain_pipeline

    if runner not in LOCAL_RUNNERS:
        raise ConfigError(f"unknown pipeline runner {runner!r}; choose one of {', '.join(LOCAL_RUNNERS)}")
    in_containers = runner == "docker"
    args = pipeline_arguments(settings, source=source, synthetic=synthetic, families=families,
                              rollout_mode=rollout_mode, quarantine=quarantine, reason=reason,
                              for_cluster=in_containers, where="a run in containers")
    run_id = _run_id()
    root = Path(pipeline_root) if pipeline_root else Path(settings.home) / "pipeline-runs"
    root = (root / run_id).resolve()
    root.mkdir(parents=True, exist_ok=True)
    log_path = root / "kfp-local.log"
    if in_containers:
        task_runner: Any = docker_runner(root)
    else:
        task_runner = local.SubprocessRunner(use_venv=False)
    local.init(runner=task_runner, pipeline_root=str(root), raise_on_error=True)
    t0 = time.perf_counter()
    log.info("local pipeline run %s under %s", run_id, root)
    root_logger = logging.getLogger()
    saved_print, saved_handlers, saved_level = builtins.print, root_logger.handlers[:], root_logger.level
    try:
        with open(log_path, "w", encoding="utf-8") as fh, contextlib.redirect_stdout(fh), \
                warnings.catch_warnings(), _engine_timeout(ENGINE_TIMEOUT_S if in_containers else None):
            # every component names the tideline image; the subprocess runner uses this Python instead
            warnings.filterwarnings("ignore", message=".*non-Python base image.*", category=RuntimeWarning)
            task = retrain_pipeline(**args)
    except Exception as e:
        runs = [p for p in root.iterdir() if p.is_dir()]
        raise _failure(runs[0] if len(runs) == 1 else root, e, log_path) from None
    finally:
        # kfp.local patches builtins.print and the root logger's handlers for each task; its parallel loop
        # iterations can restore each other's patches and leave them in place (a handler on a closed file)
        builtins.print = saved_print
        root_logger.handlers[:] = saved_handlers
        root_logger.setLevel(saved_level)
    seconds = time.perf_counter() - t0
    runs = [p for p in root.iterdir() if p.is_dir()]
    run_dir = runs[0] if len(runs) == 1 else root
    registered = json.loads(task.output)
    rollout_files = sorted(run_dir.rglob("rollout.json"))
    rollout = json.loads(rollout_files[0].read_text(encoding="utf-8")) if rollout_files else None
    aliases = open_registry(args["registry_uri"], endpoint_url=settings.endpoint_url()).aliases()
    return {
        "mode": "local",
        "runner": runner,
        "run_id": run_id,
        "reason": args["reason"],
        "registry": args["registry_uri"],
        "versions": registered["versions"],
        "decision": registered["decision"],
        "best": registered["best"],
        "reasons": registered["reasons"],
        "failures": registered.get("failures", {}),
        "measured_against": registered["production_version"],
        "rollout_mode": rollout_mode,
        "rollout": rollout,
        "candidate": rollout["version"] if rollout and rollout["action"] == "candidate" else None,
        "promoted": rollout["version"] if rollout and rollout["action"] == "promoted" else None,
        "aliases": aliases,
        "pipeline_root": str(run_dir),
        "log": str(log_path),
        "tasks": _task_dirs(run_dir),
        "seconds": round(seconds, 2),
    }


# how long one call to the container engine may take: kfp.local's DockerRunner makes its docker client with
# docker-py's default of 60 s, and an engine with the vfs storage driver (no overlay filesystem) copies the
# whole image for each new container, which can take longer than that on a busy disk
ENGINE_TIMEOUT_S = 600


@contextlib.contextmanager
def _engine_timeout(seconds: int | None) -> Iterator[None]:
    """docker-py's default API timeout set to ``seconds`` for the duration (DockerTaskHandler calls
    ``docker.from_env()`` with no timeout; ``docker.client`` reads this default at each call)."""
    if seconds is None:
        yield
        return
    import docker.client

    saved = docker.client.DEFAULT_TIMEOUT_SECONDS
    docker.client.DEFAULT_TIMEOUT_SECONDS = seconds
    try:
        yield
    finally:
        docker.client.DEFAULT_TIMEOUT_SECONDS = saved


def docker_runner(pipeline_root: Path) -> Any:
    """``kfp.local.DockerRunner`` for the pipeline image: every task in its own container on the host network
    (an S3 server on loopback is reachable; the engine may have no bridge), with
    ``tideline.containers.container_environment``. Run by root, the tasks run as the image's user (10001) and
    the run's directory is made writable for it (the tasks create their output directories there); run by
    another user, they run as that user's uid and gid, so the outputs are theirs to read and delete (the image
    works under any uid). The image must exist locally (``make images``): a missing image or an unreachable
    engine is a ``ConfigError`` here, before any task starts.
    """
    import docker
    from docker.errors import DockerException, ImageNotFound
    from kfp import local

    from tideline.training.kfp.components import IMAGE

    try:
        client = docker.from_env()
        try:
            client.images.get(IMAGE)
        finally:
            client.close()
    except ImageNotFound:
        raise ConfigError(f"the pipeline image {IMAGE} is not in the local engine",
                          hint="build it: make images (make images-local where no registry is reachable); "
                               "or set TIDELINE_IMAGE") from None
    except DockerException as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConfigError(f"cannot reach the container engine: {first}",
                          hint="start dockerd, or use the subprocess runner") from None
    as_user: dict[str, str] = {}
    if os.getuid() == 0:
        pipeline_root.chmod(0o777)  # the tasks run as the image's user (10001) and create their directories here
    else:
        as_user["user"] = f"{os.getuid()}:{os.getgid()}"
    return local.DockerRunner(network_mode="host", environment=container_environment(os.environ), **as_user)


# ---- compile ------------------------------------------------------------------------------------------
def find_repo_root(start: str | Path | None = None) -> Path | None:
    """The tideline checkout holding ``start`` (default: the current directory) or this package."""
    here = Path(start or Path.cwd()).resolve()
    candidates = [here, *here.parents, *Path(__file__).resolve().parents]
    for d in candidates:
        if (d / "pyproject.toml").is_file() and (d / "pipelines").is_dir() and (d / "src" / "tideline").is_dir():
            return d
    return None


def default_pipeline_path() -> Path:
    """``pipelines/retrain.yaml`` of the tideline checkout around the working directory (or this package).

    Raises ``ConfigError`` outside a checkout (then an explicit output path is needed).
    """
    root = find_repo_root()
    if root is None:
        raise ConfigError("not inside a tideline checkout: no pipelines/ directory found",
                          hint="pass an output path")
    return root / PIPELINE_YAML


def compile_pipeline(path: str | Path | None = None) -> Path:
    """Compile ``retrain_pipeline`` to KFP IR YAML; default: the checkout's ``pipelines/retrain.yaml``.

    The component image is ``TIDELINE_IMAGE`` as read when ``tideline.training.kfp.components`` was imported.
    """
    from kfp import compiler

    from tideline.training.kfp.pipeline import retrain_pipeline

    out = Path(path) if path is not None else default_pipeline_path()
    out.parent.mkdir(parents=True, exist_ok=True)
    compiler.Compiler().compile(pipeline_func=retrain_pipeline, package_path=str(out))
    return out


# ---- cluster ------------------------------------------------------------------------------------------
@contextlib.contextmanager
def _kfp_errors(host: str, what: str) -> Iterator[None]:
    """Network and API failures of the KFP client as one clear tideline error (and no retry chatter)."""
    quiet = logging.getLogger("urllib3.connectionpool")
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=FutureWarning, module=r"kfp\.client.*")
            yield
    except TidelineError:
        raise
    except Exception as e:
        status = getattr(e, "status", None)
        reason = getattr(e, "reason", None)
        if status is not None and type(e).__name__ == "ApiException":
            body = str(getattr(e, "body", "") or "").strip().replace("\n", " ")[:200]
            raise PipelinesUnavailable(f"Kubeflow Pipelines at {host} refused to {what}: HTTP {status} {reason}"
                                       + (f": {body}" if body else "")) from None
        text = _ANSI.sub("", str(e)).strip()
        cause = re.search(r"\[Errno -?\d+\][^\"')]*", text)  # e.g. [Errno 111] Connection refused
        detail = cause.group(0).strip() if cause else (text.splitlines()[-1] if text else type(e).__name__)
        raise PipelinesUnavailable(f"cannot reach Kubeflow Pipelines at {host} to {what}: {detail[:300]}",
                                   hint="check the --host URL and that the KFP API is reachable") from None
    finally:
        quiet.setLevel(level)


def _client(host: str) -> Any:
    import kfp

    if not host or "://" not in host:
        raise ConfigError(f"invalid Kubeflow Pipelines host {host!r}", hint="e.g. http://localhost:8080")
    with _kfp_errors(host, "connect"):
        return kfp.Client(host=host)


@contextlib.contextmanager
def _package() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="tideline-pipeline-") as tmp:
        yield compile_pipeline(Path(tmp) / "retrain.yaml")


def submit(host: str, *, arguments: Mapping[str, Any], experiment: str = DEFAULT_EXPERIMENT,
           run_name: str | None = None) -> str:
    """Create one run of the (freshly compiled) pipeline on the cluster at ``host``; returns its run id."""
    client = _client(host)
    name = run_name or f"tideline-retrain-{_run_id()}"
    with _package() as pkg, _kfp_errors(host, "create a run"):
        res = client.create_run_from_pipeline_package(str(pkg), arguments=dict(arguments), run_name=name,
                                                      experiment_name=experiment, enable_caching=False)
    return str(res.run_id)


def validate_cron(cron: str) -> str:
    """KFP cron expressions have six fields, seconds first (``"0 0 2 * * *"``: every day at 02:00)."""
    fields = cron.split()
    if len(fields) != 6:
        raise ConfigError(f"cron expression {cron!r} has {len(fields)} fields; KFP needs 6, seconds first",
                          hint='e.g. "0 0 2 * * *" for 02:00 every day')
    bad = [f for f in fields if not _CRON_FIELD.match(f)]
    if bad:
        raise ConfigError(f"cron expression {cron!r} has invalid field(s): {', '.join(bad)}")
    return " ".join(fields)


def schedule(host: str, *, cron: str = DEFAULT_CRON, name: str = "tideline-retrain",
             arguments: Mapping[str, Any], experiment: str = DEFAULT_EXPERIMENT) -> str:
    """Create a KFP recurring run of the pipeline (no catch-up, one run at a time); returns its id."""
    cron = validate_cron(cron)
    client = _client(host)
    with _package() as pkg, _kfp_errors(host, "create a recurring run"):
        exp = client.create_experiment(name=experiment)
        rr = client.create_recurring_run(
            experiment_id=exp.experiment_id, job_name=name, description=f"tideline retraining, cron {cron}",
            cron_expression=cron, max_concurrency=1, no_catchup=True, params=dict(arguments),
            pipeline_package_path=str(pkg), enabled=True, enable_caching=False,
        )
    return str(rr.recurring_run_id)


ACTIVE_STATES = frozenset({"PENDING", "RUNNING", "PAUSED", "CANCELING"})


def active_runs(client: Any, experiment: str, *, page_size: int = 50) -> list[dict[str, str]]:
    """Runs of ``experiment`` that are still in progress on the cluster (newest ``page_size`` looked at)."""
    try:
        exp = client.get_experiment(experiment_name=experiment)
    except Exception:  # no such experiment yet: nothing can be running in it
        return []
    resp = client.list_runs(experiment_id=exp.experiment_id, page_size=page_size, sort_by="created_at desc")
    out = []
    for r in getattr(resp, "runs", None) or []:
        state = str(getattr(r, "state", "") or "").upper()
        if state in ACTIVE_STATES:
            out.append({"run_id": str(r.run_id), "name": str(getattr(r, "display_name", "") or ""), "state": state})
    return out


# ---- the entry the triggers use -----------------------------------------------------------------------
def start_retrain(settings: Settings, *, mode: str = "local", host: str | None = None, reason: str = "manual",
                  source: str | None = None, synthetic: dict[str, Any] | None = None,
                  families: Sequence[str] | None = None, rollout_mode: str = "rollout",
                  experiment: str = DEFAULT_EXPERIMENT) -> dict[str, Any]:
    """Start one retraining run: ``mode="local"`` runs it here and now (kfp.local) and returns
    ``{"mode": "local", "reason", "summary"}``; ``mode="kfp"`` submits it to the cluster at ``host`` and
    returns ``{"mode": "kfp", "reason", "run_id", "host"}``."""
    if mode == "local":
        summary = run_local(settings, source=source, synthetic=synthetic, families=families,
                            rollout_mode=rollout_mode, reason=reason)
        return {"mode": "local", "reason": reason, "summary": summary}
    if mode == "kfp":
        if not host:
            raise ConfigError("mode 'kfp' needs the Kubeflow Pipelines host URL")
        args = pipeline_arguments(settings, source=source, synthetic=synthetic, families=families,
                                  rollout_mode=rollout_mode, reason=reason, for_cluster=True)
        client = _client(host)
        with _kfp_errors(host, "list runs"):
            running = active_runs(client, experiment)
        if running:  # a retrain already in progress on the cluster is never started twice
            r = running[0]
            raise RunInProgress(f"a retraining run is already in progress on {host}: {r['name'] or r['run_id']} "
                                f"({r['state']}); not starting another")
        slug = re.sub(r"[^a-z0-9-]+", "-", reason.lower()).strip("-")[:40] or "manual"
        run_id = submit(host, arguments=args, experiment=experiment, run_name=f"tideline-retrain-{slug}-{_run_id()}")
        return {"mode": "kfp", "reason": reason, "run_id": run_id, "host": host}
    raise ConfigError(f"unknown run mode {mode!r}; choose 'local' or 'kfp'")
