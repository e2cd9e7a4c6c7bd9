"""Market data that misleads the models: mixed time zones, a column named twice, ``data validate`` answering
"will a cycle accept this?" with the cycle's reasons, and a data-quality score per symbol."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import EXAMPLES
from tideline.cli import main
from tideline.config import load_settings
from tideline.data import synthetic_market, validate_bars
from tideline.data.quality import score_symbols
from tideline.errors import ConfigError, DataError, ValidationError
from tideline.training.cycle import check_bars

GOOG = pd.read_csv(EXAMPLES / "GOOG_1d.csv")


def run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = main(args)
    o, e = capsys.readouterr()
    return code, o + e


def bars_frame(n: int = 400, symbols: int = 3, seed: int = 0) -> pd.DataFrame:
    return synthetic_market(n_symbols=symbols, n_bars=n, seed=seed)


# ---- time zones ---------------------------------------------------------------------------------------
MIXED = pd.DataFrame({
    "timestamp": ["2004-08-19T00:00:00+00:00", "2004-08-20T00:00:00-05:00", "2004-08-23T00:00:00",
                  "2004-08-24T00:00:00+00:00"],
    "symbol": "GOOG", "open": 100.0, "high": 101.0, "low": 99.0, "close": 100.5, "volume": 1e6,
})


def test_mixed_naive_and_offset_timestamps_are_refused_in_either_mode() -> None:
    for mode in ("strict", "quarantine"):
        with pytest.raises(ValidationError, match="mixes time zones.*3 timestamps carry a UTC offset and 1 do "
                                                  r"not \(rows 1, 2, 4 vs 3\).*naive_timezone"):
            validate_bars(MIXED, mode=mode)


@pytest.mark.parametrize(("zone", "naive_as"), [("America/New_York", "2004-08-23 04:00"), ("UTC", "2004-08-23 00:00")])
def test_a_setting_says_how_to_read_naive_times(zone: str, naive_as: str) -> None:
    got = validate_bars(MIXED, naive_timezone=zone).clean["timestamp"].tolist()
    assert got == [pd.Timestamp(t) for t in ("2004-08-19 00:00", "2004-08-20 05:00", naive_as, "2004-08-24 00:00")]


def test_offsets_alone_are_converted_exactly_and_a_bad_zone_is_a_config_error() -> None:
    aware = MIXED.assign(timestamp=["2004-03-01T09:30:00-05:00", "2004-04-05T09:30:00-04:00",
                                    "2004-04-06T14:30:00Z", "2004-04-07T15:30+01:00"])
    assert [str(t) for t in validate_bars(aware).clean["timestamp"]] == [
        "2004-03-01 14:30:00", "2004-04-05 13:30:00", "2004-04-06 14:30:00", "2004-04-07 14:30:00"]
    with pytest.raises(ConfigError, match="unknown time zone 'Mars/Olympus'"):
        load_settings(data={"naive_timezone": "Mars/Olympus"})


def test_a_bar_column_named_twice_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = tmp_path / "dup.csv"
    f.write_text("timestamp,symbol,open,high,low,close,volume,close\n2020-01-02,A,1,2,1,1.5,10,9\n")
    code, text = run(["data", "validate", str(f)], capsys)
    assert code == 3 and "names column close more than once" in text


# ---- data validate == will a cycle accept it ----------------------------------------------------------
def _cycle_refusal(path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> str:
    code, text = run(["--registry", (tmp_path / "reg").as_uri(), "cycle", "--data", str(path)], capsys)
    assert code == 3, text
    return text


def _files(tmp_path: Path) -> dict[str, Path]:
    one = GOOG.head(1)
    flat = GOOG.head(500).assign(open=50.0, high=50.0, low=50.0, close=50.0)
    ts = pd.Timestamp("2024-01-02")
    many = pd.DataFrame({"timestamp": [ts] * 10_000, "symbol": [f"S{i:05d}" for i in range(10_000)],
                         "open": 10.0, "high": 11.0, "low": 9.0, "close": 10.5, "volume": 100.0})
    out = {}
    for name, df in (("one_row", one), ("constant_price", flat), ("one_bar_symbols", many)):
        out[name] = tmp_path / f"{name}.csv"
        df.to_csv(out[name], index=False)
    return out


@pytest.mark.slow
def test_validate_refuses_what_a_cycle_refuses_with_the_same_reason(tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    for name, path in _files(tmp_path).items():
        code, text = run(["data", "validate", str(path)], capsys)
        assert code == 3, (name, text)
        why = text.split("a cycle would refuse this data: ", 1)[1].strip()
        assert why.split(";")[0][:60] in " ".join(_cycle_refusal(path, tmp_path, capsys).split()), (name, why)
        if name == "constant_price":
            assert "stale stretches" in why and "62 bars" not in why, why
        else:
            assert "short_history" in why or "too little history" in why, why


def test_validate_accepts_what_a_cycle_learns_from(capsys: pytest.CaptureFixture[str]) -> None:
    code, text = run(["data", "validate", str(EXAMPLES / "GOOG_1d.csv"), "--json"], capsys)
    doc = json.loads(text)
    assert code == 0 and doc["accepted"] and doc["dataset_rows"] > 1500 and doc["error"] is None
    assert doc["data_quality"]["GOOG"]["score"] > 0.9


# ---- the data quality score ---------------------------------------------------------------------------
def _scale_from(df: pd.DataFrame, sym: str, at: float, factor: float) -> pd.DataFrame:
    out = df.copy()
    rows = out.index[out["symbol"] == sym]
    tail = rows[int(len(rows) * at):]
    out.loc[tail, ["open", "high", "low", "close"]] *= factor
    return out


def _freeze(df: pd.DataFrame, sym: str, start: float, share: float, zero_volume: bool = True) -> pd.DataFrame:
    out = df.copy()
    rows = out.index[out["symbol"] == sym]
    a = int(len(rows) * start)
    part = rows[a: a + int(len(rows) * share)]
    out.loc[part, ["open", "high", "low", "close"]] = out.loc[rows[a - 1], "close"]
    if zero_volume:
        out.loc[part, "volume"] = 0.0
    return out


def _repeat(df: pd.DataFrame, sym: str, every: int) -> pd.DataFrame:
    out = df.copy()
    rows = out.index[out["symbol"] == sym]
    for i in range(1, len(rows), every):
        out.loc[rows[i], ["open", "high", "low", "close", "volume"]] = out.loc[rows[i - 1],
                                                                            ["open", "high", "low", "close", "volume"]]
    return out


def _bad_tick(df: pd.DataFrame, sym: str, at: float, factor: float) -> pd.DataFrame:
    out = df.copy()
    rows = out.index[out["symbol"] == sym]
    r = rows[int(len(rows) * at)]
    out.loc[r, ["open", "high", "low", "close"]] *= factor
    return out


def _drop_stretch(df: pd.DataFrame, sym: str, start: float, share: float) -> pd.DataFrame:
    rows = df.index[df["symbol"] == sym]
    a = int(len(rows) * start)
    return df.drop(rows[a: a + int(len(rows) * share)])


# implausible variants of clean data, each a different kind and size (not tuned to one file)
BROKEN = {
    "split 1:50": lambda d: _scale_from(d, "SYM001", 0.5, 1 / 50),
    "reverse split 10:1": lambda d: _scale_from(d, "SYM001", 0.3, 10.0),
    "split 3:1": lambda d: _scale_from(d, "SYM001", 0.7, 1 / 3),
    "frozen 20% zero volume": lambda d: _freeze(d, "SYM001", 0.4, 0.20),
    "frozen 35% with volume": lambda d: _freeze(d, "SYM001", 0.1, 0.35, zero_volume=False),
    "every 4th bar repeated": lambda d: _repeat(d, "SYM001", 4),
    "decimal slip on one bar": lambda d: _bad_tick(d, "SYM001", 0.6, 10.0),
    "a third of the calendar missing": lambda d: _drop_stretch(d, "SYM001", 0.2, 0.34),
}


@pytest.mark.parametrize("kind", sorted(BROKEN))
def test_implausible_series_score_below_the_threshold_and_are_refused(kind: str) -> None:
    clean = bars_frame(n=1200, symbols=3, seed=5)
    assert min(q.score for q in score_symbols(validate_bars(clean).clean).values()) > 0.95
    broken = BROKEN[kind](clean)
    rep = validate_bars(broken, mode="quarantine", min_quality=0.7)
    q = rep.quality["SYM001"]
    assert q.score < 0.7 and q.reasons, (kind, q)
    assert set(rep.clean["symbol"]) == {"SYM000", "SYM002"}  # quarantine sets the symbol aside
    low = next(p for p in rep.problems if p.code == "low_quality")
    assert "SYM001" in low.detail and low.count == int((broken["symbol"] == "SYM001").sum())
    assert rep.quarantined["reason"].str.startswith("low_quality[").sum() == low.count
    with pytest.raises(ValidationError, match="low_quality .*SYM001"):
        validate_bars(broken, min_quality=0.7)


def test_real_markets_and_ordinary_calendars_pass() -> None:
    q = score_symbols(validate_bars(GOOG).clean)["GOOG"]
    assert q.score > 0.9 and q.jumps == 0 and q.stale_share == 0, q  # holidays are its only gaps
    # a 24/7 hourly series, a weekday-only daily one, one with a week's exchange closure
    hourly = bars_frame(n=2000, symbols=2, seed=9)
    assert min(x.score for x in score_symbols(validate_bars(hourly).clean).values()) > 0.95
    closed = GOOG.drop(GOOG.index[1000:1005])
    assert score_symbols(validate_bars(closed).clean)["GOOG"].score > 0.9


def test_the_cycle_records_the_score_and_refuses_or_sets_aside() -> None:
    s = load_settings()
    raw = _scale_from(bars_frame(n=900, symbols=4, seed=2), "SYM002", 0.5, 1 / 50)
    with pytest.raises(ValidationError, match=r"low_quality.*SYM002 0\.\d\d .*jump") as ei:
        check_bars(raw, "x", s)
    assert ei.value.report.quality["SYM002"].jumps == 1
    bars, info, _ = check_bars(raw, "x", s, quarantine=True)
    assert "SYM002" not in set(bars["symbol"]) and info["data_quality"]["threshold"] == 0.7
    assert info["data_quality"]["symbols"]["SYM002"]["score"] < 0.7
    assert info["data_quality"]["symbols"]["SYM000"]["score"] > 0.95
    lowered = load_settings(data={"min_quality": 0.5})
    bars, _, _ = check_bars(raw, "x", lowered)  # a user who knows the data can lower the bar
    assert "SYM002" in set(bars["symbol"])


def test_a_series_with_too_few_bars_or_no_moves_is_not_scored_as_broken() -> None:
    short = bars_frame(n=15, symbols=1)
    assert score_symbols(validate_bars(short).clean)["SYM000"].jumps == 0
    assert np.isfinite(score_symbols(validate_bars(short.head(2)).clean)["SYM000"].score)
    with pytest.raises(DataError):
        check_bars(GOOG.head(1), "x", load_settings())
