"""tideline.data: loading, validation/quarantine and the synthetic market."""

from __future__ import annotations

import gzip
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tideline.data import (
    BAR_COLUMNS,
    Problem,
    ValidationReport,
    load_bars,
    sources,
    synthetic_market,
    validate_bars,
    write_bars,
)
from tideline.errors import ConfigError, DataError, StorageUnavailable, ValidationError

HEADER = ",".join(BAR_COLUMNS)


def good_rows() -> list[list[str]]:
    """8 clean rows: AAA and BBB, 4 hourly bars each, in file order."""
    rows = []
    for sym in ("AAA", "BBB"):
        for h in range(4):
            rows.append([f"2024-01-01 0{h}:00:00", sym, "10", "11", "9", "10.5", "100"])
    return rows


def write_csv(path: Path, rows: list[list[str]], header: str = HEADER) -> Path:
    path.write_text(header + "\n" + "\n".join(",".join(r) for r in rows) + "\n", encoding="utf-8")
    return path


COL = {c: i for i, c in enumerate(BAR_COLUMNS)}


def setter(**changes: tuple[int, str]) -> Callable[[list[list[str]]], None]:
    """Change field ``col`` of 1-based data row ``row`` to ``value``: setter(close=(3, ""))."""

    def apply(rows: list[list[str]]) -> None:
        for col, (row, value) in changes.items():
            rows[row - 1][COL[col]] = value

    return apply


# (id, mutation, code, rows, text that must appear in the message)
DEFECTS = [
    ("bad_timestamp", setter(timestamp=(3, "not-a-date")), "unparsable_timestamp", [3], ""),
    ("missing_close", setter(close=(4, "")), "nan_value", [4], "close"),
    ("nan_volume", setter(volume=(6, "NaN")), "nan_value", [6], "volume"),
    ("missing_symbol", setter(symbol=(2, "")), "nan_value", [2], "symbol"),
    ("inf_high", setter(high=(5, "inf")), "inf_value", [5], "high"),
    ("zero_low", setter(low=(7, "0")), "non_positive_price", [7], "low"),
    ("high_below_low", setter(high=(2, "8.5")), "high_below_low", [2], ""),
    ("open_above_high", setter(open=(8, "12")), "open_outside_range", [8], ""),
    ("close_below_low", setter(close=(1, "8")), "close_outside_range", [1], ""),
    ("negative_volume", setter(volume=(3, "-5")), "negative_volume", [3], ""),
    ("text_in_price", setter(open=(6, "abc")), "non_numeric", [6], "open"),
    ("duplicate", setter(timestamp=(3, "2024-01-01 01:00:00")), "duplicate_key", [2, 3], ""),
]


@pytest.mark.parametrize(
    ("mutate", "code", "rows", "col"), [d[1:] for d in DEFECTS], ids=[d[0] for d in DEFECTS]
)
def test_each_defect_strict_and_quarantine(
    tmp_path: Path, mutate: Callable[[list[list[str]]], None], code: str, rows: list[int], col: str
) -> None:
    data = good_rows()
    mutate(data)
    raw = load_bars(write_csv(tmp_path / "bars.csv", data))

    with pytest.raises(ValidationError) as ei:
        validate_bars(raw)
    msg = str(ei.value)
    assert msg.startswith("market data failed validation: 1 problem: ")
    noun = "row" if len(rows) == 1 else "rows"
    assert f"{code} ({len(rows)} {noun}: {', '.join(map(str, rows))}" in msg
    if col:
        assert f"[{col}]" in msg
    report = ei.value.report
    assert isinstance(report, ValidationReport)
    assert [p.code for p in report.problems] == [code]
    assert report.problems[0].rows == rows and report.problems[0].count == len(rows)
    assert "\n" not in msg

    rep = validate_bars(raw, mode="quarantine")
    assert not rep.ok
    assert rep.n_input == 8 and rep.n_clean == 8 - len(rows)
    assert rep.quarantined["row"].tolist() == rows
    assert all(code in r for r in rep.quarantined["reason"])
    assert list(rep.clean.columns) == BAR_COLUMNS
    assert code in rep.summary() and code in json.dumps(rep.to_dict())


def test_clean_frame_types_and_order(tmp_path: Path) -> None:
    data = good_rows()
    data = data[4:] + data[:4]  # BBB first in the file; output sorted by (symbol, timestamp)
    rep = validate_bars(load_bars(write_csv(tmp_path / "b.csv", data)))
    assert rep.ok and rep.problems == [] and rep.quarantined.empty
    c = rep.clean
    assert list(c.columns) == BAR_COLUMNS
    assert c["timestamp"].dtype == np.dtype("datetime64[ns]")
    assert pd.api.types.is_string_dtype(c["symbol"].dtype)
    assert all(c[x].dtype == np.float64 for x in ["open", "high", "low", "close", "volume"])
    assert c["symbol"].tolist() == ["AAA"] * 4 + ["BBB"] * 4
    assert c["timestamp"].is_monotonic_increasing is False  # two symbols
    assert c.groupby("symbol")["timestamp"].apply(lambda s: s.is_monotonic_increasing).all()
    assert c.index.tolist() == list(range(8))


def test_unsorted_time_is_a_dataset_problem(tmp_path: Path) -> None:
    data = good_rows()
    data[1][0], data[2][0] = data[2][0], data[1][0]  # AAA 02:00 before 01:00
    raw = load_bars(write_csv(tmp_path / "u.csv", data))
    with pytest.raises(ValidationError, match=r"unsorted_time \(1 row: 3\)"):
        validate_bars(raw)
    rep = validate_bars(raw, mode="quarantine")
    assert rep.n_clean == 8 and rep.quarantined.empty
    assert [p.code for p in rep.problems] == ["unsorted_time"]
    assert rep.clean.groupby("symbol")["timestamp"].apply(lambda s: s.is_monotonic_increasing).all()


def test_several_defects_one_message_and_write(tmp_path: Path) -> None:
    data = good_rows()
    setter(high=(2, "8"), close=(5, ""), volume=(7, "-1"))(data)
    data[5][2] = "20"  # row 6 open above high
    raw = load_bars(write_csv(tmp_path / "m.csv", data))
    with pytest.raises(ValidationError) as ei:
        validate_bars(raw)
    msg = str(ei.value)
    for part in ["4 problems", "high_below_low (1 row: 2)", "nan_value (1 row: 5 [close])",
                 "open_outside_range (1 row: 6)", "negative_volume (1 row: 7)"]:
        assert part in msg
    rep = validate_bars(raw, mode="quarantine")
    paths = rep.write(tmp_path / "report")
    q = pd.read_csv(paths[0])
    assert q["row"].tolist() == [2, 5, 6, 7] and "reason" in q.columns
    summary = json.loads(paths[1].read_text())
    assert summary["n_clean"] == 4 and len(summary["problems"]) == 4


def test_duplicates_drop_every_copy_and_rows_capped() -> None:
    n = 60
    df = pd.DataFrame(
        {
            "timestamp": ["2024-01-01"] * n,
            "symbol": ["X"] * n,
            "open": 1.0, "high": 1.0, "low": 1.0, "close": 1.0, "volume": 1.0,
        }
    )
    hourly = pd.date_range("2024", periods=n, freq="h").astype(str)
    df = pd.concat([df, df.assign(symbol="Y", timestamp=hourly)])
    rep = validate_bars(df, mode="quarantine")
    (p,) = rep.problems
    assert p.code == "duplicate_key" and p.count == n and p.rows == list(range(1, 21))
    assert rep.n_clean == n and set(rep.clean["symbol"]) == {"Y"}


def test_structural_errors() -> None:
    with pytest.raises(ValidationError, match="empty"):
        validate_bars(pd.DataFrame(columns=BAR_COLUMNS))
    with pytest.raises(ValidationError, match="missing required columns high, volume") as ei:
        partial = {"timestamp": ["2024-01-01"], "symbol": ["A"], "open": [1], "low": [1], "close": [1]}
        validate_bars(pd.DataFrame(partial), mode="quarantine")
    assert isinstance(ei.value.report, ValidationReport)
    doubled = synthetic_market(1, 3)
    doubled["Close "] = doubled["close"]
    with pytest.raises(ValidationError, match="duplicate columns: close"):
        validate_bars(doubled)
    bad = pd.DataFrame({c: ["x"] for c in BAR_COLUMNS})
    with pytest.raises(ValidationError, match="no usable rows: all 1 rows are bad"):
        validate_bars(bad, mode="quarantine")
    ok = synthetic_market(1, 5)
    with pytest.raises(ValidationError, match="only 5 usable rows"):
        validate_bars(ok, mode="quarantine", min_rows=10)


def test_column_names_are_matched_loosely_and_extra_columns_dropped() -> None:
    df = synthetic_market(2, 10)
    df.columns = [" Timestamp", "SYMBOL"] + ["open", "high", "low", "close", "volume"]
    df["extra"] = 1
    rep = validate_bars(df)
    assert list(rep.clean.columns) == BAR_COLUMNS and rep.n_clean == 20


def test_timezones_normalised_to_naive_utc(tmp_path: Path) -> None:
    data = good_rows()[:3]
    data[0][0] = "2024-01-01T02:00:00+02:00"
    data[1][0] = "2024-01-01T01:00:00Z"
    data[2][0] = "2024-01-01 02:00:00"
    raw = load_bars(write_csv(tmp_path / "tz.csv", data))
    with pytest.raises(ValidationError, match="mixes time zones"):  # naive among offsets: say what it means
        validate_bars(raw)
    rep = validate_bars(raw, naive_timezone="UTC")
    assert rep.clean["timestamp"].tolist() == [pd.Timestamp(f"2024-01-01 0{h}:00") for h in range(3)]
    aware = synthetic_market(1, 4)
    aware["timestamp"] = aware["timestamp"].dt.tz_localize("America/New_York")
    rep = validate_bars(aware)
    assert rep.clean["timestamp"].dt.tz is None
    assert rep.clean["timestamp"].iloc[0] == pd.Timestamp("2020-01-01 05:00")


# ------------------------------------------------------------------------------------- loading
def test_unreadable_files_give_clear_data_errors(tmp_path: Path) -> None:
    def err(path: Path | str) -> str:
        with pytest.raises(DataError) as ei:
            load_bars(path)
        assert not isinstance(ei.value, ValidationError)
        assert "\n" not in str(ei.value) and "Traceback" not in str(ei.value)
        return str(ei.value)

    assert "not found" in err(tmp_path / "nope.csv")
    (tmp_path / "empty.csv").write_bytes(b"")
    assert "is empty" in err(tmp_path / "empty.csv")
    (tmp_path / "header.csv").write_text(HEADER + "\n")
    assert "no data rows" in err(tmp_path / "header.csv")
    noise = np.random.default_rng(0).integers(0, 256, 4000, dtype=np.uint8)
    (tmp_path / "garbage.csv").write_bytes(noise.tobytes())
    assert "binary" in err(tmp_path / "garbage.csv")
    (tmp_path / "latin1.csv").write_bytes((HEADER + "\n2024-01-01,ÉTF,1,1,1,1,1\n").encode("latin-1"))
    assert "not valid UTF-8" in err(tmp_path / "latin1.csv")
    (tmp_path / "utf16.csv").write_bytes((HEADER + "\n2024-01-01,A,1,1,1,1,1\n").encode("utf-16"))
    assert "UTF-16" in err(tmp_path / "utf16.csv")
    (tmp_path / "bars.xlsx").write_bytes(b"PK\x03\x04")
    assert "unknown file type" in err(tmp_path / "bars.xlsx")
    (tmp_path / "quote.csv").write_text(HEADER + '\n2024-01-01,"AAA,1,1,1,1,1\n2024-01-02,B,1,1,1,1,1\n')
    assert "not a well-formed CSV" in err(tmp_path / "quote.csv")
    (tmp_path / "bad.parquet").write_bytes(b"definitely not parquet")
    assert "not a valid Parquet file" in err(tmp_path / "bad.parquet")
    (tmp_path / "bad.csv.gz").write_bytes(b"not gzip at all")
    assert "gzip" in err(tmp_path / "bad.csv.gz")
    (tmp_path / "emptydir").mkdir()
    assert "holds no" in err(tmp_path / "emptydir")
    assert "unsupported data source" in err("http://example.com/bars.csv")


@pytest.mark.parametrize("name", ["bars.csv", "bars.csv.gz", "bars.parquet"])
def test_round_trip(tmp_path: Path, name: str) -> None:
    df = synthetic_market(3, 50, seed=3)
    write_bars(df, tmp_path / name)
    back = validate_bars(load_bars(tmp_path / name)).clean
    pd.testing.assert_frame_equal(back, validate_bars(df).clean)
    if name.endswith(".gz"):
        with gzip.open(tmp_path / name, "rt") as f:
            assert f.readline().strip() == HEADER


def test_directory_of_files(tmp_path: Path) -> None:
    df = synthetic_market(3, 20, seed=4)
    parts = dict(tuple(df.groupby("symbol")))
    write_bars(parts["SYM000"], tmp_path / "d" / "a.csv")
    write_bars(parts["SYM001"], tmp_path / "d" / "b.parquet")
    write_bars(parts["SYM002"], tmp_path / "d" / "sub" / "c.csv.gz")
    (tmp_path / "d" / "README.txt").write_text("ignored")
    raw = load_bars(tmp_path / "d")
    assert len(raw) == 60 and [s["rows"] for s in raw.attrs["sources"]] == [20, 20, 20]
    pd.testing.assert_frame_equal(validate_bars(raw).clean, validate_bars(df).clean)


# ------------------------------------------------------------------------------------------- S3
@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    monkeypatch.delenv("AWS_PROFILE", raising=False)


@pytest.mark.usefixtures("aws_env")
def test_s3_source(moto_endpoint: str, tmp_path: Path) -> None:
    import boto3

    s3 = boto3.client("s3", endpoint_url=moto_endpoint, region_name="us-east-1")
    s3.create_bucket(Bucket="market")
    df = synthetic_market(2, 30, seed=5)
    a, b = (g for _, g in df.groupby("symbol"))
    write_bars(a, tmp_path / "a.csv")
    write_bars(b, tmp_path / "b.parquet")
    s3.upload_file(str(tmp_path / "a.csv"), "market", "bars/2024/a.csv")
    s3.upload_file(str(tmp_path / "b.parquet"), "market", "bars/2024/b.parquet")
    s3.put_object(Bucket="market", Key="bars/notes.txt", Body=b"skip me")
    s3.put_object(Bucket="market", Key="barsextra/x.csv", Body=b"not under the prefix")

    raw = load_bars("s3://market/bars", endpoint_url=moto_endpoint)
    assert len(raw) == 60
    pd.testing.assert_frame_equal(validate_bars(raw).clean, validate_bars(df).clean)
    assert len(load_bars("s3://market/bars/2024/a.csv", endpoint_url=moto_endpoint)) == 30

    with pytest.raises(DataError, match="bucket 'nobucket' does not exist"):
        load_bars("s3://nobucket/bars", endpoint_url=moto_endpoint)
    with pytest.raises(DataError, match="no .* objects under s3://market/empty"):
        load_bars("s3://market/empty", endpoint_url=moto_endpoint)


@pytest.mark.usefixtures("aws_env")
def test_s3_unreachable_is_one_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sources, "_S3_CONNECT_TIMEOUT", 2)
    monkeypatch.setattr(sources, "_S3_MAX_ATTEMPTS", 2)
    with pytest.raises(StorageUnavailable, match=r"cannot reach S3 endpoint http://127\.0\.0\.1:9") as ei:
        load_bars("s3://market/bars", endpoint_url="http://127.0.0.1:9")
    assert "\n" not in str(ei.value)


# ------------------------------------------------------------------------------------ synthetic
def test_synthetic_deterministic_valid_and_consistent() -> None:
    a = synthetic_market(4, 500, seed=11, shifts=[300])
    b = synthetic_market(4, 500, seed=11, shifts=[300])
    pd.testing.assert_frame_equal(a, b)
    assert a.attrs == b.attrs
    assert not synthetic_market(4, 500, seed=12).equals(a)
    assert list(a.columns) == BAR_COLUMNS and len(a) == 2000
    rep = validate_bars(a)  # strict
    assert rep.ok
    pd.testing.assert_frame_equal(rep.clean, a)
    prev_close = a.groupby("symbol")["close"].shift(1)
    gap = (a["open"] / prev_close - 1).abs().dropna()
    assert gap.max() < 0.01
    assert (a["high"] >= a[["open", "close"]].max(axis=1)).all()
    assert (a["low"] <= a[["open", "close"]].min(axis=1)).all()
    assert (a["volume"] > 0).all()
    assert pd.to_datetime(a.attrs["shift_times"]).tolist() == [a["timestamp"].iloc[300]]
    segs = a.attrs["signal"]["segments"]
    assert len(segs) == 2 and segs[0]["strength"] > 0 > segs[1]["strength"]
    json.dumps(a.attrs)  # JSON-able, so Parquet writing keeps working


def test_synthetic_shapes_and_arguments() -> None:
    one = synthetic_market(1, 100, freq="1D", start="2021-03-01")
    assert one["symbol"].nunique() == 1 and one["timestamp"].iloc[1] == pd.Timestamp("2021-03-02")
    assert one.attrs["shift_times"] == []
    many = synthetic_market(60, 40, seed=2)
    assert many["symbol"].nunique() == 60 and validate_bars(many).ok
    with pytest.raises(ConfigError):
        synthetic_market(2, 100, shifts=[100])
    with pytest.raises(ConfigError):
        synthetic_market(0, 100)


def test_synthetic_signal_is_planted_and_flips() -> None:
    n, shift = 6000, 3000
    df = synthetic_market(8, n, seed=21, shifts=[shift])
    logc = np.log(df["close"])
    ret = logc.groupby(df["symbol"]).diff()
    nxt = ret.groupby(df["symbol"]).shift(-1)
    clv = (df["close"] - df["low"]) / (df["high"] - df["low"])
    idx = df.groupby("symbol").cumcount()
    before = (idx > 0) & (idx < shift - 1)
    after = (idx >= shift) & (idx < n - 1)
    w = df.attrs["signal"]["segments"][0]["weights"]
    assert w["ret"] < 0 and w["clv"] < 0
    for x in (ret, clv):
        c_before = np.corrcoef(x[before], nxt[before])[0, 1]
        c_after = np.corrcoef(x[after], nxt[after])[0, 1]
        assert c_before < -0.05 and c_after > 0.05, (c_before, c_after)
    # direction from the planted sign alone: better than a coin before, worse after
    hit = np.sign(-ret) == np.sign(nxt)
    assert hit[before].mean() > 0.52 and hit[after].mean() < 0.48


def test_problem_and_report_are_exported() -> None:
    p = Problem("x", "y", [1], 1)
    assert p.to_dict()["rows"] == [1]
