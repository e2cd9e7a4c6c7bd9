"""Print the pip option that keeps torch the CPU build, or nothing when none is needed.

PyPI's Linux x86_64 torch wheel of a version is the CUDA build (several GB with its nvidia-* wheels); the
CPU build of the same version lives on PyTorch's CPU index. So on Linux x86_64 the install adds
``--extra-index-url https://download.pytorch.org/whl/cpu`` — unless pip is configured to find a local CPU
wheel of torch (``find-links``, as on a machine without that index), which it takes instead. Elsewhere
(macOS, Linux aarch64) PyPI's wheels are CPU-only already.

    python scripts/torch_index.py        # used by the Makefile's install lines
"""

from __future__ import annotations

import glob
import os
import platform
import re
import subprocess
import sys

CPU_INDEX = "https://download.pytorch.org/whl/cpu"


def find_links() -> list[str]:
    """pip's find-links directories, from its configuration files and PIP_FIND_LINKS."""
    try:
        out = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True,
                             timeout=60).stdout
    except (OSError, subprocess.SubprocessError):
        out = ""
    links = [v for k, v in re.findall(r"^(\S*find-links)='([^']*)'$", out, flags=re.M)]
    links.append(os.environ.get("PIP_FIND_LINKS", ""))
    return [p.removeprefix("file://") for v in links for p in v.split() if p]


def option(system: str, machine: str, links: list[str]) -> str:
    if (system, machine) != ("Linux", "x86_64"):
        return ""
    if any(glob.glob(os.path.join(d, "torch-*+cpu-*.whl")) for d in links):
        return ""
    return f"--extra-index-url {CPU_INDEX}"


if __name__ == "__main__":
    print(option(platform.system(), platform.machine(), find_links()))
