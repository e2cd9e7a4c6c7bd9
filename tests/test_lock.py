"""One lock for every install: requirements.lock agrees with pyproject, and every install path uses it."""

from __future__ import annotations

import copy
import re
import tomllib
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+?)(?:\s*;.*)?$")
VIA_PROJECT = "tideline (pyproject.toml"  # pip-compile's annotation of a direct dependency


def parse_lock(text: str) -> tuple[dict[str, Version], set[str]]:
    """(pins by canonical name, names pip-compile says come from pyproject itself)."""
    pins: dict[str, Version] = {}
    direct: set[str] = set()
    current = ""
    for line in text.splitlines():
        m = PIN.match(line)
        if m:
            current = canonicalize_name(m.group(1))
            assert current not in pins, f"{current} pinned twice"
            pins[current] = Version(m.group(2))
        elif line.strip() and not line.lstrip().startswith("#"):
            raise AssertionError(f"requirements.lock: not an exact pin: {line!r}")
        elif VIA_PROJECT in line and current:
            direct.add(current)
    return pins, direct


def project_requirements(pyproject: dict) -> list[Requirement]:
    reqs = [*pyproject["project"]["dependencies"], *pyproject["project"]["optional-dependencies"]["test"],
            *pyproject["build-system"]["requires"]]
    return [r for r in map(Requirement, reqs) if r.marker is None or r.marker.evaluate()]


def disagreements(pyproject: dict, lock_text: str) -> list[str]:
    pins, direct = parse_lock(lock_text)
    wanted = project_requirements(pyproject)
    problems = []
    for req in wanted:
        name = canonicalize_name(req.name)
        if name not in pins:
            problems.append(f"{req.name}: in pyproject, not in the lock")
        elif not req.specifier.contains(pins[name], prereleases=True):
            problems.append(f"{req.name}: locked {pins[name]} is outside pyproject's {req.specifier}")
    for name in sorted(direct - {canonicalize_name(r.name) for r in wanted}):
        problems.append(f"{name}: the lock has it from pyproject, pyproject no longer asks for it")
    return problems


PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
LOCK = (ROOT / "requirements.lock").read_text()


def test_the_lock_agrees_with_pyproject() -> None:
    assert disagreements(PYPROJECT, LOCK) == []


@pytest.mark.parametrize("edit, expected", [
    (lambda p: p["project"]["dependencies"].append("no-such-package>=1"),
     "no-such-package: in pyproject, not in the lock"),
    (lambda p: p["project"]["dependencies"].__setitem__(
        next(i for i, d in enumerate(p["project"]["dependencies"]) if d.startswith("kfp")), "kfp>=2.18"),
     "kfp: locked 2.17.0 is outside pyproject's >=2.18"),
    (lambda p: p["project"]["dependencies"].remove(
        next(d for d in p["project"]["dependencies"] if d.startswith("plotly"))),
     "plotly: the lock has it from pyproject, pyproject no longer asks for it"),
])
def test_the_agreement_check_catches_each_kind_of_drift(edit, expected: str) -> None:
    pyproject = copy.deepcopy(PYPROJECT)
    edit(pyproject)
    assert expected in disagreements(pyproject, LOCK)


def test_the_running_environment_is_the_lock() -> None:
    """make test installs from the lock: what runs the suite is exactly what is locked (a local build label
    such as torch's +cpu aside), so a passing run says something about the locked set."""
    pins, _ = parse_lock(LOCK)
    installed = {canonicalize_name(d.metadata["Name"]): Version(d.version) for d in metadata.distributions()}
    off = {n: (str(v), str(installed.get(n))) for n, v in pins.items()
           if n not in ("pip",) and (n not in installed or Version(installed[n].public) != v)}
    assert off == {}, f"installed versions differ from requirements.lock (run: make install): {off}"


def test_every_install_path_uses_the_lock() -> None:
    makefile = (ROOT / "Makefile").read_text()
    stamp = makefile[makefile.index("$(STAMP): pyproject.toml $(LOCK)"):makefile.index("lock:")]
    installs = [line for line in stamp.splitlines() if "$(PIP)" in line]
    assert installs and all("-c requirements.lock" in line for line in installs)
    assert "LOCK      := requirements.lock" in makefile
    for dockerfile in ("components/Dockerfile", "docker/controller.Dockerfile", "serving/Dockerfile",
                       "docker/deps.Dockerfile"):
        text = (ROOT / dockerfile).read_text()
        for run in re.findall(r"pip install [^\n&;]*", text):
            assert "requirements.lock" in run or "--no-deps" in run, f"{dockerfile}: {run}"
