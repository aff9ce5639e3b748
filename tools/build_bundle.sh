#!/usr/bin/env bash
# Build the one-file cvmigrate executable for source servers and rescue systems:
#
#   tools/build_bundle.sh [--arch x86_64|aarch64]   # writes dist/cvmigrate-linux-<arch> (+ .sha256)
#
# The file carries its own CPython 3.11 (built here from Debian's python3.11
# source package with zig as the C compiler, linked against glibc 2.17
# symbols), the project's code, and the manylinux2014 wheels of grpcio,
# protobuf, xxhash and zstandard.  It runs on any Linux with glibc >= 2.17 and
# kernel >= 3.10 (CentOS 7 and newer) without Python.  See README "The
# executable for source servers" for why this route.
#
# Inputs come only from the package registries: Debian source packages
# (python3.11 sqlite3 zlib libffi xz-utils, from a deb-src entry for the
# configured mirror that this script adds), ziglang and the wheels from PyPI.
# The interpreter build (the slow part, ~10 min on 2 cores) is cached in
# $CVMIGRATE_BUNDLE_CACHE (default /var/cache/cvmigrate/bundle) under the hash
# of its inputs; a rebuild with unchanged inputs only re-packs (~30 s).
#
# Needs: root (apt-get), python3.11 on PATH for cross builds, the Debian
# packages make, gcc, tcl (sqlite's amalgamation), dpkg-dev (apt-get source).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
ARCH=$(uname -m)
while [ $# -gt 0 ]; do
    case $1 in
        --arch) ARCH=$2; shift 2 ;;
        --arch=*) ARCH=${1#--arch=}; shift ;;
        -h|--help) sed -n '2,21p' "$0"; exit 0 ;;
        *) echo "build_bundle.sh: unknown argument $1 (use --arch x86_64|aarch64)" >&2; exit 2 ;;
    esac
done
case $ARCH in x86_64|aarch64) ;; *) echo "build_bundle.sh: --arch must be x86_64 or aarch64, not $ARCH" >&2; exit 2 ;; esac

CACHE=${CVMIGRATE_BUNDLE_CACHE:-/var/cache/cvmigrate/bundle}
HOSTPY=${PYTHON:-python3}
ZIG_VERSION=0.14.1
SRC_PACKAGES="python3.11 sqlite3 zlib libffi xz-utils"
mkdir -p "$CACHE/src" "$ROOT/dist"
log() { echo "build_bundle: $*" >&2; }

# --- 1. sources from Debian (deb-src for the configured mirror) ---------------
if ! ls "$CACHE"/src/python3.11_*.orig.tar.* "$CACHE"/src/sqlite3_*.orig.tar.xz "$CACHE"/src/zlib_*.orig.tar.* \
        "$CACHE"/src/libffi_*.orig.tar.* "$CACHE"/src/xz-utils_*.orig.tar.xz >/dev/null 2>&1; then
    if ! grep -rqs '^\(Types: \)\?deb-src' /etc/apt/sources.list /etc/apt/sources.list.d/; then
        mirror=$(grep -rhs '^URIs:' /etc/apt/sources.list.d/*.sources | awk '/debian\/?$/ {print $2; exit}')
        [ -n "$mirror" ] || mirror=$(awk '$1=="deb" && $2 ~ /debian\/?$/ {print $2; exit}' /etc/apt/sources.list 2>/dev/null)
        mirror=${mirror:-http://deb.debian.org/debian}
        log "adding a deb-src entry for $mirror (bookworm)"
        cat >/etc/apt/sources.list.d/cvmigrate-deb-src.sources <<EOF
Types: deb-src
URIs: $mirror
Suites: bookworm
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
        apt-get update -qq
    fi
    log "downloading Debian sources: $SRC_PACKAGES"
    (cd "$CACHE/src" && apt-get source --download-only -qq $SRC_PACKAGES >/dev/null 2>&1) \
        || { echo "build_bundle.sh: apt-get source $SRC_PACKAGES failed (is dpkg-dev installed and the mirror reachable?)" >&2; exit 1; }
fi

# --- 2. zig from PyPI ----------------------------------------------------------
TOOLS="$CACHE/toolvenv-zig-$ZIG_VERSION"
if [ ! -x "$TOOLS/bin/python" ]; then
    "$HOSTPY" -m venv "$TOOLS.tmp.$$" && "$TOOLS.tmp.$$/bin/pip" install -q "ziglang==$ZIG_VERSION"
    mv -T "$TOOLS.tmp.$$" "$TOOLS" 2>/dev/null || rm -rf "$TOOLS.tmp.$$"
fi
ZIG=$("$TOOLS/bin/python" -c 'import os, ziglang; print(os.path.join(os.path.dirname(ziglang.__file__), "zig"))')
export ZIG_GLOBAL_CACHE_DIR="$CACHE/zig-cache" ZIG_LOCAL_CACHE_DIR="$CACHE/zig-cache"

# --- 3. the interpreter, cached by the hash of its inputs ------------------------
KEY=$( { echo "$ARCH zig-$ZIG_VERSION"; sha256sum <"$ROOT/tools/bundle/build_python.sh";
         cd "$CACHE/src" && sha256sum $(ls *.orig.tar.* | grep -E '^(python3\.11|sqlite3|zlib|libffi|xz-utils)_' | grep -v www); } \
       | sha256sum | cut -c1-16)
BUILT="$CACHE/python-$ARCH-$KEY"
if [ ! -x "$BUILT/python/bin/python3.11" ]; then
    log "building CPython for $ARCH (cache miss: $BUILT); this takes a while"
    rm -rf "$BUILT.work"     # $BUILT.partial/deps survives a failed run: its libraries are not rebuilt
    nice -n 10 "$ROOT/tools/bundle/build_python.sh" "$ARCH" "$CACHE/src" "$ZIG" "$BUILT.partial" "$BUILT.work"
    mv -T "$BUILT.partial" "$BUILT"
    rm -rf "$BUILT.work"
else
    log "using cached interpreter $BUILT"
fi

# --- 4. stage the tree: interpreter (pruned), wheels, project -------------------
WORK=$(mktemp -d "${TMPDIR:-/tmp}/cvmigrate-bundle.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
STAGE="$WORK/tree"
mkdir -p "$STAGE/bin"
cp -a "$BUILT/python/lib" "$STAGE/"
cp -a "$BUILT/python/bin/python3.11" "$STAGE/bin/"
ln -s python3.11 "$STAGE/bin/python3"
LIB="$STAGE/lib/python3.11"
# What the agent and receiver never import: tests, GUI, the build system, docs.
rm -rf "$STAGE/lib/pkgconfig" "$STAGE"/lib/libpython3.11*.a "$LIB"/config-3.11-* "$LIB"/{test,idlelib,tkinter,turtledemo,turtle.py,ensurepip,lib2to3,pydoc_data,distutils/tests}
find "$STAGE" -name __pycache__ -type d -prune -exec rm -rf {} +
find "$LIB" -type d -name 'tests' -path '*/unittest/*' -prune -exec rm -rf {} +

SITE="$LIB/site-packages"
DEPS=$("$HOSTPY" - "$ROOT/pyproject.toml" <<'EOF'
import sys, tomllib
print(" ".join(tomllib.load(open(sys.argv[1], "rb"))["project"]["dependencies"]))
EOF
)
log "installing manylinux2014_$ARCH wheels: $DEPS"
# shellcheck disable=SC2086
"$HOSTPY" -m pip install -q --disable-pip-version-check --no-compile --target "$SITE" \
    --platform "manylinux2014_$ARCH" --python-version 3.11 --implementation cp --abi cp311 --only-binary=:all: $DEPS
log "installing the project"
"$HOSTPY" -m pip install -q --disable-pip-version-check --no-compile --no-deps --target "$SITE" "$ROOT"
rm -rf "$SITE/bin"
VERSION=$("$HOSTPY" -c 'import re,sys; print(re.search(r"__version__ = \"(.*)\"", open(sys.argv[1]).read())[1])' "$ROOT/cvmigrate/__init__.py")

# Debug sections are most of an unstripped .so; the dynamic symbols stay.
find "$STAGE" -type f \( -name '*.so' -o -name '*.so.*' -o -path '*/bin/python3.11' \) -print0 |
    while IFS= read -r -d '' f; do "$ZIG" objcopy --strip-debug "$f" "$f.stripped" && mv "$f.stripped" "$f"; done

# The pure-Python stdlib goes into lib/python311.zip (one file to create on the first run instead of
# ~1,200); the rest gets byte-code once, unchecked-hash: valid whatever the unpacked files' mtimes are.
if [ "$ARCH" = "$(uname -m)" ]; then COMPILER="$STAGE/bin/python3.11"; else COMPILER=$(command -v python3.11); fi
"$COMPILER" -I "$ROOT/tools/bundle/zipstdlib.py" "$LIB" >&2
"$COMPILER" -I -m compileall -q -j0 --invalidation-mode unchecked-hash "$SITE" >/dev/null

# --- 5. the launcher stub and the one file ------------------------------------
"$ZIG" cc -target "$ARCH-linux-gnu.2.17" -Os -s -fno-sanitize=all -Wall -o "$WORK/stub" "$ROOT/tools/bundle/launcher.c" \
    -I"$BUILT/deps/include" "$BUILT/deps/lib/libz.a"
OUT="$ROOT/dist/cvmigrate-linux-$ARCH"
ID=$("$HOSTPY" "$ROOT/tools/bundle/pack.py" "$WORK/stub" "$STAGE" "$VERSION" "$OUT")
(cd "$ROOT/dist" && sha256sum "cvmigrate-linux-$ARCH" >"cvmigrate-linux-$ARCH.sha256")
log "wrote $OUT ($(du -m "$OUT" | cut -f1) MB, id $ID)"
cat "$ROOT/dist/cvmigrate-linux-$ARCH.sha256"
