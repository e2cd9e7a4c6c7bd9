"""Parquet objects read once: a parsed frame is kept by its store etag (a content hash), so a loop tick that
reads the same month of bars or the same prediction-log objects again parses only what changed.

The cache is bounded by the memory of the frames it holds (``MAX_BYTES``, pandas' deep memory usage: a parsed
frame is often several times its compressed parquet object), least recently used out first, and hands out
copies: a caller may change what it gets.
"""

from __future__ import annotations

import io
import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Final

import pandas as pd

MAX_BYTES: Final = 128 * 1024 * 1024
"""the most memory the kept frames may take (their deep memory usage)"""

_lock = threading.Lock()
_cache: OrderedDict[tuple[str, int], tuple[int, pd.DataFrame]] = OrderedDict()
_held = 0


def parquet_frame(data: bytes, etag: str,
                  parse: Callable[[pd.DataFrame], pd.DataFrame] | None = None) -> pd.DataFrame:
    """``pd.read_parquet(data)`` (then ``parse`` of it, when given), from the cache when the same object (etag
    and size; ``parse`` named by its qualified name) was read before. Whatever reading or ``parse`` raises is
    raised, and nothing is kept."""
    global _held
    name = "" if parse is None else f"{parse.__module__}.{parse.__qualname__}"
    key = (f"{etag}\0{name}", len(data))
    with _lock:
        hit = _cache.get(key)
        if hit is not None:
            _cache.move_to_end(key)
            return hit[1].copy()
    df = pd.read_parquet(io.BytesIO(data))
    if parse is not None:
        df = parse(df)
    size = int(df.memory_usage(deep=True).sum())
    if size <= MAX_BYTES // 4 and etag:
        with _lock:
            if key not in _cache:
                _cache[key] = (size, df.copy())
                _held += size
            while _held > MAX_BYTES and _cache:
                _held -= _cache.popitem(last=False)[1][0]
    return df


def clear() -> None:
    """Forget every kept frame."""
    global _held
    with _lock:
        _cache.clear()
        _held = 0


__all__ = ["MAX_BYTES", "clear", "parquet_frame"]
