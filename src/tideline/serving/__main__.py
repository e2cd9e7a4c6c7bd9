"""``python -m tideline.serving`` / ``tideline-predictor``: serve one registry version over HTTP (KServe v1
and v2 REST). Prints ``READY port=<port> version=<vN>`` on stdout once it answers requests.

Exit codes: 0 stopped by a signal · 2 bad arguments or ``TIDELINE_CHAOS`` · 4 the model cannot be loaded ·
5 registry error · 6 unknown version or unset alias · 8 checksum mismatch · 9 registry unreachable ·
70 internal error. With ``--wait-for-model`` (the image and the chart use it) a version that cannot be
loaded at start does not exit: the server answers, unready, with the reason in its log and its 503s, and
retries until the version loads.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from urllib.parse import urlparse

from tideline.errors import ConfigError, StorageUnavailable, TidelineError

PROG = "tideline-predictor"


def build_parser() -> argparse.ArgumentParser:
    """The ``tideline-predictor`` argument parser (model name, registry, refs, port, limits, prediction log)."""
    p = argparse.ArgumentParser(prog=PROG,
                                description="Serve a tideline model version (KServe v1 + v2 REST).")
    p.add_argument("--name", default="tideline", help="model name in the URLs (default: tideline)")
    p.add_argument("--registry", default=None,
                   help="registry URI: file:///path or s3://bucket/prefix (default: $TIDELINE_REGISTRY, "
                        "else ./.tideline/registry; S3 endpoint from AWS_ENDPOINT_URL)")
    p.add_argument("--ref", default="production", help="alias or version id to serve (default: production)")
    p.add_argument("--role", default="active", choices=["active", "canary"],
                   help="label only (default: active)")
    p.add_argument("--shadow-ref", default=None, help="alias or version id for the shadow slot (optional)")
    p.add_argument("--http-port", type=int, default=8080,
                   help="HTTP port; 0 = pick a free one (default: 8080)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default: 127.0.0.1, this machine only; 0.0.0.0 = every "
                        "interface, as in a container)")
    p.add_argument("--read-timeout", type=float, default=10.0,
                   help="seconds a client may pause while sending a body before a 408 (default: 10)")
    p.add_argument("--header-timeout", type=float, default=10.0,
                   help="seconds for a request's line and headers to arrive before the connection is "
                        "closed (default: 10)")
    p.add_argument("--max-connections", type=int, default=1000,
                   help="open connections (and requests in flight) before new requests get a 503 "
                        "(default: 1000)")
    p.add_argument("--reload-interval", type=float, default=30.0,
                   help="seconds between registry polls for a moved alias; 0 = off (default: 30)")
    p.add_argument("--wait-for-model", action="store_true",
                   help="when the version cannot be loaded at start (store unreachable, version missing or "
                        "tampered), serve unready and retry instead of exiting (a container: no crash loop)")
    p.add_argument("--prediction-log", action=argparse.BooleanOptionalAction, default=True,
                   help="log predictions as Parquet into the registry store (default: on)")
    p.add_argument("--max-rows", type=int, default=10_000, help="most rows per request (default: 10000)")
    p.add_argument("--max-body-bytes", type=int, default=8 * 1024 * 1024,
                   help="largest request body in bytes (default: 8 MiB)")
    p.add_argument("--shadow-timeout", type=float, default=2.0,
                   help="seconds a shadow prediction may take before it is dropped (default: 2)")
    p.add_argument("--log-flush-rows", type=int, default=20_000,
                   help="prediction log: write after this many rows (default: 20000)")
    p.add_argument("--log-flush-seconds", type=float, default=5.0,
                   help="prediction log: write at least this often, in seconds (default: 5)")
    return p


def _check_args(a: argparse.Namespace) -> None:
    if not 0 <= a.http_port <= 65535:
        raise ConfigError(f"--http-port {a.http_port} is not a port number (0-65535)")
    if not a.reload_interval >= 0:
        raise ConfigError("--reload-interval must be >= 0 (0 = off)")
    if a.max_rows < 1:
        raise ConfigError("--max-rows must be >= 1")
    if a.max_body_bytes < 1024:
        raise ConfigError("--max-body-bytes must be >= 1024")
    if not a.shadow_timeout > 0:
        raise ConfigError("--shadow-timeout must be > 0")
    if a.log_flush_rows < 1 or not a.log_flush_seconds > 0:
        raise ConfigError("--log-flush-rows must be >= 1 and --log-flush-seconds > 0")
    if not (a.read_timeout > 0 and a.header_timeout > 0):
        raise ConfigError("--read-timeout and --header-timeout must be > 0")
    if a.max_connections < 1:
        raise ConfigError("--max-connections must be >= 1")
    if a.shadow_ref is not None and a.shadow_ref == a.ref:
        raise ConfigError("--shadow-ref must differ from --ref")


def _open_registry(uri: str | None):  # noqa: ANN202 - Registry
    from tideline.config import load_settings
    from tideline.registry import open_registry

    s = load_settings(registry=uri)
    resolved = s.registry_uri()
    parsed = urlparse(resolved)
    local = None
    if parsed.scheme == "file":
        local = Path(parsed.path)
    elif "://" not in resolved:
        local = Path(resolved)
    if local is not None and not local.is_dir():
        # FileStore would create it; a predictor only reads, so a missing directory is a wrong URI
        raise StorageUnavailable(f"registry directory {local} does not exist", hint="check --registry")
    return open_registry(resolved, endpoint_url=s.endpoint_url())


def run(argv: list[str] | None = None) -> int:
    """Parse ``argv``, load the version ``--ref`` names (sha256 verified) and serve it until stopped; returns 0.

    Prints ``READY port=<p> version=<vN>`` once it answers. Raises ``ConfigError`` for bad arguments or
    ``TIDELINE_CHAOS``, and the registry's and the model's errors (``VersionNotFound``, ``IntegrityError``,
    ``StorageUnavailable``, ``ModelError`` ...) when the version cannot be loaded.
    """
    args = build_parser().parse_args(argv)
    level = os.environ.get("TIDELINE_LOG_LEVEL", "INFO").upper()
    logging.basicConfig(level=level if level in ("DEBUG", "INFO", "WARNING", "ERROR") else "INFO",
                        format="%(asctime)s %(levelname)s %(name)s %(message)s", stream=sys.stderr)
    from tideline.serving.chaos import ENV, parse_chaos

    _check_args(args)
    chaos = parse_chaos(os.environ.get(ENV))
    # kserve parses sys.argv when imported: give it nothing of ours to misread
    sys.argv = [sys.argv[0]]
    from tideline.serving.predictor import TidelinePredictor
    from tideline.serving.predlog import PredictionLog
    from tideline.serving.server import free_port, serve

    registry = _open_registry(args.registry)
    predlog = None
    if args.prediction_log:
        predlog = PredictionLog(registry.store, flush_rows=args.log_flush_rows,
                                flush_seconds=args.log_flush_seconds)
    predictor = TidelinePredictor(
        args.name, registry, ref=args.ref, role=args.role, shadow_ref=args.shadow_ref,
        reload_interval=args.reload_interval, prediction_log=predlog, max_rows=args.max_rows, chaos=chaos,
        shadow_timeout=args.shadow_timeout,
    )
    try:
        predictor.load()  # resolve + fetch (sha256) + load, before the port opens
    except ConfigError:
        raise
    except Exception as e:
        if not args.wait_for_model:
            raise
        predictor.serve_unloaded(e)  # one line now; unready until a retry loads it
    if chaos is not None and chaos.active:
        logging.getLogger(__name__).warning("CHAOS is on: %s", chaos.describe())
    port = args.http_port or free_port()

    def ready(p: int) -> None:
        print(f"READY port={p} version={predictor.version}", flush=True)

    try:
        serve(predictor, http_port=port, max_body_bytes=args.max_body_bytes, host=args.host,
              read_timeout=args.read_timeout, header_timeout=args.header_timeout,
              max_connections=args.max_connections, on_ready=ready)
    finally:
        predictor.stop()
        if predlog is not None:
            predlog.close()
    return 0


def main(argv: list[str] | None = None) -> None:
    """The ``tideline-predictor`` entry point: ``run``, exiting with its status; a tideline error is printed on
    one line and exits with its ``exit_code``, anything else with 70 (re-raised with ``TIDELINE_DEBUG``).
    """
    try:
        code = run(argv)
    except TidelineError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr, flush=True)
        code = e.exit_code
    except KeyboardInterrupt:
        code = 130
    except SystemExit:
        raise
    except Exception as e:  # noqa: BLE001 - one line unless debugging
        if os.environ.get("TIDELINE_DEBUG"):
            raise
        print(f"{PROG}: internal error: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
        code = 70
    sys.exit(code)


if __name__ == "__main__":
    main()
