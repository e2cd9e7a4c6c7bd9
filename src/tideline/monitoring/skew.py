"""Training/serving skew: the features a served version saw, recomputed from the stored bars.

The predictor logs a hash of the features each version saw (its model's columns, in order) and, for a request of
bars, how many bars of each symbol it computed them from (``tideline.monitoring.predictions``). ``check_skew``
takes the latest logged predictions of each version (a sample), recomputes their features from the stored bars
with the version's own stored feature config and the training code (``tideline.features``), and compares:

- **a request of bars**: the same window — each symbol's last ``bars`` stored bars up to its bar time, the
  request's symbols together (cross-sectional ranks). A mismatch means the bars the client sent are not the
  bars the platform stores (a restated or different feed), or the feature code changed since: the model
  answered on inputs training would not have produced from the data it is judged on.
- **features the client sent**: from the start of the stored bars, every stored symbol — as training computes
  them. A mismatch means the client's features are not the training code's. The comparison is bit-level, so a
  client whose history starts elsewhere differs too (exponential averages — RSI, MACD, EMA — remember it).

A row whose bars are not all stored (its bar, or fewer stored bars than the request sent) is ``unavailable``,
never a mismatch.

    >>> VersionSkew("v1", checked=10, mismatched=1).summary()
    'v1: 1 of 10 sampled predictions differ from the features recomputed from stored bars'
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Final

import numpy as np
import pandas as pd

from tideline.errors import DataError, TidelineError
from tideline.features import compute_features, feature_config_hash, last_bar_frame, stored_feature_config
from tideline.monitoring.predictions import feature_hashes

_EXAMPLES: Final = 5


@dataclass
class VersionSkew:
    """One version's sampled predictions: checked, mismatched (by source) and unavailable, with examples."""

    version: str
    checked: int = 0
    mismatched: int = 0
    unavailable: int = 0
    bars_checked: int = 0  # requests of bars
    bars_mismatched: int = 0
    features_checked: int = 0  # features the client sent
    features_mismatched: int = 0
    error: str | None = None  # why the version could not be checked at all
    examples: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready counts and examples."""
        return asdict(self)

    def summary(self) -> str:
        """One line."""
        if self.error:
            return f"{self.version}: not checked ({self.error})"
        text = (f"{self.version}: {self.mismatched} of {self.checked} sampled predictions differ from the features "
                "recomputed from stored bars")
        if self.unavailable:
            text += f" ({self.unavailable} more without their stored bars)"
        return text


class StoredBars:
    """The stored bars sorted by (symbol, timestamp), with each symbol's range: windows are slices."""

    def __init__(self, bars: pd.DataFrame) -> None:
        b = bars.sort_values(["symbol", "timestamp"], kind="stable").reset_index(drop=True)
        b["timestamp"] = pd.to_datetime(b["timestamp"]).astype("datetime64[ns]")
        self.bars = b
        self.ts = b["timestamp"].to_numpy().astype(np.int64)
        sym = b["symbol"].astype(str).to_numpy()
        starts = np.flatnonzero(np.r_[True, sym[1:] != sym[:-1]]) if len(sym) else np.array([], dtype=np.int64)
        ends = np.r_[starts[1:], len(sym)]
        self.range = {str(sym[s]): (int(s), int(e)) for s, e in zip(starts, ends, strict=True)}

    def window(self, symbol: str, at: pd.Timestamp, n: int) -> np.ndarray | None:
        """Row positions of ``symbol``'s last ``n`` bars ending exactly at ``at``; None when not all are stored."""
        if symbol not in self.range:
            return None
        lo, hi = self.range[symbol]
        t = int(pd.Timestamp(at).value)
        end = lo + int(np.searchsorted(self.ts[lo:hi], t, side="right"))
        if end == lo or self.ts[end - 1] != t or end - lo < n:
            return None
        return np.arange(end - n, end)


def check_skew(registry: Any, predictions: pd.DataFrame, bars: pd.DataFrame, *,
               sample: int = 200) -> dict[str, VersionSkew]:
    """Recompute the features of each version's latest ``sample`` logged predictions (whole requests, so a
    request's symbols are recomputed together) from ``bars`` and compare them with the logged hashes.

    ``predictions`` as ``read_predictions`` gives them; ``bars`` validated bars. A version not in the registry,
    or whose stored feature config does not load, gets ``error`` set and nothing counted.
    """
    out: dict[str, VersionSkew] = {}
    if sample <= 0 or predictions is None or len(predictions) == 0 or bars is None or len(bars) == 0:
        return out
    keyed = predictions.loc[predictions["version"].notna() & predictions["symbol"].notna()
                            & predictions["bar_time"].notna() & predictions["feature_hash"].notna()]
    stored = StoredBars(bars)
    for version, rows in keyed.groupby("version", sort=True):
        v = str(version)
        res = out[v] = VersionSkew(v)
        try:
            mv = registry.get(v)
            cfg = stored_feature_config(v, mv.feature_config, mv.feature_config_hash)
            columns = list(mv.features)
            if not columns:
                raise DataError(f"{v} lists no input columns")
        except TidelineError as e:
            res.error = e.message
            continue
        chosen = _latest_requests(rows, sample)
        values, available = recompute_features(chosen, stored, cfg, columns)
        res.unavailable += int((~available).sum())
        from_bars = chosen["bars"].notna().to_numpy()
        for source, mask in (("bars", from_bars & available), ("features", ~from_bars & available)):
            if mask.any():
                _compare(res, chosen.loc[mask], values[mask], source)
        res.checked = res.bars_checked + res.features_checked
        res.mismatched = res.bars_mismatched + res.features_mismatched
    return out


def _latest_requests(rows: pd.DataFrame, sample: int) -> pd.DataFrame:
    """The rows of the latest requests (one row per request, symbol and bar time) until ``sample`` rows."""
    rows = rows.sort_values("time", kind="stable").drop_duplicates(["request_id", "symbol", "bar_time"])
    sizes = rows.groupby("request_id", sort=False).size()
    last_seen = rows.groupby("request_id", sort=False)["time"].max().sort_values(ascending=False, kind="stable")
    keep, total = [], 0
    for rid in last_seen.index:
        if total >= sample:
            break
        keep.append(rid)
        total += int(sizes[rid])
    return rows.loc[rows["request_id"].isin(keep)]


def _compare(res: VersionSkew, rows: pd.DataFrame, recomputed: np.ndarray, source: str) -> None:
    got = feature_hashes(recomputed)
    logged = rows["feature_hash"].astype(str).tolist()
    bad = [i for i, (a, b) in enumerate(zip(logged, got, strict=True)) if a != b]
    if source == "bars":
        res.bars_checked += len(rows)
        res.bars_mismatched += len(bad)
    else:
        res.features_checked += len(rows)
        res.features_mismatched += len(bad)
    for i in bad[: max(0, _EXAMPLES - len(res.examples))]:
        r = rows.iloc[i]
        res.examples.append({"source": source, "request_id": r["request_id"], "symbol": r["symbol"],
                             "bar_time": pd.Timestamp(r["bar_time"]).isoformat(), "logged": logged[i],
                             "recomputed": got[i]})


def recompute_features(rows: pd.DataFrame, stored: StoredBars, cfg: Any, columns: list[str],
                       cache: dict[Any, Any] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The features each logged prediction in ``rows`` was served on, recomputed from the stored bars as the
    predictor computed them (see the module doc: a request of bars from the same window, with its symbols
    together; features the client sent from the start of the stored bars). Returns ``(values, available)``:
    an ``n x len(columns)`` float64 matrix in ``rows``' order, and which rows could be recomputed (the others'
    values are NaN: their stored bars are not all there). ``cache`` (a dict the caller keeps) holds each request's
    features by request and feature config, so a request served to several versions (a shadow's copy) is
    recomputed once."""
    values = np.full((len(rows), len(columns)), np.nan)
    available = np.zeros(len(rows), dtype=bool)
    if len(rows) == 0:
        return values, available
    pos = np.arange(len(rows))
    from_bars = rows["bars"].notna().to_numpy()
    for _, req in rows.loc[from_bars].assign(_p=pos[from_bars]).groupby("request_id", sort=False):
        got = _from_bars_request(req, stored, cfg, columns, cache)
        if got is not None:
            values[req["_p"].to_numpy()] = got
            available[req["_p"].to_numpy()] = True
    if (~from_bars).any():
        got, found = _from_stored_history(rows.loc[~from_bars], stored, cfg, columns)
        values[pos[~from_bars][found]] = got[found]
        available[pos[~from_bars][found]] = True
    return values, available


def _from_bars_request(req: pd.DataFrame, stored: StoredBars, cfg: Any, columns: list[str],
                       cache: dict[Any, Any] | None = None) -> np.ndarray | None:
    key = None
    if cache is not None:
        key = (feature_config_hash(cfg), tuple(sorted((str(sym), pd.Timestamp(t).value, int(n)) for sym, t, n in
                                                      req[["symbol", "bar_time", "bars"]].itertuples(index=False))))
        if key in cache:
            frame_x, at = cache[key]
            return None if frame_x is None else _pick(frame_x, at, req, columns)
    windows = []
    for sym, t, n in req[["symbol", "bar_time", "bars"]].itertuples(index=False, name=None):
        w = stored.window(str(sym), t, int(n))
        if w is None:  # the request's symbols belong together (cross-sectional ranks): all or nothing
            if key is not None:
                cache[key] = (None, None)  # type: ignore[index]
            return None
        windows.append(w)
    frame = stored.bars.iloc[np.concatenate(windows)].reset_index(drop=True)
    try:
        X, meta = last_bar_frame(frame, cfg)
    except DataError:
        X = None
    at = None if X is None else {str(s): i for i, s in enumerate(meta["symbol"].astype(str))}
    if key is not None:
        cache[key] = (X, at)  # type: ignore[index]
    return None if X is None else _pick(X, at, req, columns)


def _pick(X: pd.DataFrame, at: dict[str, int], req: pd.DataFrame, columns: list[str]) -> np.ndarray | None:
    """The request's rows of ``columns`` in a request's recomputed features (None: a column is not there)."""
    try:
        values = X[columns].to_numpy(dtype=np.float64)
    except KeyError:
        return None
    return values[[at[str(s)] for s in req["symbol"]]]


def _from_stored_history(rows: pd.DataFrame, stored: StoredBars, cfg: Any, columns: list[str]
                         ) -> tuple[np.ndarray, np.ndarray]:
    out = np.full((len(rows), len(columns)), np.nan)
    upto = stored.bars.loc[stored.bars["timestamp"] <= rows["bar_time"].max()]
    try:
        frame, _ = compute_features(upto, cfg)
        values = frame[columns]
    except (DataError, KeyError):
        return out, np.zeros(len(rows), dtype=bool)
    key = pd.MultiIndex.from_arrays([frame["symbol"].astype(str), frame["timestamp"]])
    pos = key.get_indexer(pd.MultiIndex.from_arrays([rows["symbol"].astype(str),
                                                      pd.DatetimeIndex(rows["bar_time"]).astype("datetime64[ns]")]))
    found = pos >= 0
    out[found] = values.to_numpy(dtype=np.float64)[pos[found]]
    return out, found


__all__ = ["StoredBars", "VersionSkew", "check_skew", "recompute_features"]
