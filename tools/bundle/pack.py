"""Append a directory tree to the launcher stub: the one-file executable.

The format is the one tools/bundle/launcher.c reads (see its header): one zlib
stream of entries after the stub, then a fixed trailer with the bundle id, the
payload's offset and length and a magic.  The id names the cache directory
the launcher unpacks into, so it carries the version and a hash of the
payload: a new build never reuses an older build's tree.

usage: python pack.py STUB TREE VERSION OUT
"""
from __future__ import annotations

import hashlib
import os
import stat
import struct
import sys
import zlib
from pathlib import Path

MAGIC = b"CVMBNDL1"
ID_LEN = 48


def _entries(tree: Path):
    """(type, mode, relative path, data) for every entry under ``tree``, parents first, sorted."""
    for dirpath, dirnames, filenames in os.walk(tree):
        dirnames.sort()
        base = Path(dirpath)
        for name in sorted(dirnames + filenames):
            path = base / name
            rel = path.relative_to(tree).as_posix().encode()
            st = path.lstat()
            if stat.S_ISLNK(st.st_mode):
                yield b"l", 0o777, rel, os.readlink(path).encode()
            elif stat.S_ISDIR(st.st_mode):
                yield b"d", 0o700, rel, b""
            elif stat.S_ISREG(st.st_mode):
                yield b"f", 0o755 if st.st_mode & 0o111 else 0o644, rel, path.read_bytes()
            else:
                raise SystemExit(f"pack: {path} is neither file, directory nor symlink")


def payload(tree: Path) -> bytes:
    comp = zlib.compressobj(9)
    out = []
    for kind, mode, rel, data in _entries(tree):
        if b".." in rel:
            raise SystemExit(f"pack: refusing path with '..': {rel!r}")
        out.append(comp.compress(kind + struct.pack("<II", mode, len(rel)) + rel + struct.pack("<Q", len(data))))
        out.append(comp.compress(data))
    out.append(comp.compress(b"\0"))
    out.append(comp.flush())
    return b"".join(out)


def main(argv: list[str]) -> int:
    stub_path, tree, version, out = Path(argv[0]), Path(argv[1]), argv[2], Path(argv[3])
    stub = stub_path.read_bytes()
    data = payload(tree)
    bundle_id = f"{version}-{hashlib.sha256(data).hexdigest()[:24]}".encode()
    if len(bundle_id) >= ID_LEN:
        raise SystemExit(f"pack: bundle id too long: {bundle_id!r}")
    trailer = bundle_id.ljust(ID_LEN, b"\0") + struct.pack("<QQ", len(stub), len(data)) + MAGIC
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_bytes(stub + data + trailer)
    tmp.chmod(0o755)
    tmp.replace(out)
    print(bundle_id.decode())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
