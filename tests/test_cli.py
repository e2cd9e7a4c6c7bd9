"""The command line: real commands, real exit codes, one-line errors (never a traceback)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from conftest import EXAMPLES, FAST_PARAMS
from tideline.cli import main


def _cfg(tmp_path: Path) -> Path:
    import yaml

    f = tmp_path / "fast.yaml"
    f.write_text(yaml.safe_dump({
        "training": {"params": FAST_PARAMS, "families": ["lightgbm", "sklearn"]},
        "evaluation": {"n_splits": 2, "bootstrap_samples": 200},
        "policy": {"min_sharpe": -100.0, "min_trades": 0, "max_drawdown": 10.0, "require_significance": False,
                   "min_deflated_sharpe": 0.0, "require_baseline": False, "require_folds_agree": False,
                   "min_relative_improvement": -100.0, "key_metric_floor": 0.0},
    }))
    return f


def run(args: list[str], capsys) -> tuple[int, str, str]:
    code = main(args)
    o, e = capsys.readouterr()
    return code, o, e


def test_cycle_json_and_models_commands(tmp_path, capsys):
    reg = (tmp_path / "reg").as_uri()
    base = ["--registry", reg, "--config", str(_cfg(tmp_path))]
    # the root options after the command, as people type them (kubectl takes global flags anywhere)
    code, o, e = run(["cycle", "--synthetic", "--symbols", "3", "--bars", "900", "--json", *base], capsys)
    assert code == 0, e
    res = json.loads(o)
    assert res["promoted_version"] is not None  # the permissive policy above approves
    assert {c["family"] for c in res["candidates"]} == {"lightgbm", "sklearn", "ensemble"}
    assert "buy_and_hold" in res["baselines"]

    code, o, _ = run(["models", f"--registry={reg}", "list", "--json"], capsys)
    rows = json.loads(o)
    assert code == 0 and len(rows) == 3
    prod = next(r for r in rows if "production" in r["aliases"])
    other = next(r for r in rows if r is not prod)

    code, o, _ = run([*base, "models", "show", "production", "--json"], capsys)
    assert code == 0 and json.loads(o)["version"] == prod["version"]
    code, o, _ = run([*base, "models", "show", prod["version"]], capsys)
    assert code == 0 and "hold-out metrics" in o and "hold-out by volatility regime" in o
    assert "top features (mean |SHAP value|" in o or "top features (mean |change" in o
    cand = next(c for c in res["candidates"] if c["version"] == prod["version"])
    assert set(cand["regimes"]) <= {"low", "normal", "high"} and cand["regimes"]["normal"]["n_obs"] > 0
    assert json.loads(run([*base, "models", "show", prod["version"], "--json"], capsys)[1])["evaluation"][
        "regimes"] == cand["regimes"]  # stored with the version

    code, o, _ = run([*base, "models", "promote", other["version"], "--reason", "test"], capsys)
    assert code == 0 and other["version"] in o
    code, o, _ = run([*base, "models", "rollback", "--reason", "bad"], capsys)
    assert code == 0 and prod["version"] in o
    code, o, _ = run([*base, "models", "history", "--json"], capsys)
    actions = [ev["action"] for ev in json.loads(o)]
    assert code == 0 and actions[-1] == "rollback" and actions.count("promote") >= 2

    code, _, e = run([*base, "models", "delete", prod["version"]], capsys)
    assert code != 0 and "production" in e
    code, _, e = run([*base, "models", "show", "v999"], capsys)
    assert code != 0 and "v999" in e


def test_root_options_are_taken_anywhere_before_a_double_dash():
    from tideline.cli.root import hoist_global_options as hoist

    assert hoist(["cycle", "--synthetic", "--registry", "r", "--config=c.toml"]) == [
        "--registry", "r", "--config=c.toml", "cycle", "--synthetic"]
    assert hoist(["--registry", "r", "models", "list"]) == ["--registry", "r", "models", "list"]
    assert hoist(["x", "--", "--registry", "r"]) == ["x", "--", "--registry", "r"]  # after --: an argument
    assert hoist(["models", "list", "--registry"]) == ["models", "list", "--registry"]  # click names the missing value


def test_a_root_option_without_its_value_is_a_usage_error(capsys):
    code, _, e = run(["models", "list", "--registry"], capsys)
    assert code == 2 and "--registry" in e and "Traceback" not in e


def test_cycle_table_output_on_real_data(tmp_path, capsys):
    base = ["--registry", (tmp_path / "reg").as_uri(), "--config", str(_cfg(tmp_path))]
    code, o, e = run([*base, "cycle", "--data", str(EXAMPLES / "GOOG_1d.csv"), "--families", "lightgbm"], capsys)
    assert code == 0, e
    assert "buy_and_hold" in o and "lightgbm" in o and "result" in o


@pytest.mark.parametrize("args,msg,code", [
    (["cycle"], "exactly one of", 2),
    (["cycle", "--bogus"], "no such option", 2),
    (["cycle", "--synthetic", "--families", "catboost"], "unknown model families", 2),
    (["cycle", "--data", "/nonexistent/prices.csv"], "not found", 3),
    (["models", "rollback"], "previous", None),
    (["models", "promote", "v7"], "v7", None),
    (["--registry", "ftp://x/y", "models", "list"], "registry", 2),
])
def test_bad_arguments_give_one_line_errors(tmp_path, capsys, args, msg, code):
    if args[0] != "--registry":
        args = ["--registry", (tmp_path / "reg").as_uri(), *args]
    rc, _, e = run(args, capsys)
    assert rc != 0
    if code is not None:
        assert rc == code
    assert msg.lower() in e.lower()
    assert "Traceback" not in e


def test_console_script_broken_csv_exits_nonzero_without_traceback(tmp_path):
    df = pd.read_csv(EXAMPLES / "GOOG_1d.csv").head(400)
    df.loc[10, "close"] = -5.0
    df.loc[20, "volume"] = -1
    bad = tmp_path / "bad.csv"
    df.to_csv(bad, index=False)
    env = {**os.environ, "TIDELINE_REGISTRY": (tmp_path / "reg").as_uri()}
    p = subprocess.run([sys.executable, "-m", "tideline", "cycle", "--data", str(bad)],
                       capture_output=True, text=True, env=env, timeout=120)
    assert p.returncode == 3, p.stderr
    assert "Traceback" not in p.stderr
    assert "validation" in p.stderr.lower()
    assert not (tmp_path / "reg" / "versions").exists() or not any((tmp_path / "reg" / "versions").iterdir())

    p = subprocess.run([sys.executable, "-m", "tideline", "data", "validate", str(bad)],
                       capture_output=True, text=True, env=env, timeout=120)
    assert p.returncode == 3
    assert "11" in p.stdout and "21" in p.stdout  # 1-based data row numbers of the two bad rows


def test_unreachable_s3_registry_is_a_clear_error(monkeypatch, capsys):
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    rc, _, e = run(["--registry", "s3://models/tideline", "models", "list"], capsys)
    assert rc == 9, e
    assert "cannot reach" in e.lower() and "Traceback" not in e


def test_error_text_is_printed_verbatim(tmp_path, capsys):
    """Column names in brackets must survive (rich would eat '[close]' as markup)."""
    df = pd.read_csv(EXAMPLES / "GOOG_1d.csv").head(300)
    df.loc[4, "close"] = None
    bad = tmp_path / "nan.csv"
    df.to_csv(bad, index=False)
    rc, _, e = run(["--registry", (tmp_path / "reg").as_uri(), "cycle", "--data", str(bad)], capsys)
    assert rc == 3 and "nan_value (1 row: 5 [close])" in e


def test_every_error_class_has_its_own_exit_code():
    """A script tells failures apart by the exit code: two error classes share one only when one derives
    from the other, or both mean "a service is unreachable" (9: the store, the pipelines API)."""
    import tideline.rollout.backends  # noqa: F401 - defines BackendError
    from tideline.errors import TidelineError

    def walk(c: type) -> list[type]:
        return [c, *(d for s in c.__subclasses__() for d in walk(s))]

    owners: dict[int, list[str]] = {}
    for c in walk(TidelineError):
        if "exit_code" in vars(c):  # the class that sets the code (subclasses inherit it)
            owners.setdefault(c.exit_code, []).append(c.__name__)
    assert {k: sorted(v) for k, v in owners.items() if len(v) > 1} == {
        9: ["PipelinesUnavailable", "StorageUnavailable"]}
    assert owners[15] == ["BackendError"] and owners[11] == ["RunInProgress"]
