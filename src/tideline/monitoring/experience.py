"""The experience buffer: every served prediction whose outcome is known, kept as a trading experience.

An experience is one prediction a version served (as active, canary or shadow) on one symbol's bar:

* **state**: the features the model saw, recomputed from the stored bars at the logged bar time with the
  version's own feature config and the training code, and checked against the hash the predictor logged (the
  recomputation of ``tideline.monitoring.skew``: a request of bars from its own window, features a client sent
  from the stored history). A mismatch is training/serving skew: the row is counted and reported
  (``ExperiencePass.skew``), alerted on (``tideline.loop.alerts``, kind ``skew``) and quarantined, never
  trained on. A row whose bars are not all stored cannot be checked: it is counted ``unavailable``, not kept;
* **action**: the position the version's stored rule took on the prediction (``tideline.positions``);
* **reward**: what that position earned over the next bar, net: ``action x next_return - unit_cost x
  |action - previous action|``, the previous action being the same version and role's on the symbol's previous
  bar (flat when there is none) and ``unit_cost`` the version's cost plus its slippage: what
  ``tideline.evaluation`` charges;
* **next state**: the symbol's next bar (``next_bar_time``; ``export`` joins its state in);
* the version, its role, the request, the label's forward return and the bar's volatility regime (against the
  version's stored bounds; ``normal`` without them).

Stored append-only in the registry store as Parquet, by bar day: ``experience/parts/<YYYY-MM-DD>/...parquet``,
de-duplicated on (version, role, symbol, bar_time) against what is stored. Quarantined rows (skew, versions the
registry does not hold, rows or objects that fail the schema) go under ``experience/quarantine/<YYYY-MM-DD>/``,
each row with its ``reason``. Day folders older than ``experience.retention_days`` before the newest bar are
deleted. ``experience/state.json`` says where the next pass reads the prediction log from (the oldest
prediction still waiting for its outcome, for at most ``pending_days``) and keeps the last pass's counts. A
pass that stored something also leaves its counts under ``experience/passes/`` (a small JSON object, never
changed): the control plane's ``tideline_experience*`` counters are counted from them (``tideline.loop.metrics``),
whoever ran the pass. A pass counts what it newly stored: a prediction read again (the log is re-read from the
oldest pending one) is neither added nor quarantined twice.

``read_experiences`` checks what it reads: an object that is not Parquet or lacks the schema is moved to the
quarantine whole (its reason beside it), rows with a missing reward or key or a version the registry does not
hold are moved there too. ``annotate`` marks ``high_value`` (rewards in the top ``annotate_quantile``),
``failed`` (the bottom) and ``mistake`` (a position against the move, among the largest such moves);
``stats`` counts them, per regime too. ``training_set`` is what the rl family fine-tunes on.
"""

from __future__ import annotations

import io
import json
import logging
import re
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Final

import numpy as np
import pandas as pd

from tideline.clock import utcnow
from tideline.config import ExperienceConfig
from tideline.documents import Document
from tideline.errors import DataError, TidelineError, VersionNotFound
from tideline.evaluation import classify_volatility
from tideline.features import stored_feature_config
from tideline.monitoring.feedback import version_scoring
from tideline.monitoring.predictions import COLUMNS as LOG_COLUMNS
from tideline.monitoring.predictions import feature_hashes, naive_utc, read_predictions
from tideline.monitoring.skew import StoredBars, recompute_features
from tideline.store import NotFound
from tideline.store.frames import parquet_frame

log = logging.getLogger(__name__)

PREFIX: Final = "experience/"
PARTS: Final = "experience/parts/"
QUARANTINE: Final = "experience/quarantine/"
STATE_KEY: Final = "experience/state.json"
PASSES: Final = "experience/passes/"
KEY: Final = ("version", "role", "symbol", "bar_time")
STATE: Final = "s."
"""prefix of the state columns: ``s.<feature>`` for each input column of the version"""
COLUMNS: Final[dict[str, str]] = {
    "version": "str", "role": "str", "symbol": "str", "bar_time": "time", "next_bar_time": "time",
    "request_id": "str", "logged_at": "time", "feature_hash": "str", "feature_config_hash": "str",
    "prediction": "float", "action": "float", "next_return": "float", "fwd_return": "float",
    "unit_cost": "float", "turnover": "float", "reward": "float", "regime": "str",
}
"""every experience's columns (besides its state) and their kinds"""
TAGS: Final = ("high_value", "failed", "mistake")
_DAY = re.compile(r"^experience/(parts|quarantine)/(\d{4}-\d{2}-\d{2})/[^/]+$")


# ---------------------------------------------------------------------------------------------- one pass


@dataclass
class ExperiencePass(Document):
    """What one ``collect`` did: predictions read, realized, added, and why the others were not."""

    read: int = 0
    realized: int = 0
    added: int = 0
    already_stored: int = 0
    pending: int = 0
    unknown_bar: int = 0
    duplicates: int = 0
    unavailable: int = 0
    skew: dict[str, int] = field(default_factory=dict)
    """per version: realized rows whose recomputed features differ from what the version saw, newly quarantined
    (a row already in the quarantine from an earlier pass is not counted again)"""
    quarantined: dict[str, int] = field(default_factory=dict)
    """per reason kind (skew, unknown_version, unreadable_version): rows moved to the quarantine"""
    skew_examples: list[dict[str, Any]] = field(default_factory=list)
    deleted_days: list[str] = field(default_factory=list)
    since: str | None = None
    """where this pass read the prediction log from"""
    at: str = ""

    @property
    def skewed(self) -> int:
        """Rows with training/serving skew, all versions."""
        return sum(self.skew.values())

    def summary(self) -> str:
        """One line."""
        text = (f"{self.added} experience(s) added from {self.read} logged prediction(s): {self.realized} realized, "
                f"{self.pending} pending, {self.already_stored} already stored")
        if self.skewed:
            text += f"; {self.skewed} with training/serving skew (quarantined: " + ", ".join(
                f"{v} {n}" for v, n in sorted(self.skew.items())) + ")"
        others = {k: n for k, n in self.quarantined.items() if k != "skew"}
        if others:
            text += "; quarantined " + ", ".join(f"{n} ({k})" for k, n in sorted(others.items()))
        if self.unavailable:
            text += f"; {self.unavailable} without their stored bars"
        return text


def _store(registry: Any) -> Any:
    return getattr(registry, "store", registry)


def read_state(registry: Any) -> dict[str, Any]:
    """``experience/state.json`` (empty before the first pass; an unreadable one is logged and read as empty)."""
    try:
        raw, _ = _store(registry).get(STATE_KEY)
        state = json.loads(raw)
        return state if isinstance(state, dict) else {}
    except NotFound:
        return {}
    except (ValueError, UnicodeDecodeError) as e:
        log.warning("experience state %s is unreadable (%s); the next pass reads the whole log", STATE_KEY, e)
        return {}


def _put_frame(store: Any, key: str, df: pd.DataFrame) -> None:
    buf = io.BytesIO()
    df.to_parquet(buf, index=False)
    store.put(key, buf.getvalue())


def _day(t: Any) -> str:
    return pd.Timestamp(t).strftime("%Y-%m-%d")


def _keys_of(df: pd.DataFrame) -> pd.MultiIndex:
    return pd.MultiIndex.from_arrays([df["version"].astype(str), df["role"].astype(str), df["symbol"].astype(str),
                                      pd.DatetimeIndex(df["bar_time"]).astype("datetime64[ns]")])


def _stored_days(store: Any, area: str) -> dict[str, list[str]]:
    """Keys under ``experience/<area>/`` by bar day."""
    out: dict[str, list[str]] = {}
    for key in store.list(f"{PREFIX}{area}/"):
        m = _DAY.match(key)
        if m:
            out.setdefault(m.group(2), []).append(key)
    return out


def _read_parts(store: Any, keys: list[str], columns: list[str] | None = None) -> pd.DataFrame:
    frames = []
    for key in keys:
        if not key.endswith(".parquet"):
            continue
        try:
            raw, etag = store.get(key)
            df = parquet_frame(raw, etag)
        except (OSError, ValueError, NotFound) as e:
            log.warning("skipped unreadable experience object %s: %s", key, e)
            continue
        if columns is not None:
            if not set(columns) <= set(df.columns):
                continue
            df = df[columns]
        frames.append(df)
    frames = [f for f in frames if len(f)]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=columns or [])


def collect(registry: Any, bars: pd.DataFrame, config: ExperienceConfig | None = None, *,
            now: datetime | None = None) -> ExperiencePass:
    """Add the logged predictions whose outcomes the stored ``bars`` (validated) now show to the buffer; see the
    module doc. Never raises for one version's problem (its rows are quarantined with the reason); the store's
    errors (``StorageUnavailable``) propagate, leaving the buffer and its state as they were."""
    cfg = config or ExperienceConfig()
    store = _store(registry)
    now = now or utcnow()
    state = read_state(registry)
    floor = pd.Timestamp(now - timedelta(days=cfg.pending_days))
    since = state.get("since")
    try:
        since_t = pd.Timestamp(since) if since else None
    except (TypeError, ValueError):
        since_t = None
    if since_t is not None and since_t.tzinfo is None:
        since_t = since_t.tz_localize("UTC")
    res = ExperiencePass(since=since_t.isoformat() if since_t is not None else None, at=now.isoformat())
    preds = read_predictions(registry, since=since_t)
    res.read = int(len(preds))
    keyed = preds.loc[preds["version"].notna() & preds["symbol"].notna() & preds["bar_time"].notna()]
    new_rows: list[pd.DataFrame] = []
    quarantine: list[pd.DataFrame] = []
    pending_times: list[pd.Timestamp] = []
    b = bars.assign(timestamp=naive_utc(bars["timestamp"]), symbol=bars["symbol"].astype(str))
    stored_bars = StoredBars(b)
    next_bar = _next_bar_times(b)
    features_cache: dict[Any, Any] = {}  # a request served to several versions is recomputed once
    for version, rows in keyed.groupby("version", sort=True):
        v = str(version)
        try:
            mv = registry.get(v)
        except VersionNotFound:
            quarantine.append(_quarantined(rows, "unknown_version", f"{v} is not in the registry", now))
            continue
        try:
            sc = version_scoring(mv)
            fcfg = stored_feature_config(v, mv.feature_config, mv.feature_config_hash)
            columns = [str(c) for c in mv.features]
            if not columns:
                raise DataError(f"{v} lists no input columns")
        except TidelineError as e:
            quarantine.append(_quarantined(rows, "unreadable_version", e.message, now))
            continue
        joined = sc.join(rows, b, regimes=True)
        status = joined["status"].to_numpy()
        res.duplicates += int(joined.attrs.get("n_duplicates", 0))
        res.unknown_bar += int((status == "unknown_bar").sum())
        waiting = joined.loc[status == "pending", "time"]
        res.pending += int(len(waiting))
        waiting = waiting.loc[waiting >= floor]  # older ones are given up on
        if len(waiting):
            pending_times.append(pd.Timestamp(waiting.min()))
        real = joined.loc[(status == "realized") & np.isfinite(joined["prediction"].to_numpy(dtype=np.float64))
                          & np.isfinite(joined["next_return"].to_numpy(dtype=np.float64))].reset_index(drop=True)
        res.realized += int(len(real))
        if real.empty:
            continue
        values, available = recompute_features(real, stored_bars, fcfg, columns, features_cache)
        res.unavailable += int((~available).sum())
        real, values = real.loc[available].reset_index(drop=True), values[available]
        got = np.array(feature_hashes(values), dtype=object) if len(values) else np.array([], dtype=object)
        logged = real["feature_hash"].astype(str).to_numpy()
        skewed = got != logged
        if skewed.any():
            bad = real.loc[skewed]
            for (_, r), h in zip(bad.head(max(0, 5 - len(res.skew_examples))).iterrows(), got[skewed], strict=False):
                res.skew_examples.append({"version": v, "symbol": r["symbol"], "bar_time": r["bar_time"].isoformat(),
                                          "logged": r["feature_hash"], "recomputed": h})
            quarantine.append(_quarantined(
                bad[list(LOG_COLUMNS)], "skew", f"the features recomputed from the stored bars differ from what {v} "
                                                f"saw (training/serving skew)", now))
        ok = ~skewed
        if ok.any():
            new_rows.append(_experiences(real.loc[ok].reset_index(drop=True), values[ok], columns, mv, sc,
                                         next_bar))
    _commit(store, res, new_rows, quarantine, cfg)
    res.skew_examples = [e for e in res.skew_examples if e["version"] in res.skew]
    if res.added or res.quarantined:  # what the counters count; a pass that stored nothing leaves no record
        store.put(f"{PASSES}{pd.Timestamp(now).strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:8]}.json",
                  json.dumps(res.to_dict(), sort_keys=True).encode())
    nxt = min(pending_times) if pending_times else (pd.Timestamp(preds["time"].max()) if len(preds) else since_t)
    store.put(STATE_KEY, json.dumps({"since": nxt.isoformat() if nxt is not None else None,
                                     "last_pass": res.to_dict()}, sort_keys=True).encode())
    return res


def _next_bar_times(bars: pd.DataFrame) -> pd.Series:
    """Each (symbol, bar time)'s next bar time."""
    b = bars[["symbol", "timestamp"]].sort_values(["symbol", "timestamp"], kind="stable")
    nxt = b.groupby("symbol", sort=False)["timestamp"].shift(-1)
    return pd.Series(nxt.to_numpy(), index=pd.MultiIndex.from_frame(b))


def _quarantined(rows: pd.DataFrame, kind: str, reason: str, now: datetime) -> pd.DataFrame:
    out = rows.copy()
    for c in out.columns:
        if out[c].dtype == object:
            out[c] = out[c].astype("string")
    out["reason_kind"] = kind
    out["reason"] = reason
    out["quarantined_at"] = pd.Timestamp(now).isoformat()
    return out


def _experiences(real: pd.DataFrame, values: np.ndarray, columns: list[str], mv: Any, sc: Any,
                 next_bar: pd.Series) -> pd.DataFrame:
    """The experience rows of one version's realized, verified predictions (previous actions not yet known)."""
    vol = real["vol"].to_numpy(dtype=np.float64) if "vol" in real else np.full(len(real), np.nan)
    unit = sc.cost_bps / 1e4 + (sc.slippage_vol * np.nan_to_num(vol, nan=0.0) if sc.slippage_vol else 0.0)
    regime = classify_volatility(vol, sc.regime_bounds[1:] if sc.regime_bounds else None) \
        if sc.regime_bounds else np.full(len(real), "normal", dtype=object)
    key = pd.MultiIndex.from_arrays([real["symbol"].astype(str),
                                     pd.DatetimeIndex(real["bar_time"]).astype("datetime64[ns]")])
    df = pd.DataFrame({
        "version": real["version"].astype(str), "role": real["role"].fillna("active").astype(str),
        "symbol": real["symbol"].astype(str), "bar_time": real["bar_time"].astype("datetime64[ns]"),
        "next_bar_time": pd.to_datetime(next_bar.reindex(key).to_numpy()).astype("datetime64[ns]"),
        "request_id": real["request_id"].fillna("").astype(str),
        "logged_at": naive_utc(real["time"]), "feature_hash": real["feature_hash"].astype(str),
        "feature_config_hash": str(mv.feature_config_hash or ""),
        "prediction": real["prediction"].to_numpy(dtype=np.float64),
        "action": real["position"].to_numpy(dtype=np.float64),
        "next_return": real["next_return"].to_numpy(dtype=np.float64),
        "fwd_return": real["fwd_return"].to_numpy(dtype=np.float64),
        "unit_cost": np.broadcast_to(unit, (len(real),)).astype(np.float64),
        "turnover": np.nan, "reward": np.nan, "regime": np.asarray(regime, dtype=object).astype(str),
    })
    for j, c in enumerate(columns):
        df[STATE + c] = values[:, j]
    return df


def _commit(store: Any, res: ExperiencePass, new_rows: list[pd.DataFrame], quarantine: list[pd.DataFrame],
            cfg: ExperienceConfig) -> None:
    """De-duplicate against the store, fill in turnover and reward, write the parts and the quarantine,
    apply the retention."""
    parts = _stored_days(store, "parts")
    held = _stored_days(store, "quarantine")
    new = pd.concat(new_rows, ignore_index=True) if new_rows else None
    if new is not None and len(new):
        days = sorted({_day(t) for t in new["bar_time"]})
        first = _day(pd.Timestamp(days[0]) - pd.Timedelta(days=1))
        near = [k for d, ks in parts.items() if first <= d <= days[-1] for k in ks]
        stored = _read_parts(store, near, [*KEY, "next_bar_time", "action"])
        if len(stored):
            dup = _keys_of(new).isin(_keys_of(stored))
            res.already_stored += int(dup.sum())
            new = new.loc[~dup].reset_index(drop=True)
        _reward(new, stored)
        res.added = int(len(new))
        for (day, version), part in new.groupby([new["bar_time"].dt.strftime("%Y-%m-%d"), "version"], sort=True):
            _put_frame(store, f"{PARTS}{day}/{version}-{uuid.uuid4().hex[:12]}.parquet", part.reset_index(drop=True))
    if quarantine:
        q = pd.concat(quarantine, ignore_index=True)
        q["bar_time"] = naive_utc(q["bar_time"])
        days = sorted({_day(t) for t in q["bar_time"]})
        near = [k for d, ks in held.items() if days[0] <= d <= days[-1] for k in ks]
        stored_q = _read_parts(store, near, list(KEY))
        if len(stored_q):
            q = q.loc[~_keys_of(q).isin(_keys_of(stored_q))]
        for kind, n in q["reason_kind"].value_counts().items():
            res.quarantined[str(kind)] = res.quarantined.get(str(kind), 0) + int(n)
        for version, n in q.loc[q["reason_kind"] == "skew", "version"].value_counts().sort_index().items():
            res.skew[str(version)] = int(n)
        for day, part in q.groupby(q["bar_time"].dt.strftime("%Y-%m-%d"), sort=True):
            _put_frame(store, f"{QUARANTINE}{day}/{uuid.uuid4().hex[:12]}.parquet", part.reset_index(drop=True))
    res.deleted_days = _retain(store, cfg.retention_days)


def _reward(new: pd.DataFrame, stored: pd.DataFrame) -> None:
    """Turnover and net reward of each new experience: its previous action is the same version and role's on
    the symbol's previous bar, among the new rows or the stored ones (flat when there is none)."""
    if new.empty:
        return
    prev_src = pd.concat([new[[*KEY[:3], "next_bar_time", "action"]],
                          stored[[*KEY[:3], "next_bar_time", "action"]] if len(stored) else None], ignore_index=True)
    prev_src = prev_src.dropna(subset=["next_bar_time"]).drop_duplicates([*KEY[:3], "next_bar_time"])
    idx = pd.MultiIndex.from_arrays([prev_src["version"].astype(str), prev_src["role"].astype(str),
                                     prev_src["symbol"].astype(str),
                                     pd.DatetimeIndex(prev_src["next_bar_time"]).astype("datetime64[ns]")])
    prev = pd.Series(prev_src["action"].to_numpy(dtype=np.float64), index=idx)
    prev_action = prev.reindex(_keys_of(new)).to_numpy(dtype=np.float64)
    prev_action = np.nan_to_num(prev_action, nan=0.0)
    a = new["action"].to_numpy(dtype=np.float64)
    new["turnover"] = np.abs(a - prev_action)
    new["reward"] = a * new["next_return"].to_numpy(dtype=np.float64) - new["unit_cost"].to_numpy() * new["turnover"]


def _retain(store: Any, retention_days: float) -> list[str]:
    """Delete day folders (parts and quarantine) older than ``retention_days`` before the newest bar day."""
    parts, held = _stored_days(store, "parts"), _stored_days(store, "quarantine")
    if not parts:
        return []
    newest = pd.Timestamp(max(parts))
    cutoff = _day(newest - pd.Timedelta(days=retention_days))
    gone = sorted({d for d in [*parts, *held] if d < cutoff})
    for d in gone:
        for key in [*parts.get(d, []), *held.get(d, [])]:
            store.delete(key)
    return gone


# ---------------------------------------------------------------------------------------------- reading


def read_experiences(registry: Any, *, since: Any = None, until: Any = None, versions: set[str] | None = None,
                     now: datetime | None = None) -> pd.DataFrame:
    """Every stored experience with ``since <= bar_time < until`` (either optional; naive = UTC), oldest bar
    first, after checking what was read (see the module doc: bad objects and rows are moved to the quarantine
    with their reason, never returned). ``versions``: the versions the registry holds (default: asked of it)."""
    store = _store(registry)
    lo = naive_utc(pd.Series([since])).iloc[0] if since is not None else None
    hi = naive_utc(pd.Series([until])).iloc[0] if until is not None else None
    if versions is None:
        versions = {mv.version for mv in registry.list_versions()} if hasattr(registry, "list_versions") else None
    now = now or utcnow()
    frames = []
    for day, keys in sorted(_stored_days(store, "parts").items()):
        if (lo is not None and day < _day(lo)) or (hi is not None and day > _day(hi)):
            continue
        for key in sorted(keys):
            df = _checked_part(store, key, versions, now)
            if df is not None and len(df):
                frames.append(df)
    out = pd.concat(frames, ignore_index=True) if frames else _empty()
    if lo is not None:
        out = out.loc[out["bar_time"] >= lo]
    if hi is not None:
        out = out.loc[out["bar_time"] < hi]
    return out.sort_values(["bar_time", "symbol", "version", "role"], kind="stable").reset_index(drop=True)


def _empty() -> pd.DataFrame:
    kinds = {"str": object, "time": "datetime64[ns]", "float": np.float64}
    return pd.DataFrame({c: pd.Series([], dtype=kinds[k]) for c, k in COLUMNS.items()})


def _schema_problem(df: pd.DataFrame) -> str | None:
    missing = [c for c in COLUMNS if c not in df.columns]
    if missing:
        return f"lacks the columns {missing}"
    for c, kind in COLUMNS.items():
        s = df[c]
        if kind == "float" and not pd.api.types.is_numeric_dtype(s):
            return f"column {c} is not numeric"
        if kind == "time" and not pd.api.types.is_datetime64_any_dtype(s):
            return f"column {c} is not a time"
    return None


def _checked_part(store: Any, key: str, versions: set[str] | None, now: datetime) -> pd.DataFrame | None:
    try:
        raw, etag = store.get(key)
    except NotFound:
        return None
    try:
        df = parquet_frame(raw, etag)
        problem = _schema_problem(df)
    except (OSError, ValueError) as e:
        problem = f"is not readable Parquet ({type(e).__name__})"
    if problem is not None:
        _quarantine_object(store, key, raw, f"{key} {problem}", now)
        return None
    reasons = pd.Series("", index=df.index, dtype=object)
    keyless = df[list(KEY)].isna().any(axis=1) | (df["version"].astype(str) == "")
    reasons[keyless] = "missing_key"
    bad_reward = ~np.isfinite(df[["reward", "action", "next_return"]].to_numpy(dtype=np.float64)).all(axis=1)
    reasons[(reasons == "") & bad_reward] = "missing_reward"
    if versions is not None:
        unknown = ~df["version"].astype(str).isin(versions)
        reasons[(reasons == "") & unknown] = "unknown_version"
    if (reasons == "").all():
        return df
    bad = df.loc[reasons != ""]
    text = {"missing_key": "no version, role, symbol or bar time", "missing_reward": "no reward, action or return",
            "unknown_version": "its version is not in the registry"}
    q = _quarantined(bad, "", "", now)
    q["reason_kind"] = reasons[reasons != ""].to_numpy()
    q["reason"] = [f"{key}: {text[k]}" for k in q["reason_kind"]]
    day = _DAY.match(key).group(2)  # type: ignore[union-attr]
    _put_frame(store, f"{QUARANTINE}{day}/{uuid.uuid4().hex[:12]}.parquet", q.reset_index(drop=True))
    good = df.loc[reasons == ""].reset_index(drop=True)
    if len(good):
        _put_frame(store, key.replace(".parquet", f"-{uuid.uuid4().hex[:6]}.parquet"), good)
    store.delete(key)
    log.warning("experience: moved %d row(s) of %s to the quarantine (%s)", len(bad), key,
                ", ".join(sorted(set(q["reason_kind"]))))
    return good


def _quarantine_object(store: Any, key: str, raw: bytes, reason: str, now: datetime) -> None:
    m = _DAY.match(key)
    day = m.group(2) if m else pd.Timestamp(now).strftime("%Y-%m-%d")
    name = key.rsplit("/", 1)[-1]
    store.put(f"{QUARANTINE}{day}/{name}.refused", raw)
    store.put(f"{QUARANTINE}{day}/{name}.reason.json",
              json.dumps({"key": key, "reason": reason, "at": pd.Timestamp(now).isoformat()}).encode())
    store.delete(key)
    log.warning("experience: moved %s to the quarantine: %s", key, reason)


def read_quarantine(registry: Any) -> pd.DataFrame:
    """The quarantined rows (with ``reason_kind`` and ``reason``) and refused objects (one row each: ``key``,
    ``reason_kind`` = ``refused_object``)."""
    store = _store(registry)
    rows, objects = [], []
    for _, keys in sorted(_stored_days(store, "quarantine").items()):
        rows.extend(k for k in keys if k.endswith(".parquet"))
        for k in keys:
            if k.endswith(".reason.json"):
                try:
                    d = json.loads(store.get(k)[0])
                except (NotFound, ValueError):
                    continue
                objects.append({"key": d.get("key"), "reason_kind": "refused_object", "reason": d.get("reason"),
                                "quarantined_at": d.get("at")})
    df = _read_parts(store, rows)
    if objects:
        df = pd.concat([df, pd.DataFrame(objects)], ignore_index=True)
    return df


# ---------------------------------------------------------------------------------------------- annotations


def annotate(df: pd.DataFrame, quantile: float = 0.05) -> pd.DataFrame:
    """``df`` with ``hit`` (the action's side was the next bar's; NaN while flat) and the tags ``high_value``,
    ``failed`` and ``mistake`` (see the module doc), measured over the rows of ``df``."""
    out = df.copy()
    a = out["action"].to_numpy(dtype=np.float64)
    r = out["reward"].to_numpy(dtype=np.float64)
    nr = out["next_return"].to_numpy(dtype=np.float64)
    out["hit"] = np.where(a != 0, (np.sign(a) == np.sign(nr)).astype(np.float64), np.nan)
    if len(out) == 0:
        for t in TAGS:
            out[t] = pd.Series([], dtype=bool)
        return out
    hi, lo = np.quantile(r, 1 - quantile), np.quantile(r, quantile)
    out["high_value"] = (r >= hi) & (r > 0)
    out["failed"] = (r <= lo) & (r < 0)
    wrong = (a != 0) & (np.sign(a) == -np.sign(nr)) & (nr != 0)
    size = np.abs(nr)
    cut = np.quantile(size[wrong], 1 - quantile) if wrong.any() else np.inf
    out["mistake"] = wrong & (size >= cut)
    return out


@dataclass
class ExperienceStats(Document):
    """The buffer at a glance (``tideline experience stats``)."""

    rows: int = 0
    versions: dict[str, int] = field(default_factory=dict)
    roles: dict[str, int] = field(default_factory=dict)
    symbols: int = 0
    first_bar: str | None = None
    last_bar: str | None = None
    reward_bps: float = 0.0
    """mean net reward per experience, in basis points"""
    total_reward: float = 0.0
    hit_rate: float | None = None
    regimes: dict[str, int] = field(default_factory=dict)
    tags: dict[str, int] = field(default_factory=dict)
    regime_tags: dict[str, dict[str, int]] = field(default_factory=dict)
    quarantined: dict[str, int] = field(default_factory=dict)
    last_pass: dict[str, Any] | None = None


def stats(registry: Any, quantile: float = 0.05, *, now: datetime | None = None) -> ExperienceStats:
    """Counts, rewards, hit rate, tags and per-regime counts of the whole buffer, the quarantine's counts per
    reason and the last pass."""
    df = annotate(read_experiences(registry, now=now), quantile)
    q = read_quarantine(registry)
    st = ExperienceStats(rows=int(len(df)), last_pass=read_state(registry).get("last_pass"))
    if len(q):
        st.quarantined = {str(k): int(n) for k, n in q["reason_kind"].value_counts().sort_index().items()}
    if df.empty:
        return st
    st.versions = {str(k): int(n) for k, n in df["version"].value_counts().sort_index().items()}
    st.roles = {str(k): int(n) for k, n in df["role"].value_counts().sort_index().items()}
    st.symbols = int(df["symbol"].nunique())
    st.first_bar, st.last_bar = df["bar_time"].min().isoformat(), df["bar_time"].max().isoformat()
    st.reward_bps = round(float(df["reward"].mean()) * 1e4, 4)
    st.total_reward = round(float(df["reward"].sum()), 6)
    hits = df["hit"].dropna()
    st.hit_rate = round(float(hits.mean()), 4) if len(hits) else None
    st.regimes = {str(k): int(n) for k, n in df["regime"].value_counts().sort_index().items()}
    st.tags = {t: int(df[t].sum()) for t in TAGS}
    st.regime_tags = {str(reg): {t: int(g[t].sum()) for t in TAGS} for reg, g in df.groupby("regime", sort=True)}
    return st


def state_columns(df: pd.DataFrame) -> list[str]:
    """The feature names of the state columns present in ``df``."""
    return [c[len(STATE):] for c in df.columns if c.startswith(STATE)]


def with_next_state(df: pd.DataFrame) -> pd.DataFrame:
    """``df`` with ``next.<feature>`` columns: the state of the same version and role on the symbol's next bar
    (NaN where that experience is not in ``df``) and ``done`` (no next experience)."""
    feats = state_columns(df)
    right = df[[*KEY[:3], "bar_time", *(STATE + f for f in feats)]].rename(
        columns={"bar_time": "next_bar_time", **{STATE + f: "next." + f for f in feats}})
    out = df.merge(right.drop_duplicates([*KEY[:3], "next_bar_time"]), on=[*KEY[:3], "next_bar_time"], how="left")
    out["done"] = out[[f"next.{f}" for f in feats]].isna().all(axis=1) if feats else True
    return out


def training_set(registry: Any, columns: list[str], feature_config_hash: str, before: Any,
                 config: ExperienceConfig | None = None) -> tuple[pd.DataFrame, pd.DataFrame] | None:
    """The experiences a policy reading ``columns`` (features of ``feature_config_hash``) may fine-tune on:
    those whose bar is before ``before`` (the caller keeps them off its hold-out), of that feature config, one
    per (symbol, bar time); ``(X, rows)`` with ``rows`` holding ``symbol``, ``bar_time``, ``next_return``,
    ``unit_cost`` and ``weight`` (``finetune_weight`` for an annotated experience, else 1). None when none."""
    cfg = config or ExperienceConfig()
    df = read_experiences(registry, until=before)
    if df.empty:
        return None
    df = df.loc[df["feature_config_hash"].astype(str) == str(feature_config_hash)]
    need = [STATE + c for c in columns]
    if df.empty or not set(need) <= set(df.columns):
        return None
    df = annotate(df.dropna(subset=need, how="all").reset_index(drop=True), cfg.annotate_quantile)
    df["weight"] = np.where(df[list(TAGS)].any(axis=1), cfg.finetune_weight, 1.0)
    df = df.sort_values("weight", ascending=False, kind="stable").drop_duplicates(["symbol", "bar_time"])
    df = df.sort_values(["symbol", "bar_time"], kind="stable").reset_index(drop=True)
    if df.empty:
        return None
    X = df[need].set_axis(columns, axis=1).astype(np.float32)
    return X, df[["symbol", "bar_time", "next_return", "unit_cost", "weight"]]


def new_since(registry: Any, after: Any) -> int:
    """How many experiences (one per version, role, symbol and bar) have a bar after ``after``: only the day
    folders from ``after``'s day on are read."""
    store = _store(registry)
    t = naive_utc(pd.Series([after])).iloc[0]
    keys = [k for d, ks in _stored_days(store, "parts").items() if d >= _day(t) for k in ks]
    df = _read_parts(store, keys, ["bar_time"])
    return int((pd.to_datetime(df["bar_time"]) > t).sum()) if len(df) else 0


__all__ = ["COLUMNS", "PASSES", "ExperiencePass", "ExperienceStats", "annotate", "collect", "new_since", "read_experiences",
           "read_quarantine", "read_state", "state_columns", "stats", "training_set", "with_next_state"]
