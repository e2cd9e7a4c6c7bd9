"""File-based wrappers over ``tideline.training.cycle``: one function per pipeline step.

Each KFP component (``tideline.training.kfp.components``) calls exactly one of these with the local paths of its
input and output artifacts, so a component body is a few lines and every step can be run and tested
without Kubeflow. Artifacts are directories:

- bars / clean bars: ``bars.parquet`` + ``ingest.json`` / ``info.json``
- dataset: ``dataset.parquet`` (features, ``__y``, ``__next_return``, ``__timestamp``, ``__symbol``),
  ``dataset.json`` (feature spec, data info, evaluation plan summary) and ``plan.npz`` (row positions of
  the development rows, the hold-out rows and every walk-forward fold; loaded with ``allow_pickle=False``)
- model: what ``Model.save`` writes (nothing else, so the registry stores exactly the model)
- training result: ``result.json`` (``FamilyResult.to_dict``), ``holdout_pred.npy``, ``reference.parquet``,
  ``fold_returns.parquet`` (the walk-forward strategy returns per test period)
- decisions / registered: ``decisions.json`` / ``registered.json``

Settings travel as a JSON string (``settings_json``): the caller's full ``Settings.model_dump(mode="json")``
or any subset of it; it is applied as overrides with ``load_settings`` (file < env < these).

When a step fails, the error (its class, message and exit code) is written to ``tideline_error.json`` next
to the task's outputs before it is re-raised, so a local run can name the failing task and its cause.
"""

from __future__ import annotations

import functools
import inspect
import json
import logging
import tempfile
import traceback
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pandas as pd

from tideline.config import Settings, load_settings
from tideline.errors import AliasConflict, ConfigError, DataError, ModelError, TidelineError, ValidationError

log = logging.getLogger(__name__)

ERROR_FILE = "tideline_error.json"
ROLLOUT_MODES = ("rollout", "direct")
DRIFT_SAMPLE_ROWS = 5000

_META_PREFIX = "__"
_F = TypeVar("_F", bound=Callable[..., Any])


# ---- plumbing -----------------------------------------------------------------------------------------
def settings_from_json(settings_json: str | Mapping[str, Any] | None) -> Settings:
    """Settings from a JSON object string (overrides on top of file < env < defaults)."""
    if settings_json is None or settings_json == "":
        return load_settings()
    if isinstance(settings_json, Mapping):
        overrides = dict(settings_json)
    else:
        try:
            overrides = json.loads(settings_json)
        except json.JSONDecodeError as e:
            raise ConfigError(f"settings_json is not valid JSON: {e}") from None
    if not isinstance(overrides, dict):
        raise ConfigError("settings_json must be a JSON object")
    return load_settings(**overrides)


def settings_to_json(settings: Settings) -> str:
    """The settings as canonical JSON (sorted keys), the form ``settings_from_json`` reads back."""
    return json.dumps(settings.model_dump(mode="json"), sort_keys=True)


def _write_json(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2, sort_keys=True, default=str), encoding="utf-8")


def _read_json(path: Path) -> Any:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise TidelineError(f"pipeline artifact {path} is missing") from None
    except (OSError, json.JSONDecodeError) as e:
        raise TidelineError(f"pipeline artifact {path} cannot be read: {e}") from None


def _dir(path: str | Path) -> Path:
    p = Path(path)
    p.mkdir(parents=True, exist_ok=True)
    return p


def _record_failures(fn: _F) -> _F:
    """On failure, write ``tideline_error.json`` next to the step's first output, then re-raise."""
    sig = inspect.signature(fn)

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except Exception as e:
            try:
                bound = sig.bind_partial(*args, **kwargs)
                outs = [v for k, v in bound.arguments.items() if k.startswith("out_") and v]
                if outs:
                    tb = traceback.extract_tb(e.__traceback__)
                    _write_json(Path(outs[0]).parent / ERROR_FILE, {
                        "step": fn.__name__, "type": type(e).__name__, "message": str(e),
                        "exit_code": getattr(e, "exit_code", None), "tideline": isinstance(e, TidelineError),
                        "where": f"{tb[-1].filename}:{tb[-1].lineno}" if tb else None,
                    })
            except Exception:  # never hide the real error behind a failure to record it
                log.exception("could not record the failure of step %s", fn.__name__)
            raise

    return wrapper  # type: ignore[return-value]


# ---- ingest / validate --------------------------------------------------------------------------------
def _to_parquet(df: pd.DataFrame, path: Path) -> None:
    try:
        df.to_parquet(path, index=False)
    except (TypeError, ValueError, ImportError) as first:  # mixed-type object columns from a messy CSV
        try:
            fixed = df.copy()
            for c in fixed.columns[fixed.dtypes == object]:  # noqa: E721 - pandas: element-wise dtype test
                fixed[c] = fixed[c].astype("string")
            fixed.to_parquet(path, index=False)
        except Exception:
            raise DataError(f"cannot store the raw bars as Parquet: {first}") from None


@_record_failures
def ingest(out_bars: str | Path, source: str = "", synthetic_json: str = "",
           endpoint: str | None = None) -> dict[str, Any]:
    """Read raw bars (a file, a directory, ``s3://bucket/prefix``, or the synthetic market), unvalidated."""
    from tideline.data import load_bars, synthetic_market

    if bool(source) == bool(synthetic_json):
        raise ConfigError("give exactly one market data source: a path / s3:// prefix, or synthetic settings")
    if synthetic_json:
        try:
            syn = json.loads(synthetic_json)
        except json.JSONDecodeError as e:
            raise ConfigError(f"synthetic_json is not valid JSON: {e}") from None
        if not isinstance(syn, dict):
            raise ConfigError("synthetic_json must be a JSON object, e.g. {\"n_symbols\": 3, \"n_bars\": 900}")
        try:
            raw = synthetic_market(**syn)
        except TypeError as e:
            raise ConfigError(f"bad synthetic market settings: {e}") from None
        origin = f"synthetic({', '.join(f'{k}={v}' for k, v in syn.items())})"
    else:
        raw = load_bars(source, endpoint_url=endpoint or None)
        origin = str(source)
    out = _dir(out_bars)
    raw = raw.copy()
    raw.attrs = {}  # attrs (e.g. shift times, file list) are not carried in Parquet reliably
    _to_parquet(raw, out / "bars.parquet")
    info = {"source": origin, "rows": int(len(raw)), "columns": [str(c) for c in raw.columns]}
    _write_json(out / "ingest.json", info)
    return info


@_record_failures
def validate(in_bars: str | Path, out_clean: str | Path, out_report_dir: str | Path,
             quarantine: bool = False, settings_json: str = "") -> dict[str, Any]:
    """Validate the raw bars with the cycle's rule (strict by default: any defect, or a symbol whose data
    quality is below ``data.min_quality``, fails the step and nothing is registered)."""
    from tideline.training.cycle import validated

    src = Path(in_bars)
    raw = pd.read_parquet(src / "bars.parquet")
    origin = _read_json(src / "ingest.json")["source"]
    report_dir = _dir(out_report_dir)
    try:
        bars, info = validated(raw, origin, settings_from_json(settings_json), quarantine=quarantine)
    except ValidationError as e:  # a refused file still leaves its row-by-row report behind
        report = getattr(e, "report", None)
        _write_json(report_dir / "validation.json", {
            "source": origin, "ok": False, "error": str(e),
            **(report.to_dict() if report is not None and hasattr(report, "to_dict") else {})})
        raise
    _write_json(report_dir / "validation.json", {"source": origin, "ok": True, **info})
    out = _dir(out_clean)
    bars.to_parquet(out / "bars.parquet", index=False)
    _write_json(out / "info.json", info)
    return info


# ---- features -----------------------------------------------------------------------------------------
def _save_dataset(ds: Any, plan: Any, info: dict[str, Any], out: Path) -> None:
    frame = ds.X.copy()
    frame[f"{_META_PREFIX}y"] = ds.y
    frame[f"{_META_PREFIX}next_return"] = ds.next_return
    for c in ds.meta.columns:
        frame[f"{_META_PREFIX}{c}"] = ds.meta[c].to_numpy()
    frame.to_parquet(out / "dataset.parquet", index=False)
    arrays = {"dev": plan.dev, "hold": plan.hold}
    for k, sp in enumerate(plan.splits):
        arrays[f"train_{k}"] = sp.train_idx
        arrays[f"test_{k}"] = sp.test_idx
    np.savez(out / "plan.npz", **{k: np.asarray(v, dtype=np.int64) for k, v in arrays.items()})
    _write_json(out / "dataset.json", {
        "spec": ds.spec.to_dict(), "info": info, "dataset_info": ds.info, "n_splits": len(plan.splits),
        "periods_per_year": plan.periods_per_year, "meta_columns": list(ds.meta.columns),
    })


def load_dataset(in_dataset: str | Path) -> tuple[Any, Any, dict[str, Any]]:
    """(Dataset, Plan, info) from a dataset artifact written by ``features``."""
    from tideline.evaluation import Split
    from tideline.features import Dataset, FeatureSpec
    from tideline.training.cycle import Plan

    src = Path(in_dataset)
    side = _read_json(src / "dataset.json")
    try:
        frame = pd.read_parquet(src / "dataset.parquet")
        with np.load(src / "plan.npz", allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (OSError, ValueError) as e:
        raise TidelineError(f"dataset artifact {src} cannot be read: {e}") from None
    spec = FeatureSpec.from_dict(side["spec"])
    meta = pd.DataFrame({c: frame[f"{_META_PREFIX}{c}"].to_numpy() for c in side["meta_columns"]})
    ds = Dataset(
        X=frame[spec.all_columns], y=frame[f"{_META_PREFIX}y"].to_numpy(np.float64),
        next_return=frame[f"{_META_PREFIX}next_return"].to_numpy(np.float64), meta=meta, spec=spec,
        info=dict(side.get("dataset_info", {})),
    )
    splits = [Split(arrays[f"train_{k}"], arrays[f"test_{k}"]) for k in range(int(side["n_splits"]))]
    plan = Plan(arrays["dev"], arrays["hold"], splits, float(side["periods_per_year"]))
    return ds, plan, dict(side["info"])


@_record_failures
def features(in_clean: str | Path, settings_json: str, out_dataset: str | Path) -> dict[str, Any]:
    """Features + labels, the hold-out window and the purged walk-forward folds."""
    from tideline.training.cycle import describe_plan, make_dataset, plan_windows

    s = settings_from_json(settings_json)
    src = Path(in_clean)
    bars = pd.read_parquet(src / "bars.parquet")
    info = _read_json(src / "info.json")
    ds = make_dataset(bars, s.features)
    plan = plan_windows(ds, s)
    info.update(describe_plan(ds, plan, s))
    _save_dataset(ds, plan, info, _dir(out_dataset))
    return info


# ---- drift report ---------------------------------------------------------------------------------
def _sample(df: pd.DataFrame, n: int, seed: int) -> pd.DataFrame:
    if len(df) <= n:
        return df.reset_index(drop=True)
    pick = np.sort(np.random.default_rng(seed).choice(len(df), size=n, replace=False))
    return df.iloc[pick].reset_index(drop=True)


@_record_failures
def drift_report(in_dataset: str | Path, out_html: str | Path, seed: int = 7) -> dict[str, Any]:
    """Feature drift of the hold-out rows against the development rows, as an Evidently HTML report
    (``tideline.monitoring.drift.drift_report_html``); returns the report's scalar figures."""
    ds, plan, _ = load_dataset(in_dataset)
    tab = ds.X[ds.spec.tabular]
    reference = _sample(tab.iloc[plan.dev], DRIFT_SAMPLE_ROWS, seed)
    current = _sample(tab.iloc[plan.hold], DRIFT_SAMPLE_ROWS, seed + 1)
    from tideline.monitoring.drift import drift_report_html

    return _flat_summary(drift_report_html(reference, current, out_html))


def _flat_summary(result: Any) -> dict[str, Any]:
    """The scalar figures of a drift result (a dict, or an object with ``to_dict()``); bools as 0/1."""
    d = result.to_dict() if hasattr(result, "to_dict") else dict(result or {})
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, bool):
            out[k] = int(v)
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            out[k] = v
    return out


# ---- train --------------------------------------------------------------------------------------------
@_record_failures
def train(in_dataset: str | Path, family: str, settings_json: str, out_model_dir: str | Path,
          out_result: str | Path, registry_uri: str = "") -> dict[str, Any]:
    """Purged walk-forward + final fit of one family; the model and its figures as artifacts. A policy family
    (``rl``) is prepared from the registry at ``registry_uri`` when given (``cycle.PolicyPrep``: a warm start
    from an earlier version, the experiences before the hold-out)."""
    from tideline.models import output_kind
    from tideline.training.cycle import PolicyPrep, family_failure, train_family

    s = settings_from_json(settings_json)
    ds, plan, _ = load_dataset(in_dataset)
    try:
        prep = None
        if registry_uri and output_kind(family) == "position":
            prep = PolicyPrep(_open(registry_uri, s), ds, plan, s)
        model, fr = train_family(family, ds, plan, s, prepare=prep)
    except Exception as e:  # noqa: BLE001 - one family failing does not sink the run: it is recorded
        failed = {"family": family, "failed": family_failure(family, e)}
        _write_json(_dir(out_model_dir) / FAILED_FILE, failed)
        _write_json(_dir(out_result) / "result.json", failed)
        return failed
    model.save(_dir(out_model_dir))
    save_result(fr, _dir(out_result))
    return {"family": family, **{f"holdout_{k}": v for k, v in fr.holdout.to_dict().items()},
            **{f"wf_{k}": v for k, v in fr.walk_forward.items()}, "fit_seconds": round(fr.fit_seconds, 3),
            "tuning_trials": len((fr.tuning or {}).get("trials", []))}


FAILED_FILE = "failed.json"  # in a model directory: the family's training failed (why)
RECALIBRATED_MODEL = "recalibrated-model"  # in the decisions: production recalibrated, built where it is scored


def save_result(fr: Any, out: Path) -> None:
    """Write a ``FamilyResult`` as a training result directory (``load_result`` reads it back)."""
    _write_json(out / "result.json", fr.to_dict())
    np.save(out / "holdout_pred.npy", np.asarray(fr.holdout_pred, dtype=np.float64), allow_pickle=False)
    if fr.reference is not None:
        fr.reference.to_parquet(out / "reference.parquet", index=False)
    if fr.fold_returns is not None:
        fr.fold_returns.rename("return").rename_axis("timestamp").to_frame().to_parquet(out / "fold_returns.parquet")
    arrays: dict[str, np.ndarray] = {}
    for k, pred in enumerate(fr.fold_preds or []):
        arrays[f"pred{k}"] = np.asarray(pred, dtype=np.float64)
    for k, ref in enumerate(fr.fold_refs or []):
        if ref is not None:
            arrays[f"ref{k}"] = np.asarray(ref, dtype=np.float64)
    if fr.rule_ref is not None:
        arrays["rule_ref"] = np.asarray(fr.rule_ref, dtype=np.float64)
    if fr.fold_preds is not None:
        np.savez(out / "fold_preds.npz", n_folds=np.array(len(fr.fold_preds)), **arrays)


def failed_result(in_result: str | Path) -> dict[str, str] | None:
    """``{"family", "failed"}`` when this training result records a failed family, else None."""
    d = _read_json(Path(in_result) / "result.json")
    return d if isinstance(d, dict) and "failed" in d else None


def load_result(in_result: str | Path) -> Any:
    """A ``FamilyResult`` (with hold-out predictions and reference sample) from a training result."""
    from tideline.training.cycle import FamilyResult

    src = Path(in_result)
    d = _read_json(src / "result.json")
    try:
        pred = np.load(src / "holdout_pred.npy", allow_pickle=False)
        ref = pd.read_parquet(src / "reference.parquet") if (src / "reference.parquet").exists() else None
        wf = (pd.read_parquet(src / "fold_returns.parquet")["return"] if (src / "fold_returns.parquet").exists()
              else None)
        fr = FamilyResult.from_dict(d, pred, ref, wf)
        if (src / "fold_preds.npz").exists():
            with np.load(src / "fold_preds.npz", allow_pickle=False) as z:
                n = int(z["n_folds"])
                fr.fold_preds = [z[f"pred{k}"] for k in range(n)]
                fr.fold_refs = [z[f"ref{k}"] if f"ref{k}" in z else None for k in range(n)]
                fr.rule_ref = z["rule_ref"] if "rule_ref" in z else None
    except (OSError, ValueError, KeyError) as e:
        raise TidelineError(f"training result {src} cannot be read: {e}") from None
    return fr


# ---- evaluate / register / gate / rollout -------------------------------------------------------------
def _open(registry_uri: str, s: Settings) -> Any:
    from tideline.registry import open_registry

    if not registry_uri:
        raise ConfigError("the pipeline needs a registry URI (file:///abs/path or s3://bucket/prefix)")
    return open_registry(registry_uri, endpoint_url=s.endpoint_url())


@_record_failures
def evaluate_and_select(in_dataset: str | Path, in_clean: str | Path, results: Sequence[str | Path],
                        registry_uri: str, settings_json: str, out_decisions: str | Path) -> dict[str, Any]:
    """Score production on the same hold-out rows, then judge every candidate against it and the policy."""
    from tideline.training.cycle import (
        baselines,
        earlier_trials,
        earlier_tuning_trials,
        ensemble_result,
        judge_all,
        recalibrated_result,
        score_production,
    )

    s = settings_from_json(settings_json)
    ds, plan, info = load_dataset(in_dataset)
    bars = pd.read_parquet(Path(in_clean) / "bars.parquet")
    reg = _open(registry_uri, s)
    if not results:
        raise ModelError("no training results reached the evaluation step")
    prod = score_production(reg, ds, plan, bars, s)
    base = baselines(ds, plan, s)
    trained: dict[str, Any] = {}
    failures: dict[str, str] = {}
    for r in results:
        failed = failed_result(r)
        if failed is not None:
            failures[failed["family"]] = failed["failed"]
            continue
        trained[str(r)] = load_result(r)
    ens = ensemble_result(list(trained.values()), ds, plan, s)
    if ens is not None:  # one more candidate; its model is built where the members' models are (register)
        where = _dir(Path(out_decisions) / "ensemble-result")
        save_result(ens, where)
        trained[str(where)] = ens
    recal = recalibrated_result(prod, ds, plan, s)
    if recal is not None:  # production recalibrated: its model (production's files and a line) goes to register
        model, fr = recal
        model.save(_dir(Path(out_decisions) / RECALIBRATED_MODEL))
        where = _dir(Path(out_decisions) / "recalibrated-result")
        save_result(fr, where)
        trained[str(where)] = fr
    judged = (judge_all(list(trained.values()), prod, base, ds, plan, s, earlier_trials(reg),
                        earlier_tuning_trials(reg)) if trained else [])
    candidates = [{**c.to_dict(), "result_dir": r} for r, c in zip(trained, judged, strict=True)]
    if not candidates:
        raise ModelError("every model family failed to train: "
                         + "; ".join(f"{f}: {why}" for f, why in failures.items()))
    families = [c["family"] for c in candidates]
    if len(set(families)) != len(families):
        raise ModelError(f"a family was trained twice in one run: {families}")
    decisions = {
        "failures": failures,
        "production": {"version": prod.version, "error": prod.error,
                       "holdout": prod.metrics.to_dict() if prod.metrics else None},
        "baselines": {k: v.to_dict() for k, v in base.items()},
        "candidates": sorted(candidates, key=lambda c: c["family"]),
        "info": info,
    }
    _write_json(_dir(out_decisions) / "decisions.json", decisions)
    return {
        "production_version": prod.version or "", "production_error": prod.error or "",
        "production_sharpe": prod.metrics.sharpe if prod.metrics else None,
        "approved": [c["family"] for c in candidates if c["decision"]["approved"]],
        "failed": sorted(failures),
        "candidates": {c["family"]: {"sharpe": c["holdout"]["sharpe"], "approved": c["decision"]["approved"],
                                     "p_value": c["p_value_vs_production"], "deflated_sharpe": c["deflated_sharpe"],
                                     "pbo": c["pbo"]} for c in candidates},
    }


def _candidate_from_dict(d: Mapping[str, Any]) -> Any:
    from tideline.evaluation import Metrics
    from tideline.policy import Evidence, PolicyDecision
    from tideline.positions import PositionRule
    from tideline.training.cycle import CandidateResult

    return CandidateResult(d["family"], Metrics.from_dict(d["holdout"]), dict(d["walk_forward"]), list(d["folds"]),
                           PolicyDecision.from_dict(d["decision"]), d.get("p_value_vs_production"),
                           float(d.get("fit_seconds", 0.0)), d.get("version"), bool(d.get("promoted", False)),
                           Evidence.from_dict(d["evidence"]) if d.get("evidence") else None,
                           position=PositionRule.from_dict(d.get("position") or {}),
                           regimes={k: Metrics.from_dict(v) for k, v in (d.get("regimes") or {}).items()},
                           tuning=d.get("tuning"))


def _family_of_model(model_dir: str | Path) -> str:
    from tideline.models import read_meta

    failed = Path(model_dir) / FAILED_FILE
    if failed.exists():
        return str(_read_json(failed)["family"])
    return str(read_meta(model_dir)["family"])


@_record_failures
def register(in_dataset: str | Path, in_decisions: str | Path, models: Sequence[str | Path],
             registry_uri: str, settings_json: str, out_registered: str | Path) -> dict[str, Any]:
    """Register every candidate (artifacts, lineage, metrics, decision) and pick the best approved one.

    Models are matched to their decisions by family (the order of fanned-in artifacts is not relied on).
    """
    from tideline.evaluation import Metrics
    from tideline.models import load_model
    from tideline.training.cycle import (
        ENSEMBLE,
        RECALIBRATED,
        ProductionScore,
        choose_best,
        ensemble_model,
        register_candidate,
    )

    s = settings_from_json(settings_json)
    ds, plan, info = load_dataset(in_dataset)
    dec = _read_json(Path(in_decisions) / "decisions.json")
    by_family = {_family_of_model(m): Path(m) for m in models}
    if (Path(in_decisions) / RECALIBRATED_MODEL).is_dir():
        by_family[RECALIBRATED] = Path(in_decisions) / RECALIBRATED_MODEL
    missing = [c["family"] for c in dec["candidates"] if c["family"] not in by_family and c["family"] != ENSEMBLE]
    if missing:
        raise ModelError(f"no trained model reached the register step for {', '.join(missing)}")
    p = dec["production"]
    prod = ProductionScore(p["version"], Metrics.from_dict(p["holdout"]) if p["holdout"] else None, None, p["error"])
    base = {k: Metrics.from_dict(v) for k, v in dec["baselines"].items()}
    reg = _open(registry_uri, s)
    cands = []
    for d in dec["candidates"]:
        cand = _candidate_from_dict(d)
        fr = load_result(d["result_dir"])
        if cand.family == ENSEMBLE:  # built here from its members' models, then stored like any family
            members = {f: load_model(by_family[f]) for f in fr.members or [] if f in by_family}
            model = ensemble_model(fr, members, ds, plan, s)
            with tempfile.TemporaryDirectory(prefix="tideline-ensemble-") as tmp:
                model.save(Path(tmp))
                register_candidate(reg, Path(tmp), cand, info=info, settings=s, base=base, prod=prod,
                                   reference=fr.reference, importance=fr.importance)
        else:
            register_candidate(reg, by_family[cand.family], cand, info=info, settings=s, base=base, prod=prod,
                               reference=fr.reference, importance=fr.importance)
        cands.append(cand)
    best = choose_best(cands)
    registered = {
        "versions": {c.family: c.version for c in cands},
        "decision": "approved" if best is not None else "rejected",
        "best": None if best is None else {"version": best.version, "family": best.family,
                                           "sharpe": best.holdout.sharpe},
        "production_version": prod.version,
        "reasons": {c.family: c.decision.reasons for c in cands},
        "failures": dict(dec.get("failures", {})),
        "registry": registry_uri,
    }
    _write_json(_dir(out_registered) / "registered.json", registered)
    return registered


def gate(in_registered: str | Path) -> str:
    """``"approved"`` when the policy approved at least one registered candidate, else ``"rejected"``."""
    d = _read_json(Path(in_registered) / "registered.json")
    decision = d.get("decision")
    if decision not in ("approved", "rejected"):
        raise TidelineError(f"registered.json holds an unknown decision {decision!r}")
    return str(decision)


def request_rollout(registry_uri: str, version: str, mode: str = "rollout", *,
                    expected_production: str | None = None, endpoint: str | None = None,
                    reason: str = "", actor: str = "pipeline") -> dict[str, Any]:
    """Hand an approved version on: ``rollout`` sets the ``candidate`` alias (the serving layer turns it
    into a shadow/canary rollout); ``direct`` promotes it to production now, compare-and-swap against
    ``expected_production`` (the production it was measured against)."""
    from tideline.registry import open_registry

    if mode not in ROLLOUT_MODES:
        raise ConfigError(f"unknown rollout mode {mode!r}; choose one of {', '.join(ROLLOUT_MODES)}")
    reg = open_registry(registry_uri, endpoint_url=endpoint)
    why = reason or f"passed the promotion policy (measured against {expected_production or 'no production'})"
    if mode == "direct":
        ev = reg.promote(version, reason=why, actor=actor, expected=expected_production)
        return {"mode": mode, "version": version, "action": "promoted", "previous": ev.from_version}
    current = reg.aliases().get("production")
    if current != expected_production:
        raise AliasConflict(f"production is {current or 'unset'} but {version} was measured against "
                            f"{expected_production or 'no production'}; not handing it on", hint="run again")
    ev = reg.set_alias("candidate", version, reason=why, actor=actor)
    return {"mode": mode, "version": version, "action": "candidate", "previous": ev.from_version}


@_record_failures
def rollout(in_registered: str | Path, registry_uri: str, mode: str, settings_json: str,
            out_rollout: str | Path, reason: str = "") -> dict[str, Any]:
    """``request_rollout`` for the best approved version recorded by ``register``."""
    s = settings_from_json(settings_json)
    d = _read_json(Path(in_registered) / "registered.json")
    if d.get("best") is None:
        raise TidelineError("rollout requested but no candidate was approved")
    best = d["best"]
    why = (f"pipeline: {best['family']} passed the policy; hold-out Sharpe {best['sharpe']:.2f}"
           + (f"; trigger: {reason}" if reason else ""))
    res = request_rollout(registry_uri, best["version"], mode, expected_production=d.get("production_version"),
                          endpoint=s.endpoint_url(), reason=why)
    _write_json(_dir(out_rollout) / "rollout.json", res)
    return res


__all__ = [
    "ERROR_FILE", "ROLLOUT_MODES", "drift_report", "evaluate_and_select", "features",
    "gate", "ingest", "load_dataset", "load_result", "register", "request_rollout", "rollout",
    "settings_from_json", "settings_to_json", "train", "validate",
]
