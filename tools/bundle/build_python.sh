#!/usr/bin/env bash
# Builds a relocatable CPython for one Linux architecture with zig as the C
# toolchain, linked against glibc 2.17 symbols (the manylinux2014 floor), into
# PREFIX.  Called by tools/build_bundle.sh, which caches PREFIX by the hash of
# this script, the source archives and the zig version.
#
# Why this shape (after python-build-standalone): the interpreter is linked
# statically with libpython (no --enable-shared), so bin/python3 finds its
# stdlib relative to itself; the few C libraries the project's modules need
# (zlib for gzip, liblzma for the initramfs fix-up, libffi for ctypes, sqlite3
# for the journal) are built as static PIC archives and linked into the
# extension modules, so the only shared objects they need are glibc's.  No
# OpenSSL: gRPC carries its own TLS (BoringSSL) and hashlib falls back to its
# built-in SHA-2/BLAKE2.
#
# usage: build_python.sh ARCH SRCDIR ZIG OUT WORKDIR
#   installs the interpreter into OUT/python and the static libraries into OUT/deps
set -euo pipefail
ARCH=$1 SRC=$2 ZIG=$3 OUT=$4 WORK=$5
TARGET="$ARCH-linux-gnu.2.17"
JOBS=${JOBS:-$(nproc)}
PREFIX="$OUT/python" DEPS="$OUT/deps"
mkdir -p "$WORK/bin" "$DEPS"

# zig wrappers: autoconf wants plain programs named CC/AR/RANLIB.
# -fno-sanitize=all: zig enables UBSan traps by default, CPython's function
# pointer casts would trap.  -Wno-date-time: zig makes __DATE__ an error
# (reproducibility); Modules/getbuildinfo.c uses it for sys.version.
cat >"$WORK/bin/cc" <<EOS
#!/bin/sh
exec "$ZIG" cc -target $TARGET -fno-sanitize=all -Wno-date-time "\$@"
EOS
printf '#!/bin/sh\nexec "%s" ar "$@"\n' "$ZIG" >"$WORK/bin/ar"
printf '#!/bin/sh\nexec "%s" ranlib "$@"\n' "$ZIG" >"$WORK/bin/ranlib"
chmod +x "$WORK/bin/"*
export CC="$WORK/bin/cc" AR="$WORK/bin/ar" RANLIB="$WORK/bin/ranlib"
export CFLAGS="-O2 -fPIC" LDFLAGS=""
BUILD=x86_64-linux-gnu
HOST="$ARCH-linux-gnu"

unpack() {  # unpack ARCHIVE-GLOB into $WORK/src-NAME, echo the directory
    local name=$1 archive
    archive=$(ls "$SRC"/$2 | head -n1)
    rm -rf "$WORK/src-$name"; mkdir -p "$WORK/src-$name"
    tar xf "$archive" -C "$WORK/src-$name" --strip-components=1
    echo "$WORK/src-$name"
}

# Each library is skipped when its archive is already in OUT/deps (a re-run after a failure).
# zlib
[ -f "$DEPS/lib/libz.a" ] || { d=$(unpack zlib 'zlib_*.orig.tar.*')
(cd "$d" && ./configure --static --prefix="$DEPS" >/dev/null && make -j"$JOBS" libz.a >/dev/null && make install >/dev/null) >"$WORK/zlib.log" 2>&1; }

# liblzma (only the library)
[ -f "$DEPS/lib/liblzma.a" ] || { d=$(unpack xz 'xz-utils_*.orig.tar.xz')
(cd "$d" && ./configure --host="$HOST" --build="$BUILD" --prefix="$DEPS" --disable-shared --enable-static \
    --disable-xz --disable-xzdec --disable-lzmadec --disable-lzmainfo --disable-scripts --disable-doc --disable-nls \
    --disable-threads && make -j"$JOBS" && make install) >"$WORK/xz.log" 2>&1 || { tail -30 "$WORK/xz.log"; exit 1; }; }

# libffi
[ -f "$DEPS/lib/libffi.a" ] || { d=$(unpack ffi 'libffi_*.orig.tar.gz')
(cd "$d" && ./configure --host="$HOST" --build="$BUILD" --prefix="$DEPS" --disable-shared --enable-static \
    --with-pic --disable-docs --disable-multi-os-directory --disable-exec-static-tramp \
    && make -j"$JOBS" && make install) >"$WORK/ffi.log" 2>&1 || { tail -30 "$WORK/ffi.log"; exit 1; }; }

# sqlite3: the amalgamation is generated with the host's cc and tclsh, then compiled with zig.
[ -f "$DEPS/lib/libsqlite3.a" ] || {
d=$(unpack sqlite 'sqlite3_*.orig.tar.xz')
(cd "$d" && CC=cc CFLAGS=-O1 AR=ar RANLIB=ranlib ./configure && make sqlite3.c) >"$WORK/sqlite.log" 2>&1 || { tail -30 "$WORK/sqlite.log"; exit 1; }
"$CC" -O2 -fPIC -DSQLITE_THREADSAFE=1 -DSQLITE_OMIT_LOAD_EXTENSION -DSQLITE_ENABLE_FTS5 -c "$d/sqlite3.c" -o "$d/sqlite3.o"
mkdir -p "$DEPS/include" "$DEPS/lib"
cp "$d/sqlite3.h" "$DEPS/include/"; rm -f "$DEPS/lib/libsqlite3.a"; "$AR" rcs "$DEPS/lib/libsqlite3.a" "$d/sqlite3.o"
}

# CPython
d=$(unpack python 'python3.11_*.orig.tar.*')
cross=()
if [ "$ARCH" != "$(uname -m)" ]; then
    # Values configure cannot probe when it cannot run target programs.
    # (GNU readelf reads any architecture's ELF files; configure wants it by full path.)
    cross=(--host="$HOST" --build="$BUILD" --with-build-python="$(command -v python3.11)" READELF="$(command -v readelf)"
           ac_cv_file__dev_ptmx=yes ac_cv_file__dev_ptc=no ac_cv_buggy_getaddrinfo=no)
fi
cd "$d"
# CPPFLAGS/LDFLAGS: setup.py finds ffi.h and libffi.a only through them.
# setup.py (which builds the shared extension modules) adds the build host's
# /usr/include/<multiarch> and /usr/local: glibc 2.36 headers would override
# zig's 2.17 ones.  Only zig's sysroot and our static libraries may be seen.
python3 - setup.py <<'EOS'
import sys
p = sys.argv[1]
s = open(p).read()
for old, new in [
    ("    def add_multiarch_paths(self):\n",
     "    def add_multiarch_paths(self):\n        return  # cvmigrate bundle: never the build host's headers\n"),
    ("            add_dir_to_list(self.compiler.library_dirs, '/usr/local/lib')\n"
     "            add_dir_to_list(self.compiler.include_dirs, '/usr/local/include')\n", "            pass\n"),
]:
    assert s.count(old) == 1, old
    s = s.replace(old, new)
open(p, "w").write(s)
EOS
./configure --prefix="$PREFIX" --without-ensurepip --disable-test-modules --with-lto=no \
    "${cross[@]}" \
    ZLIB_CFLAGS="-I$DEPS/include" ZLIB_LIBS="-L$DEPS/lib -lz" \
    LIBLZMA_CFLAGS="-I$DEPS/include" LIBLZMA_LIBS="-L$DEPS/lib -llzma" \
    LIBFFI_CFLAGS="-I$DEPS/include" LIBFFI_LIBS="-L$DEPS/lib -lffi" \
    LIBSQLITE3_CFLAGS="-I$DEPS/include" LIBSQLITE3_LIBS="-L$DEPS/lib -lsqlite3 -lpthread -lm" \
    CFLAGS="-O2" CPPFLAGS="-I$DEPS/include" LDFLAGS="-L$DEPS/lib" >"$WORK/configure.log" 2>&1 || { tail -40 "$WORK/configure.log"; exit 1; }
make -j"$JOBS" >"$WORK/make.log" 2>&1 || { tail -60 "$WORK/make.log"; exit 1; }
make install >"$WORK/install.log" 2>&1 || { tail -40 "$WORK/install.log"; exit 1; }
# The modules the agent and receiver need must have been built (configure skips what it cannot link).
for m in _sqlite3 _ctypes _lzma zlib; do
    ls "$PREFIX"/lib/python3.11/lib-dynload/$m.cpython-311-*.so >/dev/null 2>&1 \
        || { echo "build_python.sh: module $m was not built; see $WORK/configure.log" >&2; exit 1; }
done
