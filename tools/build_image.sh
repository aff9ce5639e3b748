#!/usr/bin/env bash
# Build the cvmigrate container image with podman on this machine, then run it.
#
#   tools/build_image.sh            # build localhost/cvmigrate:<version> (+ :latest) and smoke-test it
#
# Works without a Docker engine and without any container registry:
#   * BASE: if the official python:3.11-slim cannot be pulled (no registry
#     reachable), a local base is made with debootstrap (Debian bookworm,
#     minbase + python3 + python3-venv + ca-certificates; python3 is 3.11) and
#     `podman import`ed as localhost/cvmigrate-base:bookworm-<key>.  Its root-fs
#     tarball is cached in $CVMIGRATE_CACHE, and the imported image stays in
#     podman's storage, so later runs skip debootstrap altogether.
#   * build: `podman build --isolation=chroot` (no runtime, cgroups or network
#     namespace needed for RUN steps); the host's CA bundle is handed to pip as
#     a build secret, so pip works behind a TLS-intercepting proxy.
#   * run: where podman's default runtime (crun) cannot start a container
#     (hybrid cgroup v1/v2 hosts), runc is used; the container gets the
#     caller's own nofile/nproc limits instead of podman's 1048576 default,
#     which root without CAP_SYS_RESOURCE may not set.
#   * storage: podman's default (overlay) if it works, else vfs in a separate
#     graph root under $CVMIGRATE_CACHE, through a storage.conf written there
#     (never in /etc).
#
# Needs root and the Debian packages: podman runc debootstrap (podman pulls in
# buildah, conmon, crun, fuse-overlayfs, uidmap, slirp4netns, netavark,
# golang-github-containers-common).  --install-deps installs them with apt-get.
#
# Environment (all optional):
#   IMAGE            image name            (default localhost/cvmigrate:<version>, also tagged :latest)
#   BASE             base image to use, skipping the pull/debootstrap logic
#   CVMIGRATE_LOCAL_BASE=1   do not even try to pull python:3.11-slim
#   CVMIGRATE_CACHE  cache folder          (default ${XDG_CACHE_HOME:-~/.cache}/cvmigrate/image)
#   CVMIGRATE_STORAGE_DRIVER=vfs   use vfs even where podman's default storage works
#   DEBIAN_MIRROR    debootstrap mirror    (default http://deb.debian.org/debian)
#   CA_BUNDLE        CA bundle for pip in the build (default $PIP_CERT or /etc/ssl/certs/ca-certificates.crt)
#   PULL_TIMEOUT     seconds to try pulling python:3.11-slim (default 60)
#
# Exit codes: 0 built, `IMAGE --version` printed the version and every
# subcommand's module imports in the image; 3 built and --version works, but
# some subcommand's module does not import; 77 this machine cannot build or run
# containers (missing tool, not root, no working runtime: the message says
# which); anything else: the build or the smoke test failed.
set -euo pipefail

SKIP=77
log() { printf '[build_image] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }
skip() { log "CANNOT RUN HERE: $*"; exit "$SKIP"; }

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
APT_PACKAGES=(podman runc debootstrap)

if [[ ${1:-} == --install-deps ]]; then
    [[ $(id -u) -eq 0 ]] || skip "--install-deps needs root"
    DEBIAN_FRONTEND=noninteractive apt-get install -y "${APT_PACKAGES[@]}"
    shift
fi
[[ $# -eq 0 ]] || die "usage: $0 [--install-deps]"

# ---------------------------------------------------------------- checks
[[ $(id -u) -eq 0 ]] || skip "needs root (podman build --isolation=chroot and debootstrap run as root here)"
command -v podman >/dev/null || skip "podman is not installed (apt-get install ${APT_PACKAGES[*]})"

CACHE=${CVMIGRATE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/cvmigrate/image}
mkdir -p "$CACHE"
# One build at a time per cache (a test and a hand-run build may overlap).
exec 9>"$CACHE/lock"
flock 9

# Storage: overlay (podman's default) where it works, else vfs in its own graph
# root (one graph root cannot hold two drivers).
if [[ ${CVMIGRATE_STORAGE_DRIVER:-} == vfs ]] || ! podman info >/dev/null 2>"$CACHE/podman-info.err"; then
    [[ ${CVMIGRATE_STORAGE_DRIVER:-} == vfs ]] ||
        log "podman's default storage does not work here ($(tail -n1 "$CACHE/podman-info.err")); using vfs"
    mkdir -p "$CACHE/storage-vfs" "$CACHE/run-vfs"
    cat >"$CACHE/storage-vfs.conf" <<EOF
[storage]
driver = "vfs"
graphroot = "$CACHE/storage-vfs"
runroot = "$CACHE/run-vfs"
EOF
    export CONTAINERS_STORAGE_CONF="$CACHE/storage-vfs.conf"
    podman info >/dev/null || skip "podman does not work here, not even with the vfs storage driver"
fi
log "podman $(podman version --format '{{.Client.Version}}'), storage driver $(podman info --format '{{.Store.GraphDriverName}}')"

VERSION=$(sed -n 's/^version *= *"\(.*\)"/\1/p' "$ROOT/pyproject.toml" | head -n1)
[[ -n $VERSION ]] || die "no version in $ROOT/pyproject.toml"
IMAGE=${IMAGE:-localhost/cvmigrate:$VERSION}
REVISION=$(git -C "$ROOT" rev-parse --verify --quiet HEAD 2>/dev/null || echo unknown)
CREATED=$(git -C "$ROOT" log -1 --format=%cI 2>/dev/null || true)
CREATED=${CREATED:-$(date -u +%Y-%m-%dT%H:%M:%SZ)}

# ---------------------------------------------------------------- base image
OFFICIAL_BASE=docker.io/library/python:3.11-slim
# The cache key: change the package list and a new base (tarball and image) is made.
BASE_PACKAGES=python3,python3-venv,ca-certificates
BASE_KEY=$(printf %s "$BASE_PACKAGES" | md5sum | cut -c1-8)
LOCAL_BASE=localhost/cvmigrate-base:bookworm-$BASE_KEY
BASE_TAR="$CACHE/base-bookworm-minbase-$BASE_KEY.tar"

DEBOOTSTRAP_WORK=
cleanup_debootstrap() {
    [[ -n $DEBOOTSTRAP_WORK && -d $DEBOOTSTRAP_WORK ]] || return 0
    local m
    for m in proc sys dev/pts dev; do umount -l "$DEBOOTSTRAP_WORK/rootfs/$m" 2>/dev/null || true; done
    rm -rf --one-file-system "$DEBOOTSTRAP_WORK"
}

make_local_base() {
    if podman image exists "$LOCAL_BASE"; then
        log "local base $LOCAL_BASE already in podman's storage"
        return
    fi
    if [[ ! -f $BASE_TAR ]]; then
        command -v debootstrap >/dev/null || skip "debootstrap is not installed (apt-get install ${APT_PACKAGES[*]})"
        local work rootfs
        work=$(mktemp -d "$CACHE/debootstrap.XXXXXX")
        rootfs="$work/rootfs"
        # debootstrap mounts proc/sys in the target; an interrupted run must
        # not leave them mounted (nor rm -r through them).
        DEBOOTSTRAP_WORK=$work
        trap cleanup_debootstrap EXIT
        log "debootstrap bookworm (minbase + $BASE_PACKAGES) from ${DEBIAN_MIRROR:-http://deb.debian.org/debian}; log in $work/debootstrap.log"
        if ! debootstrap --variant=minbase --include="$BASE_PACKAGES" bookworm "$rootfs" \
                "${DEBIAN_MIRROR:-http://deb.debian.org/debian}" >"$work/debootstrap.log" 2>&1; then
            tail -n 20 "$work/debootstrap.log" >&2
            die "debootstrap failed"
        fi
        # Slim it: no .debs, apt lists, docs, man pages or translations (the
        # image never runs apt; `apt-get update` brings the lists back).
        rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/cache/apt/*.bin \
               "$rootfs"/var/lib/apt/lists/* "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/* \
               "$rootfs"/usr/share/info/* "$rootfs"/usr/share/locale/* "$rootfs"/var/log/*.log \
               "$rootfs"/var/log/apt/* "$rootfs"/tmp/*
        tar -C "$rootfs" --numeric-owner --xattrs -cf "$BASE_TAR.part" .
        mv "$BASE_TAR.part" "$BASE_TAR"
        cleanup_debootstrap
        trap - EXIT
        log "cached base tarball $BASE_TAR ($(du -h "$BASE_TAR" | cut -f1))"
    else
        log "using cached base tarball $BASE_TAR"
    fi
    podman import --quiet \
        --change 'ENV LANG=C.UTF-8' --change 'CMD ["python3"]' \
        --message "debootstrap bookworm minbase + $BASE_PACKAGES" \
        "$BASE_TAR" "$LOCAL_BASE" >/dev/null
    log "imported $LOCAL_BASE"
}

if [[ -n ${BASE:-} ]]; then
    log "base: $BASE (from the environment)"
elif [[ ${CVMIGRATE_LOCAL_BASE:-0} != 1 ]] && { podman image exists "$OFFICIAL_BASE" ||
        timeout "${PULL_TIMEOUT:-60}" podman pull --quiet "$OFFICIAL_BASE" >/dev/null 2>"$CACHE/pull.err"; }; then
    BASE=$OFFICIAL_BASE
    log "base: $BASE"
else
    [[ ${CVMIGRATE_LOCAL_BASE:-0} == 1 ]] || log "cannot pull $OFFICIAL_BASE ($(tail -n1 "$CACHE/pull.err" 2>/dev/null | cut -c1-160)); making a local base"
    make_local_base
    BASE=$LOCAL_BASE
fi

# ---------------------------------------------------------------- build
build_opts=(--isolation=chroot --layers
    --build-arg "BASE=$BASE" --build-arg "VERSION=$VERSION"
    --build-arg "REVISION=$REVISION" --build-arg "CREATED=$CREATED"
    --tag "$IMAGE" --file "$ROOT/Dockerfile")
[[ $IMAGE == *:"$VERSION" ]] && build_opts+=(--tag "${IMAGE%:*}:latest")
CA_BUNDLE=${CA_BUNDLE:-${PIP_CERT:-/etc/ssl/certs/ca-certificates.crt}}
[[ -s $CA_BUNDLE ]] && build_opts+=(--secret "id=ca_bundle,src=$CA_BUNDLE")

log "podman build ${build_opts[*]} $ROOT"
start=$(date +%s)
podman build "${build_opts[@]}" "$ROOT"
log "built $IMAGE in $(($(date +%s) - start)) s; size $(podman image inspect --format '{{.Size}}' "$IMAGE" | awk '{printf "%.0f MB", $1/1e6}')"

# ---------------------------------------------------------------- run
# Give the container the caller's own limits (podman's default, 1048576, needs
# CAP_SYS_RESOURCE to set; podman itself runs with at most 32768 processes).
nproc_hard=$(ulimit -Hu); [[ $nproc_hard == unlimited || $nproc_hard -gt 32768 ]] && nproc_hard=32768
# --network none: the smoke test needs no network, so no netavark/iptables setup.
run_opts=(--rm --network none --ulimit "nofile=$(ulimit -Sn):$(ulimit -Hn)" --ulimit "nproc=$nproc_hard:$nproc_hard")
if ! podman run "${run_opts[@]}" --entrypoint true "$IMAGE" 2>"$CACHE/run.err"; then
    log "podman's default runtime cannot run a container here: $(tail -n1 "$CACHE/run.err")"
    command -v runc >/dev/null || skip "no OCI runtime works here; install runc (apt-get install runc)"
    run_opts=(--runtime runc "${run_opts[@]}")
    podman run "${run_opts[@]}" --entrypoint true "$IMAGE" ||
        skip "neither crun nor runc can run a container here"
    log "using runc"
fi
log "podman run ${run_opts[*]} $IMAGE --version"
out=$(podman run "${run_opts[@]}" "$IMAGE" --version)
printf '%s\n' "$out"
[[ $out == "cvmigrate $VERSION" ]] || die "expected 'cvmigrate $VERSION' from the image, got: $out"
podman run "${run_opts[@]}" "$IMAGE" >/dev/null || die "the default CMD (--help) failed"
# Every subcommand's module, and the controller extra, must import in the image.
if ! podman run "${run_opts[@]}" --entrypoint python3 "$IMAGE" -c '
import importlib, sys
from cvmigrate.cli import SUBCOMMANDS, load_subcommand
import tencentcloud.common, tencentcloud.cvm, tencentcloud.msp, rich, cryptography, paramiko
bad = []
for name, (module, _) in SUBCOMMANDS.items():
    try:
        load_subcommand(name)
    except (ImportError, AttributeError) as exc:
        bad.append(f"{name} ({module}): {exc}")
if bad:
    sys.exit("subcommands that cannot import in the image: " + "; ".join(bad))
print("subcommands import:", ", ".join(SUBCOMMANDS))'; then
    log "ERROR: $IMAGE runs --version but not every subcommand (a module missing from the wheel?"
    log "       see [tool.setuptools] packages in pyproject.toml)"
    exit 3
fi
log "OK: $IMAGE"
