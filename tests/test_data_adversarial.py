"""Defective and adversarial market data: every case refused with one clear line, or quarantined with a
reason; bounded input size; short histories named. The case table lives in tests/reliability/inputs.py."""

from __future__ import annotations

import io
from pathlib import Path

import pandas as pd
import pytest

from reliability.inputs import ADVERSARIAL, DEFECTS, DataCase, csv_text, data_cases, good_rows, huge_file, run_data_case
from tideline.data import load_bars, validate_bars
from tideline.data.sources import MAX_BYTES_ENV, max_input_bytes, parse_size
from tideline.errors import DataError

CASES = data_cases()


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_case(case: DataCase, tmp_path: Path) -> None:
    ok, why = run_data_case(case, tmp_path)
    assert ok, why


def test_table_covers_the_issue() -> None:
    ids = {c.id for c in CASES}
    assert len(DEFECTS) == 12 and len(ADVERSARIAL) >= 40
    for must in ("gzip_bomb", "million_columns", "utf16_bom", "latin1_symbol", "utf8_bom_ok", "binary_garbage",
                 "parquet_named_csv", "csv_named_parquet", "empty_file", "only_header", "price_1e308", "minus_inf",
                 "year_1677", "year_2263", "epoch_ns_text_ok", "mixed_timezones_ok", "single_row_short_history",
                 "one_symbol_without_history"):
        assert must in ids


def test_runner_catches_a_wrong_expectation(tmp_path: Path) -> None:
    """The runner is not a rubber stamp: a wrong expected text, an accepted refusal, a wrong count all fail."""
    base = ADVERSARIAL[0]
    assert not run_data_case(DataCase("x1", base.content, "something else", max_bytes=4096), tmp_path)[0]
    assert not run_data_case(DataCase("x2", lambda: csv_text(good_rows()), "anything"), tmp_path)[0]
    assert not run_data_case(DataCase("x3", lambda: csv_text(good_rows()), "", mode="ok", clean=7), tmp_path)[0]


def test_size_limit_settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    assert parse_size("500MB") == 500_000_000 and parse_size("4GiB") == 4 << 30 and parse_size("0") == 0
    assert parse_size(1234) == 1234 and parse_size("1.5k") == 1500
    for bad in ("lots", "-1", "5 parsecs"):
        with pytest.raises(DataError, match="is not a size|negative"):
            parse_size(bad)
    monkeypatch.delenv(MAX_BYTES_ENV, raising=False)
    assert max_input_bytes() == 1 << 30
    f = tmp_path / "b.csv"
    f.write_text(csv_text(good_rows(100)))
    monkeypatch.setenv(MAX_BYTES_ENV, "1KiB")
    with pytest.raises(DataError, match=r"is \d+\.\d KiB, over the 1\.0 KiB input limit \(set TIDELINE_MAX_DATA_BYTES"):
        load_bars(f)
    monkeypatch.setenv(MAX_BYTES_ENV, "0")  # no limit
    assert len(load_bars(f)) == 200
    monkeypatch.setenv(MAX_BYTES_ENV, "1KiB")
    assert len(load_bars(f, max_bytes="1MB")) == 200  # the argument wins
    monkeypatch.setenv(MAX_BYTES_ENV, "huge")
    with pytest.raises(DataError, match="TIDELINE_MAX_DATA_BYTES='huge' is not a size"):
        load_bars(f)


def test_directory_total_is_bounded(tmp_path: Path) -> None:
    d = tmp_path / "d"
    d.mkdir()
    for i in range(3):
        (d / f"{i}.csv").write_text(csv_text(good_rows(50, (f"S{i}",))))
    one = (d / "0.csv").stat().st_size
    assert len(load_bars(d, max_bytes=3 * one + 10)) == 150
    with pytest.raises(DataError, match=r"directory .* \(3 files\) is .* over the"):
        load_bars(d, max_bytes=2 * one)


def test_parquet_uncompressed_size_is_bounded(tmp_path: Path) -> None:
    from tideline.data import synthetic_market, write_bars

    p = write_bars(synthetic_market(2, 5000), tmp_path / "b.parquet")
    with pytest.raises(DataError, match="uncompressed.*over the"):
        load_bars(p, max_bytes=p.stat().st_size + 10)  # the file fits, its uncompressed data does not


def test_short_history_quarantine_report(tmp_path: Path) -> None:
    rows = good_rows(60, ("AAA", "BBB")) + [["2024-01-01 00:00:00", "NEW", "10", "11", "9", "10.5", "100"]]
    raw = pd.read_csv(io.StringIO(csv_text(rows)), dtype=str)
    rep = validate_bars(raw, mode="quarantine", min_bars_per_symbol=50)
    assert rep.n_clean == 120 and set(rep.clean["symbol"]) == {"AAA", "BBB"}
    assert rep.quarantined["row"].tolist() == [121] and rep.quarantined["reason"].tolist() == ["short_history"]
    (p,) = rep.problems
    assert p.detail == "NEW has 1 bar; at least 50 needed" and p.to_dict()["detail"] == p.detail
    assert "NEW has 1 bar" in rep.summary()
    assert validate_bars(raw).ok  # the default asks for no history


def test_cycle_refuses_a_symbol_without_history(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from tideline.cli import main
    from tideline.config import FeatureConfig
    from tideline.data import synthetic_market, write_bars
    from tideline.training.cycle import min_history

    need = min_history(FeatureConfig())
    df = synthetic_market(3, 400, seed=2)
    new = df[df["symbol"] == "SYM000"].head(2).assign(symbol="NEWCO")
    f = write_bars(pd.concat([df, new]), tmp_path / "bars.csv")
    reg = tmp_path / "reg"
    code = main(["--registry", reg.as_uri(), "cycle", "--data", str(f), "--families", "sklearn", "--no-promote"])
    err = capsys.readouterr().err
    assert code == 3, err
    assert f"short_history (2 rows: 1201, 1202): NEWCO has 2 bars; at least {need} needed" in err
    (line,) = [ln for ln in err.splitlines() if ln.startswith("error: ")]  # the error itself: one line
    assert "NEWCO has 2 bars" in line and "Traceback" not in err
    assert not (reg / "versions").exists() or not any((reg / "versions").iterdir())


def test_make_dataset_names_the_short_symbol() -> None:
    from tideline.config import FeatureConfig
    from tideline.data import synthetic_market
    from tideline.training.cycle import make_dataset, min_history

    bars = validate_bars(synthetic_market(3, 30)).clean
    with pytest.raises(DataError, match=rf"SYM000 has 30 bars, .*at least {min_history(FeatureConfig())} bars"):
        make_dataset(bars, FeatureConfig())


@pytest.mark.slow
def test_big_csv_peak_memory(tmp_path: Path) -> None:
    res = huge_file(tmp_path, 60 << 20)
    assert res["ok"], res
    ratio = (res["peak"] - res["base"]) / res["size"]
    assert ratio < 8, res
    assert res["refused"] and res["refuse_seconds"] < 1, res
