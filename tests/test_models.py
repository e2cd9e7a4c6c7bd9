"""Model families: fit/predict quality, save/load round trips, determinism and safe loading."""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from tideline.errors import ModelError
from tideline.models import FAMILIES, Model, default_params, load_model, make_model

# Small, fast settings so the whole module runs in seconds.
FAST: dict[str, dict[str, Any]] = {
    "xgboost": {"num_boost_round": 150},
    "lightgbm": {"num_boost_round": 150},
    "sklearn": {"max_iter": 150},
    "torch": {"batch_size": 256, "max_epochs": 6, "patience": 2, "lr": 3e-3},
}
ARTIFACT = {"xgboost": "model.ubj", "lightgbm": "model.txt", "sklearn": "model.skops", "torch": "model.pt"}


@dataclass
class Spec:
    """Stand-in for tideline.features.FeatureSpec."""

    tabular: list[str]
    sequence: list[str]
    channels: list[str]
    seq_len: int

    @property
    def all_columns(self) -> list[str]:
        return [*self.tabular, *self.sequence]

    def to_dict(self) -> dict[str, Any]:
        return {"tabular": self.tabular, "sequence": self.sequence, "channels": self.channels,
                "seq_len": self.seq_len}


def _dataset(n: int = 8000, seed: int = 0) -> tuple[pd.DataFrame, np.ndarray, Spec]:
    rng = np.random.default_rng(seed)
    tab = [f"f{i}" for i in range(6)]
    channels = ["ret", "vol"]
    seq_len = 8
    seq = [f"seq_{c}_l{lag}" for lag in range(seq_len - 1, -1, -1) for c in channels]
    X = pd.DataFrame(rng.standard_normal((n, len(tab) + len(seq))).astype(np.float32), columns=tab + seq)
    X["other"] = np.float32(1.0)  # extra columns are ignored
    signal = 0.6 * X["f0"] - 0.4 * X["f1"] + 0.5 * X["seq_ret_l0"]
    y = 1e-3 * (signal.to_numpy(np.float64) + 0.8 * rng.standard_t(3, n))
    return X, y, Spec(tab, seq, channels, seq_len)


X_ALL, Y_ALL, SPEC = _dataset()
TRAIN, VALID, TEST = slice(0, 5000), slice(5000, 6500), slice(6500, None)


def _fit(family: str, seed: int = 3) -> Model:
    m = make_model(family, seed=seed, params=FAST[family], n_threads=1)
    return m.fit(X_ALL.iloc[TRAIN], Y_ALL[TRAIN], SPEC, X_valid=X_ALL.iloc[VALID], y_valid=Y_ALL[VALID])


@pytest.fixture(scope="module", params=FAMILIES)
def fitted(request: pytest.FixtureRequest) -> Model:
    return _fit(request.param)


def test_fit_predicts_held_out(fitted: Model) -> None:
    pred = fitted.predict(X_ALL.iloc[TEST])
    assert pred.dtype == np.float64 and pred.shape == (len(X_ALL.iloc[TEST]),)
    assert np.isfinite(pred).all()
    corr = np.corrcoef(pred, Y_ALL[TEST])[0, 1]
    assert corr > 0.2, f"{fitted.family}: held-out correlation {corr:.3f}"
    expected = SPEC.tabular if fitted.family != "torch" else SPEC.tabular + SPEC.sequence
    assert sorted(fitted.columns) == sorted(expected)


def test_save_load_round_trip(fitted: Model, tmp_path: Path) -> None:
    files = fitted.save(tmp_path / "m")
    assert sorted(files) == sorted([ARTIFACT[fitted.family], "model.json"])
    meta = json.loads((tmp_path / "m" / "model.json").read_text())
    assert meta["family"] == fitted.family and meta["columns"] == fitted.columns
    assert meta["spec"] == SPEC.to_dict() and meta["library_versions"]
    loaded = load_model(tmp_path / "m")
    assert type(loaded) is type(fitted)
    _assert_same_model(loaded.predict(X_ALL.iloc[TEST]), fitted.predict(X_ALL.iloc[TEST]), fitted.family)
    _assert_same_model(type(fitted).load(tmp_path / "m").predict(X_ALL.iloc[:50]),
                       fitted.predict(X_ALL.iloc[:50]), fitted.family)


def _assert_same_model(got: np.ndarray, want: np.ndarray, family: str) -> None:
    """Tree models reload bit for bit. A float32 network does not: the order of its sums depends on the
    weights' memory layout and the thread count, so the same weights differ in the last bits (3e-10 seen on
    predictions of ~1e-3). Its tolerance is a millionth of the predictions' spread: float32 rounding stays
    far under it, and a different network (other weights) lands orders of magnitude above it."""
    if family != "torch":
        np.testing.assert_array_equal(got, want)
        return
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6 * float(np.std(want)))


def test_a_different_network_fails_the_round_trip_tolerance(tmp_path: Path) -> None:
    """The float32 tolerance above must still catch a load that returns another model: the same saved
    file with re-initialised weights, and a network fitted from another seed."""
    import torch

    fitted = _fit("torch")
    fitted.save(tmp_path / "m")
    reinit = load_model(tmp_path / "m")
    torch.manual_seed(99)
    for layer in reinit._net.modules():
        if hasattr(layer, "reset_parameters"):
            layer.reset_parameters()
    want = fitted.predict(X_ALL.iloc[TEST])
    for other in (reinit, _fit("torch", seed=4)):
        with pytest.raises(AssertionError):
            _assert_same_model(other.predict(X_ALL.iloc[TEST]), want, "torch")


def test_one_row_predictions_match_the_batch(fitted: Model) -> None:
    """The serving hot path predicts one row at a time (LightGBM through its single-row C API): it must
    give exactly the batch numbers, row by row, also after a save/load."""
    X = X_ALL.iloc[TEST][fitted.columns].to_numpy(np.float32)[:40]
    batch = fitted.predict_array(X)
    rows = np.concatenate([fitted.predict_array(X[i : i + 1]) for i in range(len(X))])
    np.testing.assert_allclose(rows, batch, rtol=1e-6, atol=1e-9)
    if fitted.family == "lightgbm":
        np.testing.assert_array_equal(rows, batch)
        assert fitted._single_row.ok  # the fast path was taken, not the fallback
    if fitted.family == "sklearn":
        assert fitted._forest.ok
        np.testing.assert_allclose(batch, fitted._est.predict(X) * fitted.y_scale + fitted.y_center,
                                   rtol=1e-12, atol=1e-15)
        Xn = X.copy()
        Xn[::3, ::5] = np.nan  # missing values follow each node's learned direction, as in sklearn
        np.testing.assert_allclose(fitted.predict_array(Xn[:20]), fitted._est.predict(Xn[:20]) * fitted.y_scale
                                   + fitted.y_center, rtol=1e-12, atol=1e-15)


def test_deterministic_with_seed(fitted: Model) -> None:
    again = _fit(fitted.family)
    np.testing.assert_array_equal(again.predict(X_ALL.iloc[TEST]), fitted.predict(X_ALL.iloc[TEST]))


def test_missing_column_and_nan(fitted: Model) -> None:
    with pytest.raises(ModelError, match="f1"):
        fitted.predict(X_ALL.iloc[TEST].drop(columns=["f1"]))
    X = X_ALL.iloc[TEST].copy()
    X.iloc[::7, 0] = np.nan
    assert np.isfinite(fitted.predict(X)).all()


def _corrupt(src: Path, dst: Path, name: str, data: bytes, *, fix_checksum: bool) -> None:
    shutil.copytree(src, dst)
    (dst / name).write_bytes(data)
    if fix_checksum:  # get past the sha256 check so the library's own parser sees the bad file
        meta = json.loads((dst / "model.json").read_text())
        meta["files"][name] = hashlib.sha256(data).hexdigest()
        (dst / "model.json").write_text(json.dumps(meta))


def test_corrupt_files_raise_model_error(fitted: Model, tmp_path: Path) -> None:
    src = tmp_path / "good"
    fitted.save(src)
    name = ARTIFACT[fitted.family]
    raw = (src / name).read_bytes()
    for i, data in enumerate([raw[: len(raw) // 2], b"garbage" * 10, b""]):
        for fix in (False, True):
            dst = tmp_path / f"bad{i}{fix}"
            _corrupt(src, dst, name, data, fix_checksum=fix)
            with pytest.raises(ModelError):
                load_model(dst)
    (tmp_path / "nojson").mkdir()
    shutil.copy(src / name, tmp_path / "nojson" / name)
    with pytest.raises(ModelError, match="missing"):
        load_model(tmp_path / "nojson")
    dst = tmp_path / "badjson"
    shutil.copytree(src, dst)
    (dst / "model.json").write_text((src / "model.json").read_text()[:40])
    with pytest.raises(ModelError, match="corrupt"):
        load_model(dst)
    dst = tmp_path / "noartifact"
    shutil.copytree(src, dst)
    (dst / name).unlink()
    with pytest.raises(ModelError, match="missing"):
        load_model(dst)


def _sneaky(x: Any) -> Any:  # a custom function: not on the allow-list
    return x


def test_skops_refuses_unexpected_types(tmp_path: Path) -> None:
    import skops.io as sio
    from sklearn.linear_model import LinearRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import FunctionTransformer

    good = _fit("sklearn")
    good.save(tmp_path / "good")
    Xt, yt = X_ALL[SPEC.tabular].to_numpy()[:200], Y_ALL[:200]
    evil = make_pipeline(FunctionTransformer(_sneaky), LinearRegression()).fit(Xt, yt)
    sio.dump(evil, tmp_path / "evil.skops")
    assert sio.get_untrusted_types(file=tmp_path / "evil.skops")
    _corrupt(tmp_path / "good", tmp_path / "bad", "model.skops", (tmp_path / "evil.skops").read_bytes(),
             fix_checksum=True)
    with pytest.raises(ModelError, match="not allowed"):
        load_model(tmp_path / "bad")
    # A type skops trusts by default but which is not the expected estimator is refused too.
    sio.dump(LinearRegression().fit(Xt, yt), tmp_path / "lin.skops")
    _corrupt(tmp_path / "good", tmp_path / "lin", "model.skops", (tmp_path / "lin.skops").read_bytes(),
             fix_checksum=True)
    with pytest.raises(ModelError, match="HistGradientBoostingRegressor"):
        load_model(tmp_path / "lin")


class _Payload:
    pass


def test_torch_refuses_pickled_objects(tmp_path: Path) -> None:
    import torch

    _fit("torch").save(tmp_path / "good")
    torch.save({"w": _Payload()}, tmp_path / "obj.pt")
    _corrupt(tmp_path / "good", tmp_path / "bad", "model.pt", (tmp_path / "obj.pt").read_bytes(), fix_checksum=True)
    with pytest.raises(ModelError, match="weights-only"):
        load_model(tmp_path / "bad")


def test_api_errors(tmp_path: Path) -> None:
    for family in FAMILIES:
        assert isinstance(default_params(family), dict) and default_params(family)
        m = make_model(family, seed=0)
        assert m.family == family
        with pytest.raises(ModelError, match="not fitted"):
            m.predict(X_ALL.iloc[:5])
        with pytest.raises(ModelError, match="not fitted"):
            m.save(tmp_path / family)
        with pytest.raises(ModelError, match="f0"):
            m.fit(X_ALL.drop(columns=["f0"]), Y_ALL, SPEC)
    with pytest.raises(ModelError, match="unknown model family"):
        make_model("catboost", seed=0)
    with pytest.raises(ModelError, match="unknown torch params"):
        make_model("torch", seed=0, params={"d_modle": 8})
    with pytest.raises(ModelError, match="unknown sklearn params"):
        make_model("sklearn", seed=0, params={"random_state": 1})
    with pytest.raises(ModelError, match="seq_"):
        bad = Spec(SPEC.tabular, [c.replace("seq_", "s_") for c in SPEC.sequence], SPEC.channels, SPEC.seq_len)
        make_model("torch", seed=0).fit(X_ALL.rename(columns=lambda c: c.replace("seq_", "s_")), Y_ALL, bad)
    (tmp_path / "alien").mkdir()
    (tmp_path / "alien" / "model.json").write_text(json.dumps({"family": "catboost", "format_version": 1}))
    with pytest.raises(ModelError, match="unknown model family"):
        load_model(tmp_path / "alien")


def test_no_unsafe_loading_in_source() -> None:
    """An AST scan (tests/reliability/security.py) of src/, components/, serving/ and pipelines/ for
    deserialisation that can run code: pickle/joblib/dill/cloudpickle/shelve/marshal loads,
    torch.load without weights_only=True, np.load(allow_pickle=True), pandas.read_pickle, yaml.load
    without a safe Loader, skops trusted=True."""
    from reliability.security import scan_unsafe_loads

    n, findings = scan_unsafe_loads()
    assert n > 50, f"only {n} files scanned"
    assert findings == [], f"unsafe deserialisation: {findings}"


def test_the_unsafe_loading_scan_can_fail(tmp_path: Path) -> None:
    from reliability.security import SAFE_SNIPPET, UNSAFE_SNIPPETS, scan_source, scan_unsafe_loads

    for snippet in UNSAFE_SNIPPETS:
        assert scan_source(snippet), f"not caught: {snippet!r}"
    assert scan_source(SAFE_SNIPPET) == []
    # and over files: one planted unsafe load in a scanned tree is reported with its file and line
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "ok.py").write_text("import json\njson.loads('{}')\n")
    (tmp_path / "pkg" / "bad.py").write_text("import numpy as np\n\nx = np.load('a.npy', allow_pickle=True)\n")
    n, findings = scan_unsafe_loads([tmp_path / "pkg"])
    assert n == 2 and len(findings) == 1 and findings[0].endswith("bad.py:3: numpy.load(allow_pickle=...)")
