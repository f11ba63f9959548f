#!/usr/bin/env bash
# GameRec's container image without a Docker daemon or a container registry: `bentoml
# containerize --backend buildah` on a local Debian base image made with mmdebstrap. Only the
# Debian and PyPI registries are used; PyTorch is the CPU wheel, from the host's build cache.
#
#   scripts/image.sh build [BENTO_TAG]   base image (cached), a Bento if no tag is given
#                                        (`bentoml build`), then the image; prints its name
#   scripts/image.sh smoke [IMAGE]       run the image, wait for /readyz, POST /recommend,
#                                        check the answer and the served model, stop it
#   scripts/image.sh base [--rebuild]    only the base image
#   scripts/image.sh buildah ARGS...     buildah on this script's image storage
#                                        (e.g. `images`, `rmi`, `push IMAGE oci-archive:FILE`)
#
# Needs root, buildah and mmdebstrap (`apt-get install buildah mmdebstrap`). Settings (env):
#   GAMEREC_IMAGE_HOME  buildah storage and build cache           [/var/lib/gamerec-image]
#   GAMEREC_STORAGE_DRIVER  overlay or vfs       [overlay if the kernel mounts it here, else vfs]
#   GAMEREC_BASE_IMAGE  the local base image                      [localhost/gamerec-base:bookworm]
#   GAMEREC_IMAGE_NAME  image name; tags NAME:<bento version> and NAME:latest      [gamerec]
#   DEBIAN_MIRROR       mmdebstrap's mirror                       [http://deb.debian.org/debian]
#   TORCH_INDEX_URL     pip index for the CPU torch wheel if pip's default finds a CUDA build
#   BENTOML, PYTHON     the project's bentoml and python          [.venv/bin/...]
#   BUILDAH_LAYERS      keep and reuse the build's layers (the Python environment)     [true]
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
IMAGE_HOME=${GAMEREC_IMAGE_HOME:-/var/lib/gamerec-image}
BASE_IMAGE=${GAMEREC_BASE_IMAGE:-localhost/gamerec-base:bookworm}
IMAGE_NAME=${GAMEREC_IMAGE_NAME:-gamerec}
DEBIAN_MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
BENTOML=${BENTOML:-$ROOT/.venv/bin/bentoml}
PYTHON=${PYTHON:-$ROOT/.venv/bin/python}
# The build cache, mounted at /root/.cache during the build (where BentoML's Dockerfile mounts
# a cache with BuildKit, which buildah lacks): uv's cache, out of the image, and the torch wheel.
CACHE=$IMAGE_HOME/cache
WHEELS=$CACHE/wheels
BENTO_PATH=/home/bentoml/bento # where the Bento lies in the image (bentoml's default)
EXAMPLE='{"user_id": "u_123", "time_played": {"g_221": 120.0}, "genres": ["rpg","roguelike"],
 "achievements": {"g_221": 15}, "top_k": 10}'   # the README's example body
# Debian packages of the base: Python 3.11 for the Bento's venv, pip for uv, and the packages
# the Bento's Dockerfile installs with apt-get (so that step finds them already there).
BASE_PACKAGES=python3,python3-venv,python3-pip,ca-certificates,gnupg2,bash,build-essential,git
START=$SECONDS
# buildah run re-executes buildah from a sealed memfd copy of its binary (containers/storage
# pkg/unshare/unshare.c, copy_self_proc_exe). The kernel refuses the seal with EBUSY while a
# page of the copy is still pinned (mm/memfd.c, memfd_wait_for_pins): now and then on a loaded
# machine (CI, 2026-12-01). Nothing of the container ran yet, so running it again is safe.
SEAL_BUSY='sealing memfd copy: Device or resource busy'

die() { echo "image.sh: error: $*" >&2; exit 1; }
step() { printf '== [%3ds] %s\n' $((SECONDS - START)) "$*"; }

setup() {
    [[ $EUID -eq 0 ]] || die "run as root (buildah with chroot isolation)"
    command -v buildah >/dev/null || die "buildah not found: apt-get install buildah"
    mkdir -p "$IMAGE_HOME" "$WHEELS"
    local driver=${GAMEREC_STORAGE_DRIVER:-$(storage_driver)}
    # A storage of our own, one per driver: it does not clash with an existing
    # /var/lib/containers that uses another driver.
    cat >"$IMAGE_HOME/storage-$driver.conf" <<EOF
[storage]
driver = "$driver"
graphroot = "$IMAGE_HOME/storage-$driver"
runroot = "/run/gamerec-image-$driver"
EOF
    export CONTAINERS_STORAGE_CONF=$IMAGE_HOME/storage-$driver.conf STORAGE_DRIVER=$driver
    export BUILDAH_ISOLATION=chroot BENTOML_DO_NOT_TRACK=true
    # Keep the build's intermediate layers: the Python environment (uv installing torch and
    # the rest) is built again only when the Bento's requirements change, not for a new model.
    export BUILDAH_LAYERS=${BUILDAH_LAYERS:-true}
}

# overlay where the kernel mounts it on this file system (fast: no copies), else vfs (works
# everywhere, but copies the whole image for every container and layer).
storage_driver() {
    local probe
    probe=$(mktemp -d "$IMAGE_HOME/overlay-probe.XXXXXX")
    mkdir "$probe"/{lower,upper,work,merged}
    if mount -t overlay overlay -o "lowerdir=$probe/lower,upperdir=$probe/upper,workdir=$probe/work" \
        "$probe/merged" 2>/dev/null; then
        umount "$probe/merged"
        echo overlay
    else
        echo vfs
    fi
    rm -rf "$probe"
}

image_id() { buildah inspect --type image --format '{{.FromImageID}}' "$1" 2>/dev/null || true; }
have_image() { buildah inspect --type image "$1" >/dev/null 2>&1; }
image_size() { buildah images --noheading --format '{{.Size}}' "$1" | head -1; }

# Debian bookworm from the Debian registry, as an image: mmdebstrap straight into the root
# file system of a `buildah from scratch` container, then commit it.
base() {
    # What the base is made of: this function, its packages and the CA bundle it copies. A
    # cached base made otherwise (an older version of this script) is made again.
    local recipe cached
    recipe=$({ declare -f base; echo "$BASE_PACKAGES"; cat /etc/ssl/certs/ca-certificates.crt; } |
        sha256sum | cut -c1-16)
    cached=$(buildah inspect --type image --format '{{index .OCIv1.Config.Labels "gamerec.recipe"}}' \
        "$BASE_IMAGE" 2>/dev/null || true)
    if [[ ${1:-} != --rebuild && $cached == "$recipe" ]]; then
        step "base image $BASE_IMAGE: cached (\`$0 base --rebuild\` remakes it)"
        return
    fi
    command -v mmdebstrap >/dev/null || die "mmdebstrap not found: apt-get install mmdebstrap"
    step "base image $BASE_IMAGE: mmdebstrap bookworm from $DEBIAN_MIRROR (a minute or two)"
    local ctr root
    ctr=$(buildah from scratch)
    trap 'buildah rm "$ctr" >/dev/null 2>&1 || true' EXIT
    root=$(buildah mount "$ctr")
    # mmdebstrap rather than debootstrap: apt resolves and fetches the packages in one go
    # (75 s against 102 s here). The dpkg settings of Debian's official container images, kept
    # in the image (/etc/dpkg/dpkg.cfg.d/99mmdebstrap): no fsync per file, no manuals, docs
    # and translations.
    mmdebstrap --variant=minbase --include="$BASE_PACKAGES" \
        --dpkgopt=force-unsafe-io \
        --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-include=/usr/share/doc/*/copyright' \
        --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/info/*' \
        --dpkgopt='path-exclude=/usr/share/locale/*' \
        bookworm "$root" "$DEBIAN_MIRROR" 2>&1 | sed -u 's/^/   /' ||
        die "mmdebstrap failed (mirror $DEBIAN_MIRROR)"
    [[ -x $root/usr/bin/python3 ]] || die "mmdebstrap did not install python3"
    # The machine's CA bundle, so that pip and uv in the build reach the registries as the
    # host does (e.g. through a TLS-inspecting proxy).
    cp /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/ca-certificates.crt"
    rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/archives/*.deb
    buildah unmount "$ctr" >/dev/null
    # The Bento's Dockerfile pip-installs uv into Debian's Python (which refuses without
    # PIP_BREAK_SYSTEM_PACKAGES); pip and uv trust the machine's CA bundle; uv looks for wheels
    # (the CPU torch) in the build cache.
    local cert=/etc/ssl/certs/ca-certificates.crt
    buildah config \
        --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
        --env LANG=C.UTF-8 \
        --env PIP_BREAK_SYSTEM_PACKAGES=1 \
        --env PIP_CERT=$cert --env SSL_CERT_FILE=$cert \
        --env UV_FIND_LINKS=/root/.cache/wheels \
        --cmd /bin/bash --label gamerec.recipe="$recipe" "$ctr"
    step "base image: commit"
    buildah commit --quiet --rm "$ctr" "$BASE_IMAGE" >/dev/null
    trap - EXIT
    step "base image $BASE_IMAGE: $(image_size "$BASE_IMAGE")"
}

# The CPU build of the torch version the Bento pins, in $WHEELS (pip on this machine finds it
# in its own find-links; elsewhere TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu).
torch_wheel() {
    local version
    version=$(grep -oE 'torch==[0-9.]+' "$ROOT/bentofile.yaml" | head -1 | cut -d= -f3)
    [[ -n $version ]] || die "no torch==VERSION pin in bentofile.yaml"
    if compgen -G "$WHEELS/torch-$version+cpu-*.whl" >/dev/null; then
        step "torch $version CPU wheel: cached in $WHEELS"
        return
    fi
    step "torch $version CPU wheel: pip download into $WHEELS"
    local tmp
    tmp=$(mktemp -d)
    "$PYTHON" -m pip download --quiet --no-deps --only-binary=:all: -d "$tmp" \
        ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"} "torch==$version" ||
        die "pip could not download torch==$version"
    if ! compgen -G "$tmp/torch-$version+cpu-*.whl" >/dev/null; then
        die "pip found $(ls "$tmp") and not a CPU build; set" \
            "TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu"
    fi
    mv "$tmp"/torch-*.whl "$WHEELS/" && rm -rf "$tmp"
}

build() {
    local bento=${1:-}
    base
    torch_wheel
    if [[ -z $bento ]]; then
        step "bentoml build (the model: ${GAMEREC_MODEL_TAG:-gamerec:latest})"
        bento=$("$BENTOML" build --output tag "$ROOT" | tail -1)
        bento=${bento#__tag__:}
    fi
    local path
    path=$("$BENTOML" get "$bento" -o path) || die "no Bento $bento in the BentoML store"
    bento=$(basename "$(dirname "$path")"):$(basename "$path")  # gamerec:latest -> its version
    local image=localhost/$IMAGE_NAME:${bento#*:}
    step "bentoml containerize $bento -> $image (FROM $BASE_IMAGE)"
    # The Bento's own Dockerfile; only its FROM (python:3.11-slim) is replaced by the base.
    "$BENTOML" containerize "$bento" --backend buildah --image-tag "$image" \
        --opt from="$BASE_IMAGE" \
        --opt volume="$CACHE:/root/.cache"
    have_image "$image" || die "containerize did not produce $image"
    local previous
    previous=$(image_id "localhost/$IMAGE_NAME:latest")
    buildah tag "$image" "localhost/$IMAGE_NAME:latest"
    # The image that was :latest, now without a name: removed. Its layers that the new image
    # shares (the Python environment: BUILDAH_LAYERS) stay; it is the cache of the next build.
    if [[ -n $previous ]] && buildah images --noheading --quiet --no-trunc --filter dangling=true |
        grep -q "$previous"; then
        buildah rmi "$previous" >/dev/null
    fi
    step "built $image (also $IMAGE_NAME:latest): $(image_size "$image")"
    echo "image: $image"
}

# The expected model: the one the Bento in the image was built with (its bento.yaml).
bento_model() {
    "$PYTHON" - "$1/bento.yaml" <<'EOF'
import sys

import yaml

info = yaml.safe_load(open(sys.argv[1]))
tags = {m["tag"] for s in info["services"] for m in s["models"] if m["tag"].startswith("gamerec:")}
if len(tags) != 1:
    sys.exit(f"expected one gamerec model in {sys.argv[1]}, found {sorted(tags)}")
print(tags.pop())
EOF
}

# POST the example body; the answer must hold 10 games and come from the model $2.
recommend() {
    "$PYTHON" - "$1/recommend" "$EXAMPLE" "$2" <<'EOF'
import json
import sys
import urllib.request

url, example, model = sys.argv[1:]
request = urllib.request.Request(url, example.encode(), {"content-type": "application/json"})
body = json.load(urllib.request.urlopen(request, timeout=30))
games = body["recommendations"]
assert len(games) == 10, f"{len(games)} recommendations, not 10: {body}"
assert body["model"] == model, f"served {body['model']}, the Bento has {model}"
print(f"POST /recommend: 10 recommendations from {model}, first {games[0]['game_id']}")
EOF
}

smoke() {
    local image=${1:-localhost/$IMAGE_NAME:latest}
    have_image "$image" || die "no image $image (build it first: make image)"
    local user entrypoint ports
    user=$(buildah inspect --type image --format '{{.OCIv1.Config.User}}' "$image")
    entrypoint=$(buildah inspect --type image --format '{{.OCIv1.Config.Entrypoint}}' "$image")
    ports=$(buildah inspect --type image --format '{{.OCIv1.Config.ExposedPorts}}' "$image")
    [[ $user == bentoml ]] || die "$image runs as '$user', not as bentoml"
    [[ $entrypoint == "[$BENTO_PATH/env/docker/entrypoint.sh]" ]] ||
        die "$image's entrypoint is $entrypoint, not the Bento's"
    [[ $ports == *3000/tcp* ]] || die "$image does not expose port 3000 ($ports)"
    step "$image: user $user, entrypoint $entrypoint, ports $ports"

    local ctr mnt log pid="" port model
    ctr=$(buildah from --pull=never "$image")
    log=$(mktemp --suffix=.log)
    trap 'smoke_cleanup' EXIT
    mnt=$(buildah mount "$ctr")
    model=$(bento_model "$mnt$BENTO_PATH")
    [[ -d $mnt$BENTO_PATH/models/${model/://} ]] || die "model $model is not in the image"
    compgen -G "$mnt/app/.venv/lib/python3*/site-packages/torch-*+cpu.dist-info" >/dev/null ||
        die "the image's torch is not the CPU build"
    ! compgen -G "$mnt/app/.venv/lib/python3*/site-packages/nvidia/" >/dev/null ||
        die "the image carries NVIDIA's CUDA libraries"
    buildah unmount "$ctr" >/dev/null
    step "the image holds model $model and the CPU torch"

    port=$("$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("", 0)); print(s.getsockname()[1])')
    local url=http://127.0.0.1:$port deadline=$((SECONDS + ${SMOKE_TIMEOUT:-240})) attempt
    for attempt in 1 2 3; do
        step "start: the image's entrypoint as its user, port $port"
        # What `docker run -e PORT=$port IMAGE` does: the entrypoint with no arguments serves
        # the Bento; buildah run takes the user from the image.
        buildah run --network host --env PORT="$port" "$ctr" -- \
            "$BENTO_PATH/env/docker/entrypoint.sh" >"$log" 2>&1 &
        pid=$!
        until "$PYTHON" -c 'import sys, urllib.request as u; u.urlopen(sys.argv[1], timeout=2)' \
            "$url/readyz" 2>/dev/null; do
            running "$pid" || break
            ((SECONDS < deadline)) || { tail -30 "$log" >&2; die "$url/readyz not ready in time"; }
            sleep 1
        done
        running "$pid" && break
        wait "$pid" 2>/dev/null || true
        pid=
        if ((attempt < 3)) && grep -q "$SEAL_BUSY" "$log"; then
            step "buildah could not seal its memfd copy (EBUSY, transient): start again"
            continue
        fi
        tail -30 "$log" >&2
        die "the container exited"
    done
    step "ready: $url/readyz"
    local uids
    uids=$(ps -o uid= -p "$(container_pids | paste -sd,)" | tr -d ' ' | sort -u | paste -sd,)
    [[ $uids == "0,$(buildah_run "$ctr" -- id -u)" ]] ||
        die "the container's processes run as uids $uids (0 is buildah), not as the image's user"

    recommend "$url" "$model" || { tail -30 "$log" >&2; die "POST /recommend: wrong or no answer"; }
    smoke_cleanup
    trap - EXIT
    step "smoke test passed: $image"
}

# buildah run of a short command, run again when buildah could not seal its copy (SEAL_BUSY).
buildah_run() {
    local out attempt
    for attempt in 1 2 3; do
        out=$(buildah run "$@" 2>&1) && { echo "$out"; return; }
        [[ $out == *"$SEAL_BUSY"* ]] || break
    done
    echo "$out" >&2
    return 1
}

running() { local state; state=$(ps -o stat= -p "$1") && [[ $state != Z* ]]; }

# `buildah run` and everything it started (chroot isolation has no PID namespace, and BentoML
# starts its workers in sessions of their own).
container_pids() {
    local parent=${1:-$pid} child
    echo "$parent"
    for child in $(ps -o pid= --ppid "$parent"); do container_pids "$child"; done
}

# Stop the container's processes (TERM, then KILL after 20 s), then remove the container.
smoke_cleanup() {
    if [[ -n ${pid:-} ]]; then
        local pids
        mapfile -t pids < <(container_pids | grep -vx "$pid")  # buildah run ends after them
        kill -TERM "${pids[@]}" 2>/dev/null || true
        for _ in $(seq 40); do kill -0 "${pids[@]}" 2>/dev/null || break; sleep 0.5; done
        kill -KILL "${pids[@]}" "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
        pid=
    fi
    step "remove the container"
    buildah rm "$ctr" >/dev/null 2>&1 || true
    rm -f "$log"
}

command=${1:-}
shift || true
case $command in
    build) setup; build "$@" ;;
    smoke) setup; smoke "$@" ;;
    base) setup; base "$@" ;;
    buildah) setup; exec buildah "$@" ;;
    *) die "usage: $0 build [BENTO_TAG] | smoke [IMAGE] | base [--rebuild] | buildah ARGS..." ;;
esac
