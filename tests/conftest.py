from __future__ import annotations

import contextlib
import os
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples" / "data"

# Tests never touch a real cloud account or the user's settings.
os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
for _k in ("TIDELINE_REGISTRY", "TIDELINE_CONFIG"):
    os.environ.pop(_k, None)

# The gate's checks against luck turned off, for tests of the plumbing on small markets where a model
# may or may not earn its promotion (tests/test_policy.py and tests/test_cycle.py test those checks).
NO_LUCK_CHECKS = {"min_deflated_sharpe": 0.0, "require_baseline": False, "require_folds_agree": False}

# Small, fast model settings for tests (the defaults are sized for real data).
FAST_PARAMS = {
    "xgboost": {"num_boost_round": 60},
    "lightgbm": {"num_boost_round": 60},
    "sklearn": {"max_iter": 60},
    "torch": {"max_epochs": 2, "max_rows": 20_000},
    "rl": {"min_timesteps": 16_384, "passes": 1.0, "n_checks": 2},
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def moto_server() -> Iterator[str]:
    """A real S3 API (moto's server) on loopback on a port the OS picks (no free-port race); its URL."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


@pytest.fixture(scope="session")
def s3_server() -> Iterator[str]:
    """One S3 server for the session; yields its endpoint URL."""
    with moto_server() as url:
        yield url


@pytest.fixture(scope="module")
def moto_endpoint() -> Iterator[str]:
    """An S3 server of this module's own (its buckets start empty)."""
    with moto_server() as url:
        yield url


def wait_for(condition: Callable[[], Any], timeout: float = 30.0, what: str = "condition") -> None:
    """Poll ``condition`` until it is true. ``timeout`` is a hang guard, never a speed requirement: a test
    must pass on a slow or loaded machine, so give it ample room."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"{what} not reached after {timeout:.0f} s")
        time.sleep(0.02)


# ---- tests/images: the built images, run for real (make images-test builds them first) ----------------
def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--images", action="store_true", default=False,
                     help="collect tests/images: the pipeline, predictor and controller images run for real "
                          "(make images-test builds the images and runs them)")


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    """tests/images is its own suite (``make images-test``): it needs the images built and a container engine."""
    if collection_path == Path(__file__).parent / "images" and not config.getoption("--images"):
        return True
    return None
