#!/bin/sh
# `make images-local`: build the images on a machine that reaches no image registry (only the package indexes),
# from the same Dockerfiles as `make images`, with local stand-ins passed as build arguments:
#   - the base: Debian bookworm with python3.11 made by debootstrap and `docker import`ed (tideline-base:...);
#   - torch's CPU wheel: from pip's find-links directory on this machine (`pip config list`), put in a
#     scratch image that the dependency build mounts (tideline-wheels:local); the PyTorch index is not used;
#   - pip's CA bundle: the host's, passed as a build secret (never written into a layer).
# The engine: Debian's docker.io, started as `dockerd --storage-driver=overlay2 --iptables=false --bridge=none`
# when none is running (vfs where overlayfs cannot be mounted; no bridge here: every build and container uses
# the host network or none).
# Needs root for apt-get, debootstrap and dockerd.
set -eu

DOCKER=${DOCKER:-/usr/bin/docker}
BASE_IMAGE=${BASE_IMAGE:-tideline-base:bookworm-py311}
WHEELS_IMAGE=${WHEELS_IMAGE:-tideline-wheels:local}
CA=${CA:-/etc/ssl/certs/ca-certificates.crt}
say() { echo "images-local: $*"; }

need_pkgs=""
[ -x /usr/sbin/dockerd ] && [ -x /usr/bin/docker ] || need_pkgs="$need_pkgs docker.io"
command -v debootstrap >/dev/null 2>&1 || need_pkgs="$need_pkgs debootstrap"
if [ -n "$need_pkgs" ]; then
    say "installing$need_pkgs (apt-get)"
    # a fresh machine may have no package lists yet: update once and retry
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $need_pkgs >/dev/null 2>&1 \
        || { apt-get update -q >/dev/null \
             && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $need_pkgs >/dev/null; }
fi

if ! "$DOCKER" info >/dev/null 2>&1; then
    # overlay2 where this kernel mounts overlayfs on the engine's disk (layers shared, a container starts at
    # once); vfs otherwise (every layer and every container a full copy). DOCKER_STORAGE_DRIVER overrides.
    driver=${DOCKER_STORAGE_DRIVER:-}
    if [ -z "$driver" ]; then
        mkdir -p /var/lib/docker
        probe=$(mktemp -d /var/lib/docker/overlay-probe.XXXXXX)
        mkdir "$probe/l" "$probe/u" "$probe/w" "$probe/m"
        if mount -t overlay overlay -o "lowerdir=$probe/l,upperdir=$probe/u,workdir=$probe/w" "$probe/m" 2>/dev/null; then
            umount "$probe/m"
            driver=overlay2
        else
            driver=vfs
        fi
        rm -rf "$probe"
    fi
    say "starting dockerd ($driver storage, no iptables, no bridge; log: /tmp/tideline-dockerd.log)"
    nohup dockerd --storage-driver="$driver" --iptables=false --bridge=none >/tmp/tideline-dockerd.log 2>&1 &
    i=0
    until "$DOCKER" info >/dev/null 2>&1; do
        i=$((i + 1))
        [ "$i" -le 60 ] || { echo "error: dockerd did not start in 60 s; see /tmp/tideline-dockerd.log" >&2; exit 1; }
        sleep 1
    done
fi

if ! "$DOCKER" image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
    say "making the base image $BASE_IMAGE with debootstrap (bookworm, python3.11)"
    root=$(mktemp -d /tmp/tideline-rootfs.XXXXXX)
    chmod 755 "$root"  # it becomes the image's / : mktemp's 0700 would lock uid 10001 out of everything
    debootstrap --variant=minbase --include=python3.11,python3.11-venv,python3-pip,libgomp1,ca-certificates \
        bookworm "$root" >/tmp/tideline-debootstrap.log 2>&1 \
        || { echo "error: debootstrap failed; see /tmp/tideline-debootstrap.log" >&2; exit 1; }
    tar -C "$root" -c . | "$DOCKER" import - "$BASE_IMAGE" >/dev/null
    rm -rf "$root"
fi

wheels=$(python3 -m pip config list 2>/dev/null | sed -n "s/^[^=]*find-links='\([^' ]*\).*/\1/p" | head -n 1)
wheels=${wheels:-${PIP_FIND_LINKS:-}}
if [ -z "$wheels" ] || ! ls "$wheels"/torch-*.whl >/dev/null 2>&1; then
    echo "error: no torch wheel in pip's find-links directory ('${wheels}'); set PIP_FIND_LINKS to a directory holding the CPU wheel" >&2
    exit 1
fi
say "wheels image $WHEELS_IMAGE from $wheels"
tar -C "$wheels" -c . | "$DOCKER" import - "$WHEELS_IMAGE" >/dev/null

exec make images DOCKER="$DOCKER" BUILD_FLAGS="--network host" \
    IMAGE_BUILD_ARGS="--secret id=ca,src=$CA --build-arg PYTHON_BASE_IMAGE=$BASE_IMAGE --build-arg WHEELS_IMAGE=$WHEELS_IMAGE --build-arg WHEELS_DIR=/ --build-arg TORCH_INDEX_URL="
