from __future__ import annotations

import os
import socket
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples" / "data"
sys.path.insert(0, str(ROOT / "bench"))  # the reliability scenarios (bench/reliability) are importable

# Tests never touch a real cloud account or the user's settings.
os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
for _k in ("TIDELINE_REGISTRY", "TIDELINE_CONFIG"):
    os.environ.pop(_k, None)

# Small, fast model settings for tests (the defaults are sized for real data).
FAST_PARAMS = {
    "xgboost": {"num_boost_round": 60},
    "lightgbm": {"num_boost_round": 60},
    "sklearn": {"max_iter": 60},
    "torch": {"max_epochs": 2, "max_rows": 20_000},
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def s3_server() -> Iterator[str]:
    """A real S3 API (moto's server) on loopback; yields its endpoint URL."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()
