"""The loop's ingest: each file once, files still being written left alone, restatements reported and handled
by the setting, late bars merged in order, broken files refused with their reason, kills idempotent."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
import pytest

from tideline.data import synthetic_market, write_bars
from tideline.loop.ingest import STATE_KEY, ingest, stored_bars
from tideline.store import FileStore

NOW = 2_000_000_000.0  # the loop's clock (epoch seconds); files are dated relative to it


@pytest.fixture
def market() -> pd.DataFrame:
    return synthetic_market(n_symbols=2, n_bars=200, seed=3)


def drop(loc: Path, name: str, df: pd.DataFrame, age_s: float = 3600.0) -> Path:
    path = write_bars(df, loc / name)
    os.utime(path, (NOW - age_s, NOW - age_s))
    return path


def test_each_file_once_by_content_and_late_bars_in_order(tmp_path: Path, market: pd.DataFrame) -> None:
    store, loc = FileStore(tmp_path / "reg"), tmp_path / "in"
    loc.mkdir()
    t = market["timestamp"].drop_duplicates().sort_values()
    first, late, recent = t.iloc[100], t.iloc[50], t.iloc[150]
    drop(loc, "a.csv", market[(market["timestamp"] < late)])
    drop(loc, "c.parquet", market[(market["timestamp"] >= first) & (market["timestamp"] < recent)])
    rep = ingest(store, str(loc), now=NOW)
    assert [f.outcome for f in rep.files] == ["ingested", "ingested"] and rep.added == 2 * 100
    drop(loc, "b.csv", market[(market["timestamp"] >= late) & (market["timestamp"] < first)])  # arrives late
    drop(loc, "a-copy.csv", market[(market["timestamp"] < late)])  # the same content under another name
    rep = ingest(store, str(loc), now=NOW)
    (b,) = rep.files
    assert b.name.endswith("b.csv") and b.added == 100 and b.late == 100 and rep.known == 3
    got = stored_bars(store)
    want = market[market["timestamp"] < recent].sort_values(["symbol", "timestamp"]).reset_index(drop=True)
    pd.testing.assert_frame_equal(got[want.columns.tolist()], want, check_dtype=False)
    assert ingest(store, str(loc), now=NOW).files == []  # nothing new


def test_files_still_being_written_are_left_for_later(tmp_path: Path, market: pd.DataFrame) -> None:
    store, loc = FileStore(tmp_path / "reg"), tmp_path / "in"
    loc.mkdir()
    drop(loc, "fresh.csv", market.head(50), age_s=5)  # modified 5 s ago: maybe still being written
    drop(loc, "upload.csv", market.head(50)).rename(loc / "upload.csv.part")  # being written, then renamed
    drop(loc, ".hidden.csv", market.head(50))
    rep = ingest(store, str(loc), now=NOW, settle_s=60)
    assert rep.files == [] and [Path(w).name for w in rep.waiting] == ["fresh.csv"]
    rep = ingest(store, str(loc), now=NOW + 120, settle_s=60)
    assert [Path(f.name).name for f in rep.files] == ["fresh.csv"]


@pytest.mark.parametrize("policy", ["refuse", "newer"])
def test_restated_bars_are_reported_and_handled_by_the_setting(tmp_path: Path, market: pd.DataFrame,
                                                               policy: str) -> None:
    store, loc = FileStore(tmp_path / "reg"), tmp_path / "in"
    loc.mkdir()
    drop(loc, "a.csv", market.head(100))
    ingest(store, str(loc), now=NOW, restatements=policy)  # type: ignore[arg-type]
    fixed = market.iloc[90:120].copy()
    fixed.loc[fixed.index[:3], "close"] *= 1.001  # three bars restated (inside their ranges)
    fixed.loc[fixed.index[:3], "high"] = fixed.loc[fixed.index[:3], ["high", "close"]].max(axis=1)
    drop(loc, "b.csv", fixed)
    (out,) = ingest(store, str(loc), now=NOW, restatements=policy).files  # type: ignore[arg-type]
    assert out.restated == 3
    got = stored_bars(store).set_index(["symbol", "timestamp"])["close"]
    key = (fixed["symbol"].iloc[0], fixed["timestamp"].iloc[0])
    if policy == "refuse":
        assert out.outcome == "refused" and "restate" in out.reason and out.added == 0
        assert len(got) == 100 and got[key] == market.loc[market.index[90], "close"]
    else:
        assert out.outcome == "ingested" and out.added == 20 and out.duplicates == 7
        assert len(got) == 120 and got[key] == pytest.approx(fixed["close"].iloc[0])


def test_a_broken_file_is_refused_with_its_reason_once(tmp_path: Path, market: pd.DataFrame) -> None:
    store, loc = FileStore(tmp_path / "reg"), tmp_path / "in"
    loc.mkdir()
    bad = market.head(20).copy()
    bad.loc[bad.index[3], "high"] = -1.0
    drop(loc, "bad.csv", bad)
    drop(loc, "good.csv", market.iloc[20:40])
    rep = ingest(store, str(loc), now=NOW)
    assert [(Path(f.name).name, f.outcome) for f in rep.files] == [("bad.csv", "refused"), ("good.csv", "ingested")]
    assert "high_below_low" in rep.refused[0].reason and "\n" not in rep.refused[0].reason
    assert len(stored_bars(store)) == 20
    assert ingest(store, str(loc), now=NOW).known == 2  # not read again until its content changes


def test_killed_after_storing_bars_before_remembering_the_file(tmp_path: Path, market: pd.DataFrame,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    from tideline.loop import ingest as mod

    store, loc = FileStore(tmp_path / "reg"), tmp_path / "in"
    loc.mkdir()
    drop(loc, "a.csv", market.head(80))

    def killed(*a: object, **k: object) -> None:
        raise SystemExit("killed")

    monkeypatch.setattr(mod, "_remember", killed)
    with pytest.raises(SystemExit):
        ingest(store, str(loc), now=NOW)
    monkeypatch.undo()
    assert not store.exists(STATE_KEY) and len(stored_bars(store)) == 80
    (again,) = ingest(store, str(loc), now=NOW).files  # read again: its bars are there already
    assert again.outcome == "ingested" and again.added == 0 and again.duplicates == 80
    assert len(stored_bars(store)) == 80
