import pytest

from tideline.config import load_settings
from tideline.errors import ConfigError


def test_defaults_and_registry_uri(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    s = load_settings()
    assert s.policy.min_sharpe == 0.5
    assert s.registry_uri() == (tmp_path / ".tideline" / "registry").as_uri()


def test_file_then_env_then_overrides(tmp_path, monkeypatch):
    f = tmp_path / "t.toml"
    f.write_text('[tideline]\nregistry = "s3://b/p"\n[tideline.evaluation]\ncost_bps = 3.0\nn_splits = 5\n')
    monkeypatch.setenv("TIDELINE_EVALUATION__COST_BPS", "4.5")
    s = load_settings(f)
    assert s.registry == "s3://b/p"
    assert s.evaluation.cost_bps == 4.5 and s.evaluation.n_splits == 5
    assert load_settings(f, registry="file:///x").registry == "file:///x"


def test_yaml_file(tmp_path):
    f = tmp_path / "t.yaml"
    f.write_text("policy:\n  min_sharpe: 1.5\ntraining:\n  families: [xgboost]\n")
    s = load_settings(f)
    assert s.policy.min_sharpe == 1.5 and s.training.families == ["xgboost"]


@pytest.mark.parametrize("text,suffix,msg", [
    ("training:\n  families: [catboost]\n", ".yaml", "training.families"),
    ("evaluation:\n  cost_bps: -1\n", ".yaml", "evaluation.cost_bps"),
    ("nonsense: 1\n", ".yaml", "nonsense"),
    ("[tideline\n", ".toml", "not valid"),
    ("x", ".ini", "must be .toml"),
])
def test_bad_settings_give_clear_errors(tmp_path, text, suffix, msg):
    f = tmp_path / f"t{suffix}"
    f.write_text(text)
    with pytest.raises(ConfigError, match=msg.replace(".", r"\.")):
        load_settings(f)


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="cannot read settings file"):
        load_settings(tmp_path / "nope.toml")


# ---- one source for every rollout default ---------------------------------------------------------------
def test_rollout_defaults_have_one_source_the_settings():
    """The library's spec, a ModelRollout that sets nothing, the CRD's `default:` values and `tideline rollout
    start` all take [loop.rollout]'s defaults (once three places disagreed: shadow min_labelled 0 vs 50)."""
    from pathlib import Path

    import yaml

    from tideline.cli.rollout import rollout_start
    from tideline.config import ROLLOUT_DEFAULTS, LoopRolloutConfig
    from tideline.rollout import cr
    from tideline.rollout.machine import RolloutSpec

    ids = {"candidate": "v2", "baseline": "v1"}
    want = RolloutSpec.from_settings(LoopRolloutConfig(), **ids, name="r")
    assert RolloutSpec(name="r", target="r", **ids) == want
    assert cr.rollout_spec("r", {"targetRef": "r", "candidate": "v2"}, "v1") == want
    assert want.shadow.min_labelled == ROLLOUT_DEFAULTS.min_labelled and want.watch.duration_s == 86400

    root = Path(__file__).resolve().parents[1]
    for f in ("manifests/crds/modelrollouts.tideline.io.yaml", "helm/tideline/crds/modelrollouts.tideline.io.yaml"):
        props = yaml.safe_load((root / f).read_text())["spec"]["versions"][0]["schema"]["openAPIV3Schema"][
            "properties"]["spec"]["properties"]
        defaults = {k: v["default"] for k, v in props.items() if "default" in v}
        assert defaults == {"mode": ROLLOUT_DEFAULTS.mode, "metricsSource": ROLLOUT_DEFAULTS.metrics_source}, f

    import inspect

    numeric = {n: p.default for n, p in inspect.signature(rollout_start).parameters.items()
               if n not in ("ctx", "candidate", "name", "bars", "detach")}
    assert numeric and all(v is None for v in numeric.values()), numeric  # unset: the settings decide
