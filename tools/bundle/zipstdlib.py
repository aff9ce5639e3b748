"""Move the pure-Python standard library into ``lib/python311.zip`` (run with the bundle's Python 3.11).

Why: the launcher's first run creates every file of the tree, and creating
files is what costs (about 0.4 ms each on a busy disk): the stdlib is ~1,200
of them.  CPython puts ``<prefix>/lib/python311.zip`` first on ``sys.path``
by itself, and zipimport loads byte-code from it, so one file replaces them.
Each module goes in as source plus a legacy-layout ``.pyc`` compiled with
unchecked-hash invalidation (zipimport does not read ``__pycache__``; the
source stays for tracebacks).  The archive is stored uncompressed: the
launcher's payload is compressed as a whole.

``os.py`` stays on disk as well: it is the landmark CPython's getpath uses to
find its prefix.  ``lib-dynload`` (extension modules) and ``site-packages``
stay on disk.

usage: python3.11 zipstdlib.py STAGE/lib/python3.11
"""
from __future__ import annotations

import importlib.util
import os
import py_compile
import sys
import zipfile
from importlib import _bootstrap_external  # type: ignore[attr-defined]
from pathlib import Path

KEEP_DIRS = {"site-packages", "lib-dynload", "__pycache__"}


def _entry(name: str) -> zipfile.ZipInfo:
    """A member with a fixed date: the same inputs give the same archive (and the same bundle id)."""
    info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
    info.external_attr = 0o644 << 16
    return info


def main(argv: list[str]) -> int:
    lib = Path(argv[0])
    if sys.version_info[:2] != (3, 11):
        raise SystemExit("zipstdlib.py must run with Python 3.11 (the byte-code goes into the bundle)")
    zpath = lib.parent / "python311.zip"
    moved: list[Path] = []
    with zipfile.ZipFile(zpath, "w", zipfile.ZIP_STORED) as z:
        for dirpath, dirnames, filenames in os.walk(lib):
            rel_dir = Path(dirpath).relative_to(lib)
            if rel_dir == Path("."):
                dirnames[:] = sorted(d for d in dirnames if d not in KEEP_DIRS)
            else:
                dirnames[:] = sorted(d for d in dirnames if d != "__pycache__")
            for name in sorted(filenames):
                src = Path(dirpath) / name
                arc = (rel_dir / name).as_posix()
                z.writestr(_entry(arc), src.read_bytes())
                if name.endswith(".py"):
                    source = src.read_bytes()
                    code = compile(source, arc, "exec", dont_inherit=True, optimize=0)
                    data = _bootstrap_external._code_to_hash_pyc(code, importlib.util.source_hash(source),
                                                                 checked=False)
                    z.writestr(_entry(arc + "c"), bytes(data))
                moved.append(src)
    for src in moved:
        if src != lib / "os.py":
            src.unlink()
    for dirpath, _dirnames, _filenames in os.walk(lib, topdown=False):
        p = Path(dirpath)
        if p != lib and not any(p.iterdir()):
            p.rmdir()
    py_compile.compile(str(lib / "os.py"), invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH)
    print(f"{len(moved)} files into {zpath.name} ({zpath.stat().st_size // 1024} KiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
