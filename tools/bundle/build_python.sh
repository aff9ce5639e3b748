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
# pointer casts would trap.
cat >"$WORK/bin/cc" <<EOS
#!/bin/sh
exec "$ZIG" cc -target $TARGET -fno-sanitize=all "\$@"
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

# Each library is skipped when its archive is already in WORK (a re-run after a failure).
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
    cross=(--host="$HOST" --build="$BUILD" --with-build-python="$(command -v python3.11)"
           ac_cv_file__dev_ptmx=yes ac_cv_file__dev_ptc=no ac_cv_buggy_getaddrinfo=no)
fi
cd "$d"
./configure --prefix="$PREFIX" --without-ensurepip --disable-test-modules --with-lto=no \
    "${cross[@]}" \
    ZLIB_CFLAGS="-I$DEPS/include" ZLIB_LIBS="$DEPS/lib/libz.a" \
    LIBLZMA_CFLAGS="-I$DEPS/include" LIBLZMA_LIBS="$DEPS/lib/liblzma.a" \
    LIBFFI_CFLAGS="-I$DEPS/include" LIBFFI_LIBS="$DEPS/lib/libffi.a" \
    LIBSQLITE3_CFLAGS="-I$DEPS/include" LIBSQLITE3_LIBS="$DEPS/lib/libsqlite3.a -lm" \
    CFLAGS="-O2" >"$WORK/configure.log" 2>&1 || { tail -40 "$WORK/configure.log"; exit 1; }
make -j"$JOBS" >"$WORK/make.log" 2>&1 || { tail -60 "$WORK/make.log"; exit 1; }
make install >"$WORK/install.log" 2>&1 || { tail -40 "$WORK/install.log"; exit 1; }
