"""The parsed-parquet cache: same object -> same frame (a copy), changed object -> parsed again, bounded."""

from __future__ import annotations

import io

import pandas as pd
import pytest

from tideline.errors import DataError
from tideline.store import FileStore, frames
from tideline.store.frames import parquet_frame


def _bytes(df: pd.DataFrame) -> bytes:
    buf = io.BytesIO()
    df.to_parquet(buf, index=False)
    return buf.getvalue()


def test_a_rewritten_object_is_parsed_again_and_callers_get_copies(tmp_path) -> None:  # noqa: ANN001
    frames.clear()
    store = FileStore(tmp_path)
    store.put("a.parquet", _bytes(pd.DataFrame({"x": [1, 2]})))
    first = parquet_frame(*store.get("a.parquet"))
    first.loc[0, "x"] = 99  # a caller changing what it got does not change the cache
    assert parquet_frame(*store.get("a.parquet"))["x"].tolist() == [1, 2]
    store.put("a.parquet", _bytes(pd.DataFrame({"x": [3]})))  # new content: a new etag
    assert parquet_frame(*store.get("a.parquet"))["x"].tolist() == [3]


def test_a_parse_step_is_cached_apart_and_its_errors_are_not() -> None:
    frames.clear()
    raw = _bytes(pd.DataFrame({"x": [1, 2]}))
    calls = []

    def double(df: pd.DataFrame) -> pd.DataFrame:
        calls.append(1)
        return df.assign(x=df["x"] * 2)

    def refuse(df: pd.DataFrame) -> pd.DataFrame:
        raise DataError("no")

    assert parquet_frame(raw, "e1", double)["x"].tolist() == [2, 4]
    assert parquet_frame(raw, "e1", double)["x"].tolist() == [2, 4]
    assert parquet_frame(raw, "e1")["x"].tolist() == [1, 2]
    assert len(calls) == 1
    for _ in range(2):
        with pytest.raises(DataError):
            parquet_frame(raw, "e1", refuse)


def test_the_cache_holds_at_most_max_bytes(monkeypatch) -> None:  # noqa: ANN001
    frames.clear()
    df = pd.DataFrame({"x": range(100)})
    raw, size = _bytes(df), int(df.memory_usage(deep=True).sum())  # bounded by what the frames take in memory
    monkeypatch.setattr(frames, "MAX_BYTES", 4 * size)
    for i in range(10):
        parquet_frame(raw, f"e{i}")
    assert frames._held <= 4 * size
    assert len(frames._cache) == 4
