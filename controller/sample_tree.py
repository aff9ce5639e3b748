"""The demo's sample source: a small tree with every kind of entry a Linux root holds.

Why generated: the README's first command must work on a fresh machine with
no server to migrate; this tree exercises the same paths a real one does
(hard links, sparse files, xattrs, ACL-bearing attributes, devices, fifos).
"""
from __future__ import annotations

import os
import random
from pathlib import Path


def build_sample_tree(root: Path, *, files: int = 400, seed: int = 7) -> Path:
    """Create the sample tree under ``root`` (which must not exist) and return it."""
    rnd = random.Random(seed)  # noqa: S311 - reproducible sample data, not secrets
    root.mkdir(parents=True)
    etc = root / "etc"
    etc.mkdir()
    (etc / "hostname").write_text("demo-source\n")
    (etc / "fstab").write_text("UUID=1111-2222 / ext4 defaults 0 1\n")
    (etc / "shadow").write_text("root:*:19000:0:99999:7:::\n")
    os.chmod(etc / "shadow", 0o640)
    words = [b"alpha", b"bravo", b"charlie", b"delta", b"echo", b"foxtrot", b"golf", b"hotel"]
    for i in range(files):
        d = root / "srv" / f"app{i % 8}" / f"part{i % 5}"
        d.mkdir(parents=True, exist_ok=True)
        if i % 3:
            body = b" ".join(rnd.choice(words) for _ in range(rnd.randint(10, 3000)))
        else:
            body = rnd.randbytes(rnd.randint(100, 40_000))
        (d / f"file{i:04d}.dat").write_bytes(body)
    big = root / "var" / "lib" / "db"
    big.mkdir(parents=True)
    (big / "table.ibd").write_bytes(rnd.randbytes(3 << 20) + b"row " * 500_000)
    with open(big / "sparse.img", "wb") as f:
        f.truncate(256 << 20)
        f.seek(100 << 20)
        f.write(b"data inside a mostly empty disk image")
    os.link(etc / "hostname", root / "var" / "hostname.hardlink")
    os.symlink("../etc/hostname", root / "var" / "hostname.symlink")
    os.symlink("/nonexistent/target", root / "var" / "dangling")
    os.mkfifo(root / "var" / "fifo")
    bin_ = root / "usr" / "bin"
    bin_.mkdir(parents=True)
    (bin_ / "tool").write_bytes(b"\x7fELF" + rnd.randbytes(2000))
    os.chmod(bin_ / "tool", 0o4755)  # noqa: S103 - the sample shows a setuid file survives
    (root / "tmp").mkdir()
    os.chmod(root / "tmp", 0o1777)  # noqa: S103 - the sample shows a sticky /tmp survives
    try:
        os.setxattr(etc / "hostname", "user.origin", b"demo")
        os.setxattr(bin_ / "tool", "security.capability",
                    bytes.fromhex("0000000200200000000000000000000000000000"))
    except OSError:
        pass  # filesystem without xattrs: the demo still runs
    try:
        os.mknod(root / "dev-null-copy", 0o20666, os.makedev(1, 3))
    except (PermissionError, OSError):
        pass  # not root: no device nodes
    return root
