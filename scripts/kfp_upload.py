"""Upload pipelines/retrain.yaml to Kubeflow Pipelines: a new pipeline the first time, a new version of it
afterwards (idempotent: re-running adds a version, never fails on "already exists").

    python scripts/kfp_upload.py --host http://localhost:8888 [--name tideline-retrain] [--version-prefix 0.1.0]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "pipelines" / "retrain.yaml"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--host", required=True)
    p.add_argument("--name", default="tideline-retrain")
    p.add_argument("--version-prefix", default="dev")
    a = p.parse_args(argv)
    import kfp

    client = kfp.Client(host=a.host)
    pipeline_id = client.get_pipeline_id(a.name)
    if pipeline_id is None:
        res = client.upload_pipeline(str(PACKAGE), pipeline_name=a.name)
        print(f"uploaded pipeline {a.name} ({res.pipeline_id})")
    else:
        version = f"{a.version_prefix}-{time.strftime('%Y%m%d-%H%M%S')}"
        client.upload_pipeline_version(str(PACKAGE), pipeline_version_name=version, pipeline_id=pipeline_id)
        print(f"uploaded version {version} of pipeline {a.name} ({pipeline_id})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
