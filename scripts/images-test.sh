#!/bin/sh
# `make images-test`: from a fresh machine, build the three images and run them for real (tests/images):
# the pipeline with every task in its image, the predictor under the chart's security context, a rollout with
# the candidate in a container, the faults, the controller without a cluster. scripts/images-local.sh installs
# the engine (Debian's docker.io, vfs storage, no bridge) and debootstrap when missing, makes the base image and
# builds; then the tests. Figures (build and test times, engine storage, image sizes) go to
# .tideline/images-test.json; the summary is printed at the end. Needs root (apt-get, debootstrap, dockerd).
set -eu

BIN=${BIN:-.venv/bin}
REPORT=.tideline/images-test.json
mkdir -p .tideline
rm -f "$REPORT"
t0=$(date +%s)
sh scripts/images-local.sh
t1=$(date +%s)
DOCKER=${DOCKER:-/usr/bin/docker}
"$BIN/python" - "$REPORT" "$((t1 - t0))" <<'PY'
import json, sys
path, seconds = sys.argv[1], int(sys.argv[2])
json.dump({"build_s": seconds}, open(path, "w"))
PY
status=0
DOCKER="$DOCKER" "$BIN/pytest" -q --images tests/images -p no:cacheprovider || status=$?
t2=$(date +%s)
root=$("$DOCKER" info -f '{{.DockerRootDir}}' 2>/dev/null || echo /var/lib/docker)
"$BIN/python" - "$REPORT" "$((t2 - t1))" "$((t2 - t0))" "$root" <<'PY'
import json, shutil, subprocess, sys
path, tests_s, total_s, root = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
try:
    figures = json.load(open(path))
except (OSError, ValueError):
    figures = {}
du = subprocess.run(["du", "-sxb", root], capture_output=True, text=True).stdout.split()
figures.update(tests_s=tests_s, total_s=total_s, engine_bytes=int(du[0]) if du else None,
               disk_free_bytes=shutil.disk_usage(root).free)
json.dump(figures, open(path, "w"), indent=1, sort_keys=True)
gb = lambda b: f"{b / 1e9:.2f} GB" if b else "?"
print(f"images-test: build {figures['build_s']} s, tests {tests_s} s, total {total_s} s; "
      f"engine storage {gb(figures['engine_bytes'])}")
images = figures.get("images", {})
deps = next((d.get("bytes") for image, d in images.items() if image.startswith("tideline-deps:")), None)
for image, d in sorted(images.items()):
    own = f" ({(d['bytes'] - deps) / 1e6:.1f} MB its own)" if deps and d.get("bytes") and d["bytes"] != deps else ""
    print(f"  {image}: {gb(d.get('bytes'))}{own}")
for runner, d in sorted(figures.get("pipeline", {}).items()):
    print(f"  pipeline ({runner} runner): {d['seconds']} s, {d['decision']}, best {d['best']} "
          f"(hold-out Sharpe {d['best_sharpe']}), {d['versions']} versions")
if "rollout" in figures:
    print(f"  rollout with the candidate in a container: broken one rolled back in {figures['rollout']['rolled_back_s']} s, "
          f"good one promoted in {figures['rollout']['promoted_s']} s")
print(f"  figures: {path}")
PY
exit $status
