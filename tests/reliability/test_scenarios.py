"""Every reliability scenario module, in its reduced form (``quick=True``): the rows ``make reliability`` turns
into the table of docs/reliability.md, with the checks each module's rows must pass.

The full form (``python tests/reliability/run.py``, many more runs each) regenerates that table."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from reliability import controller, inputs, outage, predictor, registry, run, security

KEYS = {"area", "scenario", "times", "unit", "result", "lost", "ok", "seconds"}


def held(rows: list[dict[str, Any]], area: str | None = None) -> None:
    """Every row as the contract says, every check held, nothing lost."""
    assert rows
    for row in rows:
        assert set(row) == KEYS and row["area"] in run.AREAS, row
        assert area is None or row["area"] == area, row
        assert row["ok"] and row["lost"] == 0 and row["times"] > 0, row["result"]


def test_the_run_covers_every_module_here() -> None:
    here = {p.stem for p in Path(__file__).parent.glob("*.py")} - {"__init__", "run", "faultproxy", "kube"}
    assert set(run.MODULES) == {m for m in here if not m.startswith("test_")}


@pytest.mark.slow
def test_registry_writers_and_kills(tmp_path: Path) -> None:
    """Writer processes while aliases move, SIGKILLs mid upload; both backends."""
    rows = registry.scenarios(quick=True, work=tmp_path)
    held(rows, "Faults")
    assert len(rows) == 4
    writers = [r for r in rows if r["unit"] == "versions"]
    kills = [r for r in rows if r["unit"] == "kills"]
    assert [r["times"] for r in writers] == [20, 20]
    assert [r["times"] for r in kills] == [6, 6]
    for r in writers:
        assert "20/20 versions listed once and readable" in r["result"]
        assert "0 dangling/partial in" in r["result"]
        assert "3/3 races with exactly 1 winner of 4" in r["result"]
    for r in kills:
        assert "0 partial or lost, production unchanged" in r["result"] and "6/6 following" in r["result"]
    assert {"local directory", "S3 API"} == {r["scenario"].rsplit("(", 1)[1].rstrip(")") for r in rows[::2]}


@pytest.mark.slow
def test_store_outages(tmp_path: Path) -> None:
    """S3 down mid cycle, mid drift check and mid rollout: clean failures, clean reruns."""
    rows = outage.scenarios(quick=True, work=tmp_path)
    held(rows, "Faults")
    assert len(rows) == 3
    for row in rows:
        assert "failed cleanly" in row["result"] and f"{row['times']}/{row['times']} reruns" in row["result"]


def test_controller_killed_at_every_crash_point(tmp_path: Path) -> None:
    rows = controller.scenarios(True, tmp_path)
    held(rows, "Faults")
    assert len(rows) == 3 and all(r["unit"] == "kills" for r in rows)
    assert rows[0]["times"] >= 150  # every crash point of the four kinds of rollout
    # the same drill on the cluster's status store (a ModelRollout's status subresource): same table, same kinds
    assert "registry store" in rows[0]["scenario"] and "status subresource" in rows[1]["scenario"]
    assert rows[1]["times"] >= rows[0]["times"] and "lost the answer of one ModelRollout write" in rows[1]["result"]
    assert rows[2]["times"] == 2


def test_predictor_bad_requests_and_broken_models(tmp_path: Path) -> None:
    rows = predictor.scenarios(True, tmp_path)
    held(rows)
    assert [r["area"] for r in rows] == ["Bad input", "Bad input", "Bad input", "Faults"]
    assert rows[0]["times"] >= 2000


@pytest.mark.slow
def test_bad_market_data_and_cli_misuse(tmp_path: Path) -> None:
    rows = inputs.scenarios(True, tmp_path)
    held(rows, "Bad input")


@pytest.mark.slow
def test_attacks(tmp_path: Path) -> None:
    rows = security.scenarios(True, tmp_path)
    held(rows, "Security")
