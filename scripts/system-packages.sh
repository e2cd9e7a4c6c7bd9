#!/bin/sh
# The Debian packages whose real servers the test suite starts (.ci/run runs this as root before `make test`):
#   prometheus  - prometheus and promtool: the alert rules' unit tests and a live Prometheus (tests/test_alerts.py)
#   chromium, chromium-driver - a headless browser on the loop's status page (tests/test_api.py)
# (make images-test installs its own: docker.io and debootstrap, in scripts/images-local.sh.)
# A test whose binary is missing fails with the command that installs it.
set -eu
need=""
for pair in prometheus:prometheus promtool:prometheus chromium:chromium chromedriver:chromium-driver; do
    bin=${pair%%:*}; pkg=${pair##*:}
    command -v "$bin" >/dev/null 2>&1 || case " $need " in *" $pkg "*) ;; *) need="$need $pkg" ;; esac
done
[ -n "$need" ] || exit 0
echo "system-packages: installing$need (apt-get)"
export DEBIAN_FRONTEND=noninteractive
# a fresh machine may have no package lists yet: update once and retry
apt-get install -y -q --no-install-recommends $need >/dev/null 2>&1 \
    || { apt-get update -q >/dev/null && apt-get install -y -q --no-install-recommends $need >/dev/null; }
