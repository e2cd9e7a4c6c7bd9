"""The reliability table's driver (tests/reliability/run.py): rows checked, failures shown, docs page block."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import ROOT
from reliability import run as br

GOOD = {"area": "Faults", "scenario": "s3 down mid cycle", "times": 5, "unit": "outages",
        "result": "5/5 clean failures | reruns ok", "lost": 0, "ok": True, "seconds": 1.5}


def test_rows_that_break_the_contract_become_failed_rows() -> None:
    assert br.check_row("m", dict(GOOD)) == GOOD
    for bad in ({**GOOD, "extra": 1}, {k: v for k, v in GOOD.items() if k != "lost"},
                {**GOOD, "area": "Misc"}, {**GOOD, "times": "5"}, ["not", "a", "dict"]):
        row = br.check_row("m", bad)
        assert row["ok"] is False and row["lost"] is None and "malformed" in row["result"]


def test_a_module_that_crashes_is_a_failed_row_not_a_crash() -> None:
    rows = br.run_module("no_such_module", quick=True, timeout_s=60)
    assert len(rows) == 1 and rows[0]["ok"] is False
    assert "exit 1" in rows[0]["result"] and "no_such_module" in rows[0]["result"]


def test_markdown_counts_and_flags_failures(tmp_path: Path) -> None:
    meta = {"date": "2026-11-23", "cores": 2, "machine": "x86_64", "quick": False, "wall_s": 12.0}
    failed = {**GOOD, "area": "Security", "scenario": "tampered", "lost": 2, "ok": False}
    md = br.markdown(meta, [failed, GOOD])
    assert "**1 of 2 scenarios held**, 2 things lost" in md
    lines = [ln for ln in md.splitlines() if ln.startswith("| Faults") or ln.startswith("| Security")]
    assert lines[0].startswith("| Faults") and "5/5 clean failures \\| reruns ok" in lines[0]  # area order
    assert lines[1].endswith("| 2 | **NO** |")

    doc = tmp_path / "reliability.md"
    doc.write_text(f"intro\n{br.START}\nold\n{br.END}\nrest\n")
    assert br.write_doc(md, doc)
    text = doc.read_text()
    assert "old" not in text and text.startswith("intro\n") and text.endswith(f"{br.END}\nrest\n") and md in text
    doc.write_text("no markers")
    assert not br.write_doc(md, doc)


def test_the_docs_page_has_the_reliability_block_and_every_module_exists() -> None:
    assert br.DOC == ROOT / "docs" / "reliability.md"  # the page make docs builds (mkdocs.yml nav)
    text = br.DOC.read_text()
    assert br.START in text and br.END in text
    assert "reliability.md" in (ROOT / "mkdocs.yml").read_text()
    for module in br.MODULES:
        assert (ROOT / "tests" / "reliability" / f"{module}.py").is_file(), module


def test_unknown_modules_are_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        br.main(["--only", "registry,nope"])
    assert e.value.code == 2 and "unknown module(s) nope" in capsys.readouterr().err
