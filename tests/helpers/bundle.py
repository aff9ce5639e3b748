"""The one-file executable (tools/build_bundle.sh) and the Python-less systems it must run on.

* :func:`bundle_path` -- ``dist/cvmigrate-linux-<arch>`` (or ``$CVMIGRATE_BUNDLE``);
* :func:`elf_audit` -- every ELF file under a tree, with the glibc / libstdc++
  symbol versions it needs beyond the manylinux2014 floor (``readelf``);
* :func:`debian_rootfs` -- a Debian ``minbase`` root filesystem (bullseye, the
  oldest release the mirror serves; no python3 in it), built once with
  debootstrap and cached as a tarball keyed by suite, architecture and mirror,
  as ``tests/helpers/bootimage.py`` caches its image; :func:`unpack_rootfs`
  extracts a private copy per test;
* :func:`in_chroot` -- argv running a command inside such a root in a private
  mount namespace with its own ``/proc`` (the launcher reads
  ``/proc/self/exe``), so nothing stays mounted after the command.

Run ``python -m tests.helpers.bundle`` to warm the rootfs cache.
"""
from __future__ import annotations

import hashlib
import logging
import os
import platform
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[2]
MIRROR = os.environ.get("CVMIGRATE_DEBIAN_MIRROR", "http://deb.debian.org/debian")
DEB_ARCH = {"x86_64": "amd64", "aarch64": "arm64"}

#: manylinux2014 (PEP 599): the newest symbol versions a wheel may need.
FLOOR = {"GLIBC": (2, 17), "GLIBCXX": (3, 4, 19), "CXXABI": (1, 3, 7), "GCC": (4, 8, 0)}
#: ...and the system libraries it may link against (everything else must be in the bundle).
SYSTEM_LIBS = {
    "libc.so.6", "libm.so.6", "libdl.so.2", "librt.so.1", "libpthread.so.0", "libutil.so.1",
    "libgcc_s.so.1", "libstdc++.so.6", "libresolv.so.2",
    "ld-linux-x86-64.so.2", "ld-linux-aarch64.so.1",
}


def bundle_path(arch: str | None = None) -> Path:
    """The built executable for ``arch`` (default: this machine's)."""
    arch = arch or platform.machine()
    env = os.environ.get("CVMIGRATE_BUNDLE") if arch == platform.machine() else None
    return Path(env) if env else REPO / "dist" / f"cvmigrate-linux-{arch}"


def require_bundle(arch: str | None = None) -> Path:
    p = bundle_path(arch)
    if not p.is_file():
        raise AssertionError(f"{p} does not exist: build it with tools/build_bundle.sh"
                             f"{' --arch ' + arch if arch else ''} (CI does this before the bundle tests)")
    return p


# --------------------------------------------------------------------------- ELF audit
def is_elf(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(4) == b"\x7fELF"
    except OSError:
        return False


def _version_tuple(v: str) -> tuple[int, ...]:
    return tuple(int(x) for x in re.findall(r"\d+", v))


_SYM = re.compile(r"\sUND\s+(\S+?)@(GLIBC|GLIBCXX|CXXABI|GCC)_([0-9.]+)")
_NEEDED = re.compile(r"\(NEEDED\)\s+Shared library: \[([^\]]+)\]")


@dataclass(frozen=True)
class ElfNeeds:
    path: Path
    versions: dict[str, tuple[int, ...]]   # family -> highest version needed
    too_new: list[str]                     # "symbol@FAMILY_x.y" beyond FLOOR
    needed: list[str]                      # DT_NEEDED


def elf_needs(path: Path) -> ElfNeeds:
    """The symbol versions and libraries ``path`` needs (``readelf --dyn-syms -d -W``)."""
    out = subprocess.run(["readelf", "--dyn-syms", "-d", "-W", str(path)], capture_output=True, text=True,
                         check=True).stdout
    highest: dict[str, tuple[int, ...]] = {}
    too_new = []
    for name, family, ver in _SYM.findall(out):
        v = _version_tuple(ver)
        if v > highest.get(family, ()):
            highest[family] = v
        if v > FLOOR[family]:
            too_new.append(f"{name}@{family}_{ver}")
    return ElfNeeds(path, highest, sorted(set(too_new)), _NEEDED.findall(out))


def elf_audit(root: Path) -> list[ElfNeeds]:
    """:func:`elf_needs` of every ELF file under ``root`` (symlinks not followed)."""
    found = []
    for dirpath, _dirs, files in os.walk(root):
        for n in sorted(files):
            p = Path(dirpath) / n
            if not p.is_symlink() and is_elf(p):
                found.append(elf_needs(p))
    return found


# --------------------------------------------------------------------------- Debian roots
def cache_dir() -> Path:
    d = Path(os.environ.get("CVMIGRATE_CHROOT_CACHE") or Path.home() / ".cache" / "cvmigrate" / "chroot")
    d.mkdir(parents=True, exist_ok=True)
    return d


def _key(suite: str, arch: str) -> str:
    return hashlib.sha256(repr((suite, arch, MIRROR, "minbase", "v1")).encode()).hexdigest()[:12]


def _run(argv: Sequence[str | os.PathLike[str]], **kw: Any) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([str(a) for a in argv], capture_output=True, text=True, **kw)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, argv))} exited {proc.returncode}:\n"
                           f"{(proc.stdout or '')[-2000:]}\n{(proc.stderr or '')[-2000:]}")
    return proc


def debian_rootfs(suite: str = "bullseye", arch: str | None = None) -> Path:
    """A debootstrapped ``minbase`` of ``suite`` for ``arch`` as a tarball (built once, cached).

    A foreign architecture is bootstrapped with ``--foreign`` and its second
    stage run under user-mode qemu (``qemu-user-static`` registers binfmt).
    """
    arch = arch or platform.machine()
    deb_arch = DEB_ARCH[arch]
    out = cache_dir() / f"rootfs-{suite}-{deb_arch}-{_key(suite, arch)}.tar"
    if out.exists():
        return out
    work = cache_dir() / f"build-{suite}-{deb_arch}-{os.getpid()}"
    shutil.rmtree(work, ignore_errors=True)
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    try:
        foreign = arch != platform.machine()
        logger.info("debootstrap %s %s into %s (once)", suite, deb_arch, work)
        _run(["debootstrap", "--variant=minbase", f"--arch={deb_arch}", *(["--foreign"] if foreign else []),
              suite, work, MIRROR], env=env, timeout=1800)
        if foreign:
            _run(["chroot", work, "/debootstrap/debootstrap", "--second-stage"], env=env, timeout=3600)
        _run(["chroot", work, "apt-get", "clean"], env=env)
        tmp = out.with_suffix(".tmp")
        _run(["tar", "-C", work, "--numeric-owner", "-cpf", tmp, "."])
        os.replace(tmp, out)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return out


def clean_env(cache: Path | None = None, home: Path | None = None) -> dict[str, str]:
    """A minimal environment: no Python variables, the cache where the test wants it."""
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}
    if cache is not None:
        env["CVMIGRATE_CACHE_DIR"] = str(cache)
    if home is not None:
        env["HOME"] = str(home)
    return env


def run(argv: Sequence[str | os.PathLike[str]], env: dict[str, str],
        timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(a) for a in argv], capture_output=True, text=True, env=env, timeout=timeout,
                          stdin=subprocess.DEVNULL)


def chroot_secrets(root: Path) -> tuple[Path, Path]:
    """A migration's PKI and token inside ``root``/etc/cvmigrate (the host reads them from there too)."""
    from cvmigrate.common.tls import new_token
    from cvmigrate.controller.pki import mint_migration_pki

    d = root / "etc/cvmigrate"
    pki_dir = d / "pki"
    if not (pki_dir / "ca.pem").exists():
        mint_migration_pki(pki_dir, hosts=["127.0.0.1"], migration_id="bullseye")
        (d / "token").write_text(new_token() + "\n")
        (d / "token").chmod(0o600)
    return pki_dir, d / "token"


def chroot_push(root: Path, src_in_chroot: str, dst: Path, work: Path, timeout: float = 900) -> str:
    """``cvmigrate push SRC`` run inside ``root`` (mutual TLS + token) to a receiver on this host; its JSON line."""
    from tests.helpers.procs import start_receiver

    pki_dir, token = chroot_secrets(root)
    with start_receiver(dst, "--tls-cert", str(pki_dir / "server.pem"), "--tls-key", str(pki_dir / "server.key"),
                        "--tls-ca", str(pki_dir / "ca.pem"), "--token-file", str(token), insecure=False,
                        work_dir=work / "recv") as rp:
        argv = in_chroot(root, "/usr/local/bin/cvmigrate", "push", src_in_chroot, "--to", rp.address,
                         "--no-default-excludes", "--tls-ca", "/etc/cvmigrate/pki/ca.pem",
                         "--tls-cert", "/etc/cvmigrate/pki/client.pem", "--tls-key", "/etc/cvmigrate/pki/client.key",
                         "--token-file", "/etc/cvmigrate/token", "--json")
        r = run(argv, clean_env(home=Path("/root")), timeout=timeout)
        assert r.returncode == 0, f"{r.stdout[-3000:]}\n{r.stderr[-5000:]}\n--- receiver\n{rp.output()[-3000:]}"
    return r.stdout.strip().splitlines()[-1]


def chroot_receive(root: Path, src: Path, work: Path, timeout: float = 900) -> Any:
    """``cvmigrate receive`` run inside ``root`` into /srv/target; a push of ``src`` from this host fills it."""
    from tests.helpers.procs import run_push

    pki_dir, token = chroot_secrets(root)
    (root / "srv/target").mkdir(parents=True, exist_ok=True)
    port_file = root / "srv/receiver.port"
    port_file.unlink(missing_ok=True)
    log_path = work / "chroot-receiver.log"
    argv = in_chroot(root, "/usr/local/bin/cvmigrate", "receive", "--listen", "127.0.0.1:0",
                     "--root", "/srv/target", "--port-file", "/srv/receiver.port",
                     "--tls-cert", "/etc/cvmigrate/pki/server.pem", "--tls-key", "/etc/cvmigrate/pki/server.key",
                     "--tls-ca", "/etc/cvmigrate/pki/ca.pem", "--token-file", "/etc/cvmigrate/token")
    with open(log_path, "wb") as log:
        # unshare, sh, chroot and the launcher all exec: this pid is the receiver itself
        proc = subprocess.Popen(argv, env=clean_env(home=Path("/root")), stdin=subprocess.DEVNULL, stdout=log,
                                stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 120
            while not (port_file.exists() and port_file.read_text().strip()):
                assert proc.poll() is None, log_path.read_text()
                assert time.monotonic() < deadline, "the chroot's receiver wrote no port file"
                time.sleep(0.05)
            address = f"127.0.0.1:{int(port_file.read_text())}"
            r = run_push(src, address, "--tls-ca", str(pki_dir / "ca.pem"), "--tls-cert",
                         str(pki_dir / "client.pem"), "--tls-key", str(pki_dir / "client.key"), "--token-file",
                         str(token), insecure=False, timeout=timeout)
            assert r.returncode == 0, r.describe() + "\n--- receiver\n" + log_path.read_text()[-3000:]
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    return r


def ensure_binfmt(arch: str) -> str | None:
    """Make the kernel run ``arch`` ELF files through qemu-user-static; None, or why it cannot.

    What systemd-binfmt does at boot on a machine with qemu-user-static
    installed: mount binfmt_misc and register Debian's
    /usr/lib/binfmt.d/qemu-<arch>.conf (flag F: the interpreter is opened
    now, so it works inside chroots).  The registration stays, as it would.
    """
    if arch == platform.machine():
        return None
    entry = Path(f"/proc/sys/fs/binfmt_misc/qemu-{arch}")
    if entry.exists():
        return None
    conf = Path(f"/usr/lib/binfmt.d/qemu-{arch}.conf")
    if not conf.exists():
        return f"{conf} is missing: apt-get install qemu-user-static"
    if not Path("/proc/sys/fs/binfmt_misc/register").exists():
        r = subprocess.run(["mount", "-t", "binfmt_misc", "binfmt_misc", "/proc/sys/fs/binfmt_misc"],
                           capture_output=True, text=True)
        if r.returncode != 0:
            return f"cannot mount binfmt_misc: {r.stderr.strip()}"
    line = next(ln for ln in conf.read_text().splitlines() if ln.startswith(":"))
    try:
        Path("/proc/sys/fs/binfmt_misc/register").write_text(line)
    except OSError as exc:
        if not entry.exists():
            return f"cannot register qemu-{arch} with binfmt_misc: {exc}"
    return None


def unpack_rootfs(tarball: Path, dest: Path) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    _run(["tar", "-C", dest, "--numeric-owner", "-xpf", tarball])
    return dest


def in_chroot(root: Path, *argv: str) -> list[str]:
    """argv that runs ``argv`` inside ``root`` with a private ``/proc`` (gone when it exits)."""
    script = 'mount -t proc proc "$0/proc" && exec chroot "$0" "$@"'
    return ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, str(root), *argv]


def python_in(root: Path) -> list[str]:
    """Every python-looking executable in ``root``'s usual bin directories."""
    hits = []
    for d in ("bin", "sbin", "usr/bin", "usr/sbin", "usr/local/bin"):
        base = root / d
        if base.is_dir():
            hits += [str(p.relative_to(root)) for p in base.iterdir() if p.name.startswith("python")]
    return sorted(hits)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    import sys
    print(debian_rootfs("bullseye", sys.argv[1] if len(sys.argv) > 1 else None))
