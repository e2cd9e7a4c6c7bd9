"""Security scenarios: tampered versions under signing, path traversal and bad names, unsafe
deserialisation in the source, and the rendered cluster objects (RBAC, hardening, credentials, MinIO
NetworkPolicy, signing wiring).

    cd bench && ../.venv/bin/python -m reliability.security [--quick]

Also the home of two checkers the tests reuse: ``scan_unsafe_loads`` (an AST scan for deserialisation
that can run code: pickle, joblib, dill/cloudpickle, torch.load without weights_only=True,
np.load(allow_pickle=True), pandas.read_pickle, yaml.load without a safe loader, ...) and
``cluster_problems`` (what is wrong with a list of rendered Kubernetes objects).
"""

from __future__ import annotations

import ast
import copy
import hashlib
import json
import secrets
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
SCAN_DIRS = ("src", "components", "serving", "pipelines")

# ---- unsafe deserialisation scan ----------------------------------------------------------------------
_ALWAYS_UNSAFE = {
    "pickle.load", "pickle.loads", "pickle.Unpickler", "_pickle.load", "_pickle.loads", "_pickle.Unpickler",
    "cPickle.load", "cPickle.loads", "joblib.load", "sklearn.externals.joblib.load", "dill.load", "dill.loads",
    "cloudpickle.load", "cloudpickle.loads", "pandas.read_pickle", "shelve.open", "marshal.load",
    "marshal.loads", "yaml.unsafe_load", "yaml.unsafe_load_all", "yaml.full_load", "yaml.full_load_all",
    "numpy.lib.format.read_array_header_pickle", "torch.serialization._legacy_load", "jsonpickle.decode",
}
_SAFE_YAML_LOADERS = {"SafeLoader", "CSafeLoader", "BaseLoader", "CBaseLoader"}
_UNSAFE_NAMES = {"yaml.UnsafeLoader", "yaml.Loader", "yaml.FullLoader", "yaml.CLoader", "yaml.CUnsafeLoader",
                 "yaml.CFullLoader"}


def _dotted(node: ast.AST) -> str | None:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
        return ".".join(reversed(parts))
    return None


def _kw(call: ast.Call, name: str) -> ast.expr | None:
    return next((k.value for k in call.keywords if k.arg == name), None)


def _is_const(node: ast.expr | None, value: object) -> bool:
    return isinstance(node, ast.Constant) and node.value is value


def scan_source(text: str, name: str = "<snippet>") -> list[str]:
    """Findings (``name:line: what``) of deserialisation that can execute code in one Python source."""
    try:
        tree = ast.parse(text, filename=name)
    except SyntaxError as e:
        return [f"{name}:{e.lineno}: cannot parse ({e.msg})"]
    alias: dict[str, str] = {}  # local name -> fully qualified
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                alias[(a.asname or a.name).split(".")[0] if not a.asname else a.asname] = (
                    a.name if a.asname else a.name.split(".")[0])
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for a in node.names:
                alias[a.asname or a.name] = f"{node.module}.{a.name}"
    for short, full in (("np", "numpy"), ("pd", "pandas")):
        alias.setdefault(short, full)

    def qualify(node: ast.AST) -> str | None:
        d = _dotted(node)
        if d is None:
            return None
        head, _, rest = d.partition(".")
        full = alias.get(head, head)
        return f"{full}.{rest}" if rest else full

    out: list[str] = []

    def bad(node: ast.AST, what: str) -> None:
        out.append(f"{name}:{getattr(node, 'lineno', 0)}: {what}")

    for node in ast.walk(tree):
        if isinstance(node, (ast.Attribute, ast.Name)) and not isinstance(getattr(node, "ctx", None), ast.Store):
            q = qualify(node)
            if q in _UNSAFE_NAMES:
                bad(node, f"{q} (an unsafe YAML loader)")
        if not isinstance(node, ast.Call):
            continue
        q = qualify(node.func) or ""
        last = q.rsplit(".", 1)[-1]
        top = q.split(".", 1)[0]
        if q in _ALWAYS_UNSAFE or (top in ("dill", "cloudpickle", "jsonpickle") and "load" in last):
            bad(node, f"{q}()")
        elif last == "read_pickle" or (isinstance(node.func, ast.Attribute) and node.func.attr == "read_pickle"):
            bad(node, f"{q or 'read_pickle'}()")
        elif q == "torch.load":
            if not _is_const(_kw(node, "weights_only"), True):
                bad(node, "torch.load() without weights_only=True")
        elif q in ("numpy.load", "numpy.lib.npyio.load"):
            v = _kw(node, "allow_pickle")
            if v is not None and not _is_const(v, False):
                bad(node, "numpy.load(allow_pickle=...)")
        elif q in ("yaml.load", "yaml.load_all"):
            loader = _kw(node, "Loader") or (node.args[1] if len(node.args) > 1 else None)
            lq = qualify(loader) if loader is not None else None
            if lq is None or lq.rsplit(".", 1)[-1] not in _SAFE_YAML_LOADERS:
                bad(node, f"{q}() without a safe Loader")
        elif last in ("load", "loads") and top == "skops" or q in ("skops.io.load", "skops.io.loads"):
            if _is_const(_kw(node, "trusted"), True):
                bad(node, f"{q}(trusted=True)")
        elif last == "load_model" and _is_const(_kw(node, "safe_mode"), False):
            bad(node, f"{q}(safe_mode=False)")
        if any(k.arg == "trusted" and _is_const(k.value, True) for k in node.keywords) and "skops" not in q:
            bad(node, f"{q}(trusted=True)")
    return sorted(set(out))


def scan_unsafe_loads(dirs: Iterable[Path] | None = None) -> tuple[int, list[str]]:
    """(files scanned, findings) over every ``*.py`` below ``dirs`` (default: src, components, serving, pipelines)."""
    roots = [ROOT / d for d in SCAN_DIRS] if dirs is None else list(dirs)
    n, findings = 0, []
    for root in roots:
        for path in sorted(Path(root).rglob("*.py")):
            if any(part in (".venv", "__pycache__", "build") for part in path.parts):
                continue
            n += 1
            rel = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
            findings += scan_source(path.read_text(encoding="utf-8"), str(rel))
    return n, findings


# One line per unsafe pattern the scan must catch (the scan's own proof that it can fail) ...
UNSAFE_SNIPPETS = [
    "import pickle\npickle.load(f)", "import pickle\npickle.loads(b)", "from pickle import loads\nloads(b)",
    "import pickle as p\np.Unpickler(f).load()", "import joblib\njoblib.load('m.joblib')",
    "from joblib import load\nload('m')", "import dill\ndill.loads(b)", "import cloudpickle\ncloudpickle.load(f)",
    "import torch\ntorch.load('m.pt')", "import torch\ntorch.load('m.pt', weights_only=False)",
    "import numpy as np\nnp.load('a.npy', allow_pickle=True)", "import numpy\nnumpy.load('a.npz', allow_pickle=flag)",
    "import pandas as pd\npd.read_pickle('x.pkl')", "import pandas\npandas.read_pickle('x')",
    "import yaml\nyaml.load(text)", "import yaml\nyaml.load(text, Loader=yaml.Loader)",
    "import yaml\nyaml.unsafe_load(text)", "import yaml\nyaml.full_load(text)", "import shelve\nshelve.open('db')",
    "import marshal\nmarshal.loads(b)", "import skops.io as sio\nsio.load('m.skops', trusted=True)",
]
# ... and the safe forms it must leave alone.
SAFE_SNIPPET = """
import json, yaml, torch, numpy as np, pandas as pd
from yaml import SafeLoader
yaml.safe_load(t); yaml.load(t, Loader=yaml.SafeLoader); yaml.load(t, Loader=SafeLoader); yaml.load(t, yaml.CSafeLoader)
torch.load("m.pt", weights_only=True); np.load("a.npy"); np.load("a.npy", allow_pickle=False)
pd.read_parquet("x"); json.loads("{}"); df.to_pickle  # attribute, not a load
text = "pickle.loads(b) in a string is not code"
"""


def scan_self_check() -> list[str]:
    """Problems of the scanner itself: an unsafe snippet it misses, or a safe form it flags."""
    problems = [f"missed: {s!r}" for s in UNSAFE_SNIPPETS if not scan_source(s)]
    problems += [f"false positive: {f}" for f in scan_source(SAFE_SNIPPET)]
    return problems


# ---- rendered cluster objects ---------------------------------------------------------------------------
KNOWN_DEFAULT_CREDENTIALS = ("minioadmin", "minio123", "changeme", "admin123", "secret123",
                             "tideline-dev-only-secret")
FORBIDDEN_VERBS = {"escalate", "bind", "impersonate", "delete", "deletecollection", "*"}
SIGNING_ENV = "TIDELINE_SIGNING_KEY_FILE"
SIGNING_DIR = "/var/run/secrets/tideline/signing"
# the workloads that register or load model versions
MODEL_WORKLOADS = {("Deployment", "tideline-operator"), ("ServingRuntime", "tideline-predictor"),
                   ("CronWorkflow", "tideline-trigger-check-daily"), ("CronWorkflow", "tideline-retrain-weekly"),
                   ("CronWorkflow", "tideline-trigger-check-off-hours")}


def _key(o: dict[str, Any]) -> tuple[str, str]:
    return (o.get("kind", "?"), (o.get("metadata") or {}).get("name", "?"))


def containers_of(o: dict[str, Any]) -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
    """(where, container, pod-level securityContext) for every container an object runs."""
    kind, spec = o.get("kind"), o.get("spec") or {}
    if kind in ("Deployment", "Job", "StatefulSet", "DaemonSet"):
        pod = spec["template"]["spec"]
        return [(f"{_key(o)}/{c['name']}", c, pod.get("securityContext") or {})
                for c in pod.get("initContainers", []) + pod["containers"]]
    if kind == "ServingRuntime":
        return [(f"{_key(o)}/{c['name']}", c, {}) for c in spec["containers"]]
    if kind == "InferenceService":
        pred = spec["predictor"]
        return [(f"{_key(o)}/model", pred["model"], pred.get("securityContext") or {})]
    if kind == "CronWorkflow":
        wf = spec["workflowSpec"]
        return [(f"{_key(o)}/{t['name']}", t["container"], wf.get("securityContext") or {})
                for t in wf["templates"] if "container" in t]
    return []


def _volumes_of(o: dict[str, Any]) -> list[dict[str, Any]]:
    kind, spec = o.get("kind"), o.get("spec") or {}
    if kind in ("Deployment", "Job"):
        return spec["template"]["spec"].get("volumes") or []
    if kind == "ServingRuntime":
        return spec.get("volumes") or []
    if kind == "CronWorkflow":
        return [v for t in spec["workflowSpec"]["templates"] for v in t.get("volumes") or []]
    return []


def rbac_problems(objs: list[dict[str, Any]]) -> list[str]:
    out = [f"{_key(o)}: cluster-wide RBAC" for o in objs if o["kind"] in ("ClusterRole", "ClusterRoleBinding")]
    for o in objs:
        if o["kind"] == "Role":
            for rule in o.get("rules") or []:
                for field in ("apiGroups", "resources", "verbs"):
                    if "*" in (rule.get(field) or []):
                        out.append(f"{_key(o)}: '*' in {field}")
                if FORBIDDEN_VERBS & set(rule.get("verbs") or []):
                    out.append(f"{_key(o)}: verbs {sorted(FORBIDDEN_VERBS & set(rule['verbs']))}")
                if "secrets" in (rule.get("resources") or []) and set(rule.get("verbs") or []) - {"get"}:
                    out.append(f"{_key(o)}: secrets {rule['verbs']}")
                elif "secrets" in (rule.get("resources") or []):
                    out.append(f"{_key(o)}: reads secrets")
        if o["kind"] == "RoleBinding":
            ref = o.get("roleRef") or {}
            if ref.get("kind") != "Role" or ref.get("name") in ("cluster-admin", "admin", "edit"):
                out.append(f"{_key(o)}: binds {ref.get('kind')} {ref.get('name')}")
            if any(s.get("kind") != "ServiceAccount" for s in o.get("subjects") or []):
                out.append(f"{_key(o)}: binds a user or group")
    return out


def container_problems(objs: list[dict[str, Any]]) -> tuple[int, list[str]]:
    n, out = 0, []
    for o in objs:
        for where, c, pod_sc in containers_of(o):
            n += 1
            sc = c.get("securityContext") or {}
            if not (sc.get("runAsNonRoot") or pod_sc.get("runAsNonRoot")):
                out.append(f"{where}: runAsNonRoot not set")
            if (sc.get("runAsUser", pod_sc.get("runAsUser")) or 1) == 0:
                out.append(f"{where}: runAsUser 0")
            if sc.get("privileged"):
                out.append(f"{where}: privileged")
            if sc.get("allowPrivilegeEscalation") is not False:
                out.append(f"{where}: allowPrivilegeEscalation not false")
            if "ALL" not in ((sc.get("capabilities") or {}).get("drop") or []):
                out.append(f"{where}: capabilities not dropped")
            if sc.get("readOnlyRootFilesystem") is not True:
                out.append(f"{where}: root filesystem writable")
            res = c.get("resources") or {}
            if not ({"cpu", "memory"} <= set(res.get("limits") or {}) and {"cpu", "memory"} <= set(res.get("requests") or {})):
                out.append(f"{where}: cpu/memory requests and limits not both set")
    return n, out


def credential_problems(objs: list[dict[str, Any]], *, dev: bool) -> list[str]:
    out = []
    if not dev:
        out += [f"{_key(o)}: a Secret in non-dev output" for o in objs if o["kind"] == "Secret"]
        text = json.dumps(objs).lower()
        out += [f"known default credential {c!r}" for c in KNOWN_DEFAULT_CREDENTIALS if c in text]
    for where, c, _ in (x for o in objs for x in containers_of(o)):
        for e in c.get("env") or []:
            name = e.get("name", "")
            if ("SECRET" in name or "PASSWORD" in name or name in ("TIDELINE_SIGNING_KEY", "AWS_ACCESS_KEY_ID",
                                                                    "MINIO_ROOT_USER")) and "value" in e:
                out.append(f"{where}: {name} has a literal value")
    return out


def networkpolicy_problems(objs: list[dict[str, Any]], *, dev: bool) -> list[str]:
    minio_sel = {"app.kubernetes.io/name": "tideline", "app.kubernetes.io/component": "minio"}
    pols = [o for o in objs if o["kind"] == "NetworkPolicy"
            and (o["spec"].get("podSelector") or {}).get("matchLabels") == minio_sel]
    if not any(p["metadata"]["name"] == "minio-ingress" for p in pols):
        return ["no minio-ingress NetworkPolicy selecting the MinIO pods"]
    out = []
    for p in pols:
        if "Ingress" not in (p["spec"].get("policyTypes") or []):
            out.append(f"{_key(p)}: not an Ingress policy")
        for rule in p["spec"].get("ingress") or []:
            ports = {x.get("port") for x in rule.get("ports") or []}
            peers = rule.get("from")
            if not ports:
                out.append(f"{_key(p)}: a rule open on every port")
            if not peers:
                if not (dev and ports == {9001}):  # the dev console (kind overlay / values-kind) only
                    out.append(f"{_key(p)}: ports {sorted(ports, key=str)} open to every pod")
                continue
            for peer in peers:
                labels = (peer.get("podSelector") or {}).get("matchLabels") or {}
                ns = ((peer.get("namespaceSelector") or {}).get("matchLabels") or {}).get("kubernetes.io/metadata.name")
                exprs = (peer.get("podSelector") or {}).get("matchExpressions") or []
                kfp = ns == "kubeflow" and any(e.get("key") == "workflows.argoproj.io/workflow" for e in exprs)
                if "ipBlock" in peer or not (labels.get("tideline.io/s3-access") == "true" and "namespaceSelector" not in peer or kfp):
                    out.append(f"{_key(p)}: admits {json.dumps(peer, sort_keys=True)[:120]}")
    return out


def signing_problems(objs: list[dict[str, Any]], *, enabled: bool) -> list[str]:
    """With signing on, every model workload mounts the key Secret read-only and names the file; off: none does."""
    out = []
    by_key = {_key(o): o for o in objs}
    for k in sorted(MODEL_WORKLOADS):
        o = by_key.get(k)
        if o is None:
            out.append(f"{k}: missing")
            continue
        vols = {v["name"]: v for v in _volumes_of(o)}
        for where, c, _ in containers_of(o):
            env = {e["name"]: e for e in c.get("env") or []}
            mounts = [m for m in c.get("volumeMounts") or [] if m.get("mountPath") == SIGNING_DIR]
            if not enabled:
                if SIGNING_ENV in env or mounts:
                    out.append(f"{where}: signing wired although disabled")
                continue
            if env.get(SIGNING_ENV, {}).get("value") != f"{SIGNING_DIR}/key":
                out.append(f"{where}: {SIGNING_ENV} not set to the mounted key")
            if len(mounts) != 1 or mounts[0].get("readOnly") is not True:
                out.append(f"{where}: the signing key is not mounted read-only")
                continue
            secret = (vols.get(mounts[0]["name"]) or {}).get("secret") or {}
            if not secret.get("secretName") or secret.get("optional"):
                out.append(f"{where}: the signing key volume is not a required Secret")
            if (secret.get("defaultMode") or 0o644) & 0o222:
                out.append(f"{where}: the signing key file is writable")
    return out


def cluster_problems(objs: list[dict[str, Any]], *, dev: bool, signing: bool | None) -> tuple[int, list[str]]:
    """(containers checked, problems) for one rendered output."""
    n, cont = container_problems(objs)
    probs = rbac_problems(objs) + cont + credential_problems(objs, dev=dev) + networkpolicy_problems(objs, dev=dev)
    if signing is not None:
        probs += signing_problems(objs, enabled=signing)
    return n, probs


def _docs(text: str) -> list[dict[str, Any]]:
    import yaml

    return [d for d in yaml.safe_load_all(text) if d]


def render_sources() -> dict[str, tuple[list[dict[str, Any]], bool, bool | None]]:
    """name -> (objects, dev, signing enabled) for every chart values file and kustomize entry point."""
    import helm_python as helm
    import yaml

    chart_dir = ROOT / "helm" / "tideline"
    out: dict[str, tuple[list[dict[str, Any]], bool, bool | None]] = {}

    def chart(vals: dict[str, Any]) -> list[dict[str, Any]]:
        c = helm.Chart.load(str(chart_dir))
        rendered = c.render(values=vals, name="tideline", namespace="tideline", is_install=True)
        objs = [d for p, t in rendered.items() if p.endswith((".yaml", ".yml")) for d in _docs(t)]
        return objs + [d for crd in c.crds for d in _docs(crd["data"])]

    def vals(name: str) -> dict[str, Any]:
        return yaml.safe_load((chart_dir / name).read_text())

    out["helm default"] = (chart({}), False, False)
    out["helm signing.enabled"] = (chart({"signing": {"enabled": True}}), False, True)
    out["helm production"] = (chart(vals("values-production.yaml")), False, True)
    out["helm kind"] = (chart(vals("values-kind.yaml")), True, None)
    kubectl = Path(sys.executable).parent / "kubectl"
    for name, path, dev, sig in (("kustomize base", "manifests/base", False, False),
                                 ("kustomize signed", "manifests/overlays/signed", False, True),
                                 ("kustomize kind", "manifests/overlays/kind", True, None)):
        res = subprocess.run([str(kubectl), "kustomize", str(ROOT / path)], capture_output=True, text=True, timeout=120)
        if res.returncode != 0:
            raise RuntimeError(f"kubectl kustomize {path}: {res.stderr.strip()[:300]}")
        out[name] = (_docs(res.stdout), dev, sig)
    return out


def _break(objs: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Broken copies of a real render, one per kind of mistake (each must be caught)."""
    cases: dict[str, list[dict[str, Any]]] = {}

    def variant(name: str, edit: Callable[[dict[tuple[str, str], dict[str, Any]]], None]) -> None:
        c = copy.deepcopy(objs)
        edit({_key(o): o for o in c})
        cases[name] = c

    def cluster_role(by: dict[tuple[str, str], dict[str, Any]]) -> None:
        by[("Role", "tideline-operator")]["kind"] = "ClusterRole"

    def secrets_rule(by: dict[tuple[str, str], dict[str, Any]]) -> None:
        by[("Role", "tideline-operator")]["rules"].append({"apiGroups": [""], "resources": ["secrets"], "verbs": ["get", "list"]})

    def root(by: dict[tuple[str, str], dict[str, Any]]) -> None:
        pod = by[("Deployment", "tideline-operator")]["spec"]["template"]["spec"]
        pod["securityContext"].pop("runAsNonRoot")
        pod["containers"][0]["securityContext"].pop("runAsNonRoot")

    def writable(by: dict[tuple[str, str], dict[str, Any]]) -> None:
        by[("ServingRuntime", "tideline-predictor")]["spec"]["containers"][0]["securityContext"]["readOnlyRootFilesystem"] = False

    def unbounded(by: dict[tuple[str, str], dict[str, Any]]) -> None:
        by[("Deployment", "minio")]["spec"]["template"]["spec"]["containers"][0]["resources"].pop("limits")

    def credential(by: dict[tuple[str, str], dict[str, Any]]) -> None:
        env = by[("Deployment", "tideline-operator")]["spec"]["template"]["spec"]["containers"][0]["env"]
        env.append({"name": "AWS_SECRET_ACCESS_KEY", "value": "minioadmin"})

    def open_minio(by: dict[tuple[str, str], dict[str, Any]]) -> None:
        by[("NetworkPolicy", "minio-ingress")]["spec"]["ingress"][0]["from"] = [{"podSelector": {}}]

    def unsigned(by: dict[tuple[str, str], dict[str, Any]]) -> None:
        c = by[("ServingRuntime", "tideline-predictor")]["spec"]["containers"][0]
        c["env"] = [e for e in c["env"] if e["name"] != SIGNING_ENV]

    for name, fn in (("ClusterRole", cluster_role), ("secrets rule", secrets_rule), ("root", root),
                     ("writable rootfs", writable), ("no limits", unbounded), ("literal credential", credential),
                     ("MinIO open to every pod", open_minio), ("signing env dropped", unsigned)):
        variant(name, fn)
    return cases


# ---- scenarios --------------------------------------------------------------------------------------------
def _row(scenario: str, times: int, unit: str, result: str, lost: int, ok: bool, t0: float) -> dict[str, Any]:
    return {"area": "Security", "scenario": scenario, "times": times, "unit": unit, "result": result,
            "lost": lost, "ok": ok, "seconds": round(time.perf_counter() - t0, 1)}


def _artifacts(root: Path, i: int) -> Path:
    d = root / f"art-{i}"
    (d / "sub").mkdir(parents=True, exist_ok=True)
    (d / "model.json").write_text(json.dumps({"i": i, "coef": [0.1 * i, 0.2]}))
    (d / "sub" / "weights.bin").write_bytes(secrets.token_bytes(2048))
    return d


def _tampers(key: str, other_key: str) -> dict[str, Callable[[Any, str, str], None]]:
    from tideline.registry.signing import Signing, key_id_of

    def raw(reg: Any, v: str) -> dict[str, Any]:
        return json.loads(reg.store.get(f"versions/{v}.json")[0])

    def put(reg: Any, v: str, m: dict[str, Any]) -> None:
        reg.store.put(f"versions/{v}.json", json.dumps(m, indent=1).encode())

    def artifact_bytes(reg: Any, v: str, _: str) -> None:
        m = raw(reg, v)
        k = m["artifact_prefix"] + "sub/weights.bin"
        data = bytearray(reg.store.get(k)[0])
        data[17] ^= 0x01
        reg.store.put(k, bytes(data))

    def field(name: str, value: Any) -> Callable[[Any, str, str], None]:
        def edit(reg: Any, v: str, _: str) -> None:
            m = raw(reg, v)
            m[name] = value
            put(reg, v, m)
        return edit

    def artifact_and_sha(reg: Any, v: str, _: str) -> None:
        m = raw(reg, v)
        evil = b"evil weights " + secrets.token_bytes(8)
        reg.store.put(m["artifact_prefix"] + "sub/weights.bin", evil)
        m["artifacts"]["sub/weights.bin"] = {"sha256": hashlib.sha256(evil).hexdigest(), "size": len(evil)}
        put(reg, v, m)

    def stripped(reg: Any, v: str, _: str) -> None:
        m = raw(reg, v)
        m.pop("signature")
        m["params"] = {"evil": True}
        put(reg, v, m)

    def wrong_key(reg: Any, v: str, _: str) -> None:
        m = raw(reg, v)
        m["params"] = {"evil": True}
        m["signature"] = Signing.with_key(other_key).sign(m)
        put(reg, v, m)

    def forged_key_id(reg: Any, v: str, _: str) -> None:
        m = raw(reg, v)
        m["params"] = {"evil": True}
        m["signature"] = {**Signing.with_key(other_key).sign(m), "key_id": key_id_of(key.encode())}
        put(reg, v, m)

    def flipped_mac(reg: Any, v: str, _: str) -> None:
        m = raw(reg, v)
        val = m["signature"]["value"]
        m["signature"]["value"] = ("0" if val[0] != "0" else "1") + val[1:]
        put(reg, v, m)

    def replay(reg: Any, v: str, donor: str) -> None:
        put(reg, v, raw(reg, donor))

    return {
        "artifact bytes": artifact_bytes, "params": field("params", {"evil": True}),
        "metrics": field("metrics", {"sharpe": 99.0}), "features": field("features", ["x"]),
        "artifact + its sha256": artifact_and_sha, "signature stripped": stripped,
        "re-signed, wrong key": wrong_key, "forged key id": forged_key_id, "MAC bit flipped": flipped_mac,
        "manifest replayed as another version": replay,
    }


def tampered_versions(quick: bool, work: Path) -> dict[str, Any]:
    from tideline.errors import IntegrityError
    from tideline.registry import open_registry
    from tideline.registry.signing import Signing

    t0 = time.perf_counter()
    key, other = secrets.token_hex(32), secrets.token_hex(32)
    tampers = _tampers(key, other)
    rounds = 2 if quick else 12
    root = work / "signed-registry"
    writer = open_registry(root.as_uri(), signing=Signing.with_key(key))
    arts = work / "arts"
    versions: list[tuple[str, str | None]] = []  # (version, tamper kind or None = control)
    for r in range(rounds):
        for kind in [*tampers, None]:
            mv = writer.register(_artifacts(arts, len(versions)), {"family": "sklearn", "params": {"r": r}})
            versions.append((mv.version, kind))
    for i, (v, kind) in enumerate(versions):
        if kind is not None:
            tampers[kind](writer, v, versions[i - 1][0] if i else versions[-1][0])
    attempts = accepted = controls_ok = refused_controls = wrong_key_refused = 0
    detail: dict[str, int] = {}
    for v, kind in versions:
        reader = open_registry(root.as_uri(), signing=Signing.with_key(key))  # fresh: no cache
        for how in ("get", "fetch"):
            dest = work / "out" / f"{v}-{how}"
            try:
                reader.get(v) if how == "get" else reader.fetch(v, dest)
                ok = True
            except IntegrityError:
                ok = False
            if kind is None:
                controls_ok += ok
                refused_controls += not ok
            elif not (how == "get" and kind == "artifact bytes"):  # bytes are checked by fetch, not get
                attempts += 1
                accepted += ok
                detail[kind] = detail.get(kind, 0) + ok
        if kind is None:  # an authentic version read with the wrong key
            attempts += 1
            try:
                open_registry(root.as_uri(), signing=Signing.with_key(other)).fetch(v, work / "out" / f"{v}-wk")
                accepted += 1
                detail["wrong reader key"] = detail.get("wrong reader key", 0) + 1
            except IntegrityError:
                wrong_key_refused += 1
    # the predictor's own load path on one tampered version of each kind
    from tideline.serving.predictor import load_slot

    reader = open_registry(root.as_uri(), signing=Signing.with_key(key))
    slot_refusals = 0
    for v, kind in versions[: len(tampers) + 1]:
        if kind is None:
            continue
        attempts += 1
        try:
            load_slot(reader, v, "canary")
            accepted += 1
        except IntegrityError:
            slot_refusals += 1
        except Exception:  # noqa: BLE001 - the stored files are not a real model: reaching load_model is acceptance
            accepted += 1
    # the audit an operator runs (`tideline models verify`): it must name exactly the tampered versions
    audit = {c.version: c.problem for c in reader.check_versions(artifacts=True)}
    tampered = {v for v, k in versions if k is not None}
    flagged = {v for v, problem in audit.items() if problem is not None}
    audit_ok = flagged == tampered and set(audit) == {v for v, _ in versions}
    n_controls = sum(1 for _, k in versions if k is None) * 2
    ok = accepted == 0 and controls_ok == n_controls and audit_ok
    leaked = [k for k, n in detail.items() if n]
    result = (f"{attempts - accepted}/{attempts} tampered loads refused with IntegrityError "
              f"({len(tampers)} kinds x {rounds} rounds via get+fetch, {wrong_key_refused} authentic versions "
              f"refused under a wrong key, {slot_refusals} refused by the predictor's load_slot); "
              f"{controls_ok}/{n_controls} untampered loads accepted; `models verify` flagged "
              f"{len(flagged & tampered)}/{len(tampered)} tampered and {len(flagged - tampered)} of "
              f"{len(audit) - len(tampered)} authentic versions")
    if leaked:
        result += f"; ACCEPTED: {', '.join(leaked)}"
    if refused_controls:
        result += f"; {refused_controls} authentic loads refused"
    return _row("tampered versions (artifact bytes, manifest fields, signature stripped, wrong key) loaded with "
                "signing on", attempts, "attempts", result, accepted, ok, t0)


BAD_VERSIONS = ["../v1", "v1/../../state", "/etc/passwd", "v0", "v01", "v1\x00", "..", "v1.json", " v1", "V1",
                "v-1", "v1 ", "v1/", "versions/v1", "v1\\..\\x", "%2e%2e/v1", "v99999999999", "", "v1\n"]
BAD_NAMES = ["../x", "a/b", "..", ".", ".tideline-locks", "/abs", "a\\b", "x\x00", "", " x", "-x", "a b", "é",
             "x" * 200, "..\\..\\x", "a/../b"]
BAD_KEYS = ["../x", "/abs/key", "a//b", "a/./b", "a/../../b", "a\\b", "a\x00b", ".tideline-locks/00.lock", "",
            "a/.tideline-tmp-x", "%2e%2e/x", "a/b/", "~/x", "a b"]
BAD_ALIASES = ["../production", "prod", "PRODUCTION", "production/../x", "", "latest"]


def bad_names(quick: bool, work: Path) -> dict[str, Any]:
    from tideline.errors import TidelineError
    from tideline.registry import open_registry
    from tideline.registry.signing import Signing
    from tideline.store import S3Store, validate_key

    t0 = time.perf_counter()
    root = work / "names" / "registry"
    outside = work / "names" / "outside"
    outside.mkdir(parents=True)
    reg = open_registry(root.as_uri(), signing=Signing.off())
    arts = work / "names" / "arts"
    reg.register(_artifacts(arts, 1), {"family": "sklearn"})
    reg.promote("v1", reason="baseline")
    before = sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())
    s3 = S3Store("bucket", "prefix", endpoint_url="http://127.0.0.1:9")  # never contacted: keys fail first
    calls: list[tuple[str, Callable[[], Any]]] = []
    for v in BAD_VERSIONS:
        calls += [(f"get {v!r}", lambda v=v: reg.get(v)), (f"fetch {v!r}", lambda v=v: reg.fetch(v, outside / "f")),
                  (f"promote {v!r}", lambda v=v: reg.promote(v, reason="x")),
                  (f"set_alias {v!r}", lambda v=v: reg.set_alias("candidate", v)),
                  (f"set_status {v!r}", lambda v=v: reg.set_status(v, "RETIRED")),
                  (f"delete {v!r}", lambda v=v: reg.delete(v)), (f"status {v!r}", lambda v=v: reg.status(v)),
                  (f"attachments {v!r}", lambda v=v: reg.attachments(v))]
    for a in BAD_ALIASES:
        calls += [(f"alias {a!r}", lambda a=a: reg.set_alias(a, "v1"))]
    for n in BAD_NAMES:
        calls += [(f"put_attachment {n!r}", lambda n=n: reg.put_attachment("v1", n, b"x")),
                  (f"get_attachment {n!r}", lambda n=n: reg.get_attachment("v1", n))]
    for i, n in enumerate(n for n in BAD_NAMES if n and "/" not in n and "\x00" not in n and n not in (".", "..")):
        d = arts / f"bad-{i}"
        d.mkdir(parents=True)
        (d / "ok.json").write_text("{}")
        try:
            (d / n).write_text("x")
        except OSError:
            continue
        calls.append((f"register artifact {n!r}", lambda d=d: reg.register(d, {"family": "sklearn"})))
    for k in BAD_KEYS:
        calls += [(f"validate_key {k!r}", lambda k=k: validate_key(k)),
                  (f"FileStore.put {k!r}", lambda k=k: reg.store.put(k, b"x")),
                  (f"FileStore.get {k!r}", lambda k=k: reg.store.get(k)),
                  (f"S3Store key {k!r}", lambda k=k: s3._key(k))]
    # manifests planted with traversal paths (no signing: the shape check alone must refuse them)
    planted = [("artifact_prefix", "../../outside/"), ("artifacts", {"../../outside/x": {"sha256": "0" * 64, "size": 1}}),
               ("artifacts", {"/etc/passwd": {"sha256": "0" * 64, "size": 1}}), ("artifact_prefix", "artifacts/../")]
    original = reg.store.get("versions/v1.json")[0]
    for fld, val in planted:
        def planted_fetch(fld: str = fld, val: Any = val) -> Any:
            m = json.loads(original)
            m[fld] = val
            reg.store.put("versions/v1.json", json.dumps(m).encode())
            try:
                return open_registry(root.as_uri(), signing=Signing.off()).fetch("v1", outside / "planted")
            finally:
                reg.store.put("versions/v1.json", original)
        calls.append((f"planted manifest {fld}={val!r}"[:80], planted_fetch))
    rounds = 1 if quick else 5
    accepted: list[str] = []
    attempts = 0
    for _ in range(rounds):
        for what, fn in calls:
            attempts += 1
            try:
                fn()
                accepted.append(what)
            except TidelineError as e:
                if "\n" in str(e):
                    accepted.append(f"{what} (multi-line error)")
    after = sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())
    stray = [str(p) for p in outside.rglob("*")] + [x for x in after if x not in before and not x.startswith(".tideline")]
    stray += [str(p) for p in (work / "names").iterdir() if p.name not in ("registry", "outside", "arts")]
    final = open_registry(root.as_uri(), signing=Signing.off())
    intact = final.aliases() == {"production": "v1"} and [m.version for m in final.list_versions()] == ["v1"]
    lost = len(accepted) + len(stray) + (0 if intact else 1)
    result = (f"{attempts - len(accepted)}/{attempts} refused with a one-line error ({len(BAD_VERSIONS)} version ids, "
              f"{len(BAD_ALIASES)} aliases, {len(BAD_NAMES)} attachment/artifact names, {len(BAD_KEYS)} store keys on "
              f"FileStore and S3Store, {len(planted)} planted manifests); 0 files outside the store, production "
              f"unchanged" if lost == 0 else
              f"ACCEPTED {accepted[:5]}; stray files {stray[:5]}; registry intact: {intact}")
    return _row("path traversal / bad names in versions, aliases, attachment and artifact names, store keys",
                attempts, "attempts", result, lost, lost == 0, t0)


def unsafe_scan(quick: bool, work: Path) -> dict[str, Any]:
    t0 = time.perf_counter()
    n, findings = scan_unsafe_loads()
    self_problems = scan_self_check()
    ok = not findings and not self_problems and n > 50
    result = (f"{n} files in {', '.join(SCAN_DIRS)}: {len(findings)} findings; the scan catches "
              f"{len(UNSAFE_SNIPPETS) - sum(p.startswith('missed') for p in self_problems)}/{len(UNSAFE_SNIPPETS)} "
              f"seeded unsafe patterns, 0 false positives on the safe forms" if not self_problems
              else f"scanner self-check failed: {self_problems[:3]}")
    if findings:
        result += f"; findings: {findings[:5]}"
    return _row("unsafe deserialisation scan", n, "files", result, len(findings), ok, t0)


def cluster_objects(quick: bool, work: Path) -> dict[str, Any]:
    t0 = time.perf_counter()
    sources = render_sources()
    n_objs = n_containers = 0
    problems: list[str] = []
    for name, (objs, dev, sig) in sources.items():
        n_objs += len(objs)
        n, probs = cluster_problems(objs, dev=dev, signing=sig)
        n_containers += n
        problems += [f"{name}: {p}" for p in probs]
    # the checks are not vacuous: each broken copy of a real render is caught
    base, _, _ = sources["helm signing.enabled"]
    missed = [name for name, broken in _break(base).items() if not cluster_problems(broken, dev=False, signing=True)[1]]
    ok = not problems and not missed
    result = (f"{n_objs} objects from {len(sources)} renders (chart: default, signing, production, kind; kustomize: "
              f"base, signed, kind), {n_containers} containers: 0 ClusterRoles, no '*'/secrets/escalation verbs, all "
              f"non-root + read-only rootfs + limits, no default credentials outside dev, MinIO admits only labelled "
              f"pods, signing key mounted read-only in every model workload when enabled; "
              f"{len(_break(base)) - len(missed)}/{len(_break(base))} seeded mistakes caught")
    if problems or missed:
        result = f"problems: {problems[:6]}; seeded mistakes missed: {missed}"
    return _row("rendered cluster objects checked (RBAC, non-root, read-only rootfs, limits, credentials, MinIO "
                "NetworkPolicy)", n_objs, "objects", result, len(problems), ok, t0)


def scenarios(quick: bool, work: Path) -> list[dict[str, Any]]:
    work = Path(work)
    work.mkdir(parents=True, exist_ok=True)
    return [tampered_versions(quick, work / "tamper"), bad_names(quick, work / "names"),
            unsafe_scan(quick, work), cluster_objects(quick, work)]


if __name__ == "__main__":
    import tempfile

    with tempfile.TemporaryDirectory(prefix="tideline-security-") as tmp:
        for row in scenarios(quick="--quick" in sys.argv[1:], work=Path(tmp)):
            print(json.dumps(row), flush=True)
