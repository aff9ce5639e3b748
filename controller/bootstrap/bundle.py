"""What the rescue system gets to run the receiver, and the checks on it.

Two routes (``bootstrap_receiver`` picks one):
- the one-file executable for the remote's architecture
  (``tools/build_bundle.sh`` writes ``dist/cvmigrate-linux-<arch>``; see
  :func:`find_executable`): uploaded unless the remote already holds a file
  with the same SHA-256, then run with its bundled interpreter -- the rescue
  system needs no Python at all;
- otherwise the remote's own Python (probed: CPython 3.11+, architecture,
  libc) and a bundle of wheels for *that* Python and platform: a wheel of
  this project plus binary wheels of its light dependencies (grpcio,
  protobuf, xxhash, zstandard), built or downloaded here and cached under
  ``~/.cache/cvmigrate/wheels``.

``RemoteLayout`` names where everything lives in the remote work directory.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from shlex import quote

from cvmigrate.common.errors import ConfigError
from cvmigrate.controller.bootstrap.errors import (
    BootstrapTimeout,
    BundleError,
    RemoteInstallFailed,
    RemotePythonMissing,
)
from cvmigrate.controller.bootstrap.transport import Ssh

logger = logging.getLogger(__name__)

#: The receiver's own ``requires-python``; a rescue system with an older
#: Python cannot run it.
MIN_REMOTE_PYTHON = (3, 11)
#: Architectures we can fetch manylinux wheels for (``platform.machine()``).
SUPPORTED_MACHINES = {"x86_64": "x86_64", "amd64": "x86_64", "aarch64": "aarch64", "arm64": "aarch64"}
_PROJECT = "cvmigrate"


@dataclass(frozen=True)
class RemoteLayout:
    """The remote work directory (``remote_workdir``, 0700) and what lives in it."""

    workdir: str

    @property
    def helper(self) -> str: return f"{self.workdir}/helper.py"
    @property
    def wheels(self) -> str: return f"{self.workdir}/wheels"
    @property
    def manifest(self) -> str: return f"{self.workdir}/wheels/manifest.json"
    def lib(self, bundle_id: str) -> str: return f"{self.workdir}/lib/{bundle_id}"
    @property
    def secrets(self) -> str: return f"{self.workdir}/secrets"
    @property
    def run(self) -> str: return f"{self.workdir}/run"
    @property
    def pidfile(self) -> str: return f"{self.run}/receiver.pid"
    @property
    def portfile(self) -> str: return f"{self.run}/receiver.port"
    @property
    def logfile(self) -> str: return f"{self.run}/receiver.log"


# --------------------------------------------------------------------- remote facts
#: Runs on whatever interpreter the rescue system calls ``python`` -- the point is to learn whether it is
#: new enough -- so it stays a one-liner in the oldest syntax, not a module of this package.
_PROBE = (
    "import sys, json, os, platform\n"
    "try:\n"
    "    libc = list(platform.libc_ver())\n"
    "except Exception:\n"
    "    libc = ['', '']\n"
    "print(json.dumps({'version': list(sys.version_info[:3]), 'impl': platform.python_implementation(),\n"
    "                  'machine': platform.machine(), 'libc': libc, 'executable': sys.executable,\n"
    "                  'home': os.path.expanduser('~'), 'uid': os.getuid(), 'bits64': sys.maxsize > 2**32}))\n"
)


@dataclass(frozen=True)
class RemoteShell:
    """What a POSIX shell on the rescue system says about itself (no Python needed)."""

    machine: str
    home: str
    uid: int

    @property
    def arch(self) -> str:
        return SUPPORTED_MACHINES.get(self.machine.lower(), self.machine)


@dataclass(frozen=True)
class RemotePython(RemoteShell):
    """What ``bootstrap_receiver`` learned about the rescue system's Python (and its shell's facts)."""

    version: tuple[int, int, int]
    implementation: str
    libc: tuple[str, str]
    executable: str

    def platform_key(self) -> str:
        lib = f"{self.libc[0] or 'musl'}{self.libc[1]}"
        return f"cp{self.version[0]}{self.version[1]}-{self.arch}-{lib}"


def probe_python(ssh: Ssh, python: str) -> RemotePython:
    """Ask the remote interpreter for its version, architecture and libc."""
    rc, out, err = ssh.run(f"{quote(python)} -c {quote(_PROBE)}", "asking the remote Python for its version")
    if rc != 0 or not out.strip():
        detail = (err.strip().splitlines() or [f"exit status {rc}"])[-1]
        if rc == 127 or "not found" in err or "No such file" in err:
            raise RemotePythonMissing(
                f"the rescue system at {ssh.where} has no {python!r} ({detail}); the receiver needs CPython "
                f"{MIN_REMOTE_PYTHON[0]}.{MIN_REMOTE_PYTHON[1]}+: install it in the rescue system or pass "
                "python='/path/to/python3.11'")
        raise RemotePythonMissing(f"{python!r} on {ssh.where} did not run ({detail}); pass python= pointing "
                                  f"at a working CPython {MIN_REMOTE_PYTHON[0]}.{MIN_REMOTE_PYTHON[1]}+")
    try:
        d = json.loads(out.strip().splitlines()[-1])
        rp = RemotePython(version=tuple(d["version"]), implementation=d["impl"], machine=d["machine"],
                          libc=(d["libc"][0] or "", d["libc"][1] or ""), executable=d["executable"],
                          home=d["home"], uid=int(d["uid"]))
    except (ValueError, KeyError, IndexError, TypeError):
        raise RemotePythonMissing(f"{python!r} on {ssh.where} printed something unexpected ({out[:200]!r}); "
                                  "pass python= pointing at a working CPython") from None
    if rp.implementation != "CPython" or rp.version[:2] < MIN_REMOTE_PYTHON:
        raise RemotePythonMissing(
            f"{python!r} on {ssh.where} is {rp.implementation} {'.'.join(map(str, rp.version))}; the receiver "
            f"needs CPython {MIN_REMOTE_PYTHON[0]}.{MIN_REMOTE_PYTHON[1]}+: install it in the rescue system or "
            "pass python='/path/to/python3.11'")
    if rp.machine.lower() not in SUPPORTED_MACHINES:
        raise RemotePythonMissing(f"the rescue system at {ssh.where} is {rp.machine}; only "
                                  f"{', '.join(sorted(set(SUPPORTED_MACHINES.values())))} are supported")
    logger.info("remote Python on %s: CPython %s, %s, %s %s", ssh.where, ".".join(map(str, rp.version)),
                rp.arch, rp.libc[0] or "libc?", rp.libc[1])
    return rp


# --------------------------------------------------------------------- the one-file executable
EXECUTABLE_PREFIX = "cvmigrate-linux-"


def find_executable(arch: str, given: Path | str | None = None) -> Path | None:
    """The one-file executable for ``arch`` (``cvmigrate-linux-<arch>``), or None.

    Looked for, in order: ``given`` (the file, or a directory holding it);
    ``$CVMIGRATE_EXECUTABLES`` (a directory); the file this controller itself
    runs from when it is that executable and ``arch`` is this machine's
    (``$CVMIGRATE_EXECUTABLE``, set by the launcher); ``dist/`` of the source
    tree this cvmigrate was installed from (a checkout).
    """
    name = f"{EXECUTABLE_PREFIX}{arch}"
    if given is not None:
        g = Path(given)
        cand = g / name if g.is_dir() else g
        if not cand.is_file():
            raise ConfigError(f"no {name} at {os.fspath(cand)!r}: build it with tools/build_bundle.sh --arch {arch} "
                              "and pass the file or its directory")
        return cand
    if os.environ.get("CVMIGRATE_EXECUTABLES"):
        cand = Path(os.environ["CVMIGRATE_EXECUTABLES"]) / name
        if cand.is_file():
            return cand
    own = os.environ.get("CVMIGRATE_EXECUTABLE")
    if own and os.path.isfile(own) and SUPPORTED_MACHINES.get(os.uname().machine) == arch:
        return Path(own)
    try:
        cand = project_root() / "dist" / name
    except BundleError:
        return None
    return cand if cand.is_file() else None


def probe_shell(ssh: Ssh) -> RemoteShell:
    """``uname -m``, ``$HOME`` and ``id -u`` of the remote login."""
    rc, out, err = ssh.run('uname -m; id -u; printf "%s\\n" "$HOME"', "asking the rescue system for its architecture")
    lines = out.splitlines()
    if rc != 0 or len(lines) < 3:
        detail = (err.strip().splitlines() or [f"exit status {rc}"])[-1]
        raise RemoteInstallFailed(f"the rescue system at {ssh.where} did not answer `uname -m; id -u` ({detail}); "
                                  "its login shell must be a POSIX shell")
    try:
        return RemoteShell(machine=lines[0].strip(), uid=int(lines[1]), home=lines[2].strip() or "/")
    except ValueError:
        raise RemoteInstallFailed(f"unexpected answer from {ssh.where} to `uname -m; id -u`: {out[:200]!r}") from None


def install_executable(ssh: Ssh, layout: RemoteLayout, exe: Path) -> tuple[str, str]:
    """Upload ``exe`` unless the remote holds the same bytes; return (runner shell words, sha256)."""
    digest = sha256_of(exe)
    remote = f"{layout.workdir}/bin/{exe.name}"
    rc, out, _ = ssh.run(f"sha256sum {quote(remote)} 2>/dev/null", "checking the uploaded executable")
    if rc == 0 and out.split()[:1] == [digest]:
        logger.info("%s already on %s (sha256 %s)", exe.name, ssh.where, digest[:16])
    else:
        try:
            ssh.mkdirs(f"{layout.workdir}/bin", 0o700)
            ssh.put_file(exe, remote, 0o700)
        except OSError as exc:
            raise RemoteInstallFailed(f"uploading {exe.name} to {ssh.where} failed ({exc}); check free space under "
                                      f"{layout.workdir} (df -h) or pass remote_workdir=") from None
        rc, out, _ = ssh.run(f"sha256sum {quote(remote)}", "checking the uploaded executable")
        if rc != 0 or out.split()[:1] != [digest]:
            raise RemoteInstallFailed(f"{remote} on {ssh.where} does not have the SHA-256 of {exe} after the upload "
                                      f"({out.strip()[:80] or 'sha256sum failed'}); retry")
        logger.info("uploaded %s (%d bytes, sha256 %s) to %s", exe.name, exe.stat().st_size, digest[:16], ssh.where)
    runner = (f"env CVMIGRATE_LAUNCHER_PYTHON=1 CVMIGRATE_CACHE_DIR={quote(layout.workdir + '/runtime')} "
              f"{quote(remote)}")
    rc, out, err = ssh.run(f"{runner} -c 'import sys; print(sys.version_info[0])'", "unpacking the executable")
    if rc != 0 or out.strip() != "3":
        detail = "\n".join((err or out).strip().splitlines()[-5:]) or f"exit status {rc}"
        raise RemoteInstallFailed(f"{exe.name} does not run on {ssh.where}:\n{detail}")
    return runner, digest


# --------------------------------------------------------------------- the bundle
def wheel_cache_dir() -> Path:
    """``$CVMIGRATE_CACHE_DIR/wheels`` or ``$XDG_CACHE_HOME/cvmigrate/wheels`` (``~/.cache/...``)."""
    if os.environ.get("CVMIGRATE_CACHE_DIR"):
        return Path(os.environ["CVMIGRATE_CACHE_DIR"]) / "wheels"
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "cvmigrate" / "wheels"


def platform_tags(remote: RemotePython) -> list[str]:
    """pip ``--platform`` values the remote can load, newest manylinux first."""
    arch = remote.arch
    lib, ver = remote.libc
    if lib == "glibc" and ver:
        try:
            major, minor = (int(x) for x in ver.split(".")[:2])
        except ValueError:
            major, minor = 2, 17
        if major != 2:
            major, minor = 2, 17
        tags = [f"manylinux_2_{m}_{arch}" for m in range(minor, 16, -1)]
        tags.append(f"manylinux2014_{arch}")
        if arch == "x86_64":
            tags += [f"manylinux_2_{m}_{arch}" for m in range(16, 4, -1)]
            tags += [f"manylinux2010_{arch}", f"manylinux1_{arch}"]
        return tags
    # No glibc version: assume musl (Alpine-like rescue systems).
    return [f"musllinux_1_2_{arch}", f"musllinux_1_1_{arch}"]


def project_root() -> Path:
    """The source tree this cvmigrate was installed from (editable install or a checkout)."""
    import cvmigrate

    here = Path(cvmigrate.__file__).resolve().parent
    for cand in (here.parent, *here.parents):
        if (cand / "pyproject.toml").is_file():
            try:
                text = (cand / "pyproject.toml").read_text()
            except OSError:
                continue
            if 'name = "cvmigrate"' in text:
                return cand
    raise BundleError("cannot find cvmigrate's source tree (pyproject.toml) to build the receiver wheel; "
                      "pass bundle=DIR holding a cvmigrate wheel and its dependency wheels "
                      "(see prepare_bundle)")


def _project_files(root: Path) -> list[Path]:
    """The files that go into the wheel: pyproject, README and every package directory."""
    import tomllib

    meta = tomllib.loads((root / "pyproject.toml").read_text())
    files = [root / "pyproject.toml"]
    readme = meta.get("project", {}).get("readme")
    if isinstance(readme, str) and (root / readme).is_file():
        files.append(root / readme)
    for extra in ("LICENSE", "LICENSE.txt", "setup.cfg", "MANIFEST.in"):
        if (root / extra).is_file():
            files.append(root / extra)
    dirs = sorted(set(meta.get("tool", {}).get("setuptools", {}).get("package-dir", {}).values()))
    for d in dirs:
        base = root / d
        for dirpath, dirnames, filenames in os.walk(base):
            dirnames[:] = sorted(n for n in dirnames if n != "__pycache__" and not n.startswith("."))
            for n in sorted(filenames):
                if n.endswith((".pyc", ".pyo")) or n.startswith("."):
                    continue
                files.append(Path(dirpath) / n)
    return files


def _tree_digest(root: Path, files: Iterable[Path]) -> str:
    h = hashlib.sha256()
    for f in files:
        rel = f.relative_to(root).as_posix().encode()
        h.update(len(rel).to_bytes(4, "big") + rel)
        data = f.read_bytes()
        h.update(len(data).to_bytes(8, "big") + data)
    return h.hexdigest()[:16]


def _pip(args: Sequence[str], step: str, timeout: float) -> None:
    argv = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input", *args]
    logger.debug("running %s", " ".join(argv))
    try:
        r = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        raise BootstrapTimeout(f"{step} did not finish within {timeout:.0f}s; check this host's access to "
                               "PyPI (or its proxy), or pass bundle=DIR prepared in advance") from None
    if r.returncode != 0:
        tail = "\n".join((r.stderr or r.stdout).strip().splitlines()[-8:])
        raise BundleError(f"{step} failed (pip exit {r.returncode}); check this host's access to PyPI (or "
                          f"PIP_INDEX_URL), or pass bundle=DIR prepared in advance:\n{tail}")


def build_project_wheel(cache: Path | None = None, *, timeout: float = 300) -> Path:
    """``pip wheel --no-deps`` of this project, cached by the digest of its sources."""
    cache = cache or wheel_cache_dir()
    root = project_root()
    files = _project_files(root)
    digest = _tree_digest(root, files)
    out = cache / "self" / digest
    found = sorted(out.glob(f"{_PROJECT}-*.whl"))
    if found:
        return found[-1]
    # Build from a copy: setuptools writes build/ and *.egg-info into the tree it builds.
    with tempfile.TemporaryDirectory(prefix="cvm-wheel-") as tmp:
        src = Path(tmp) / "src"
        for f in files:
            dst = src / f.relative_to(root)
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(f, dst)
        dist = Path(tmp) / "dist"
        args = ["wheel", "--no-deps", "--wheel-dir", str(dist)]
        if importlib.util.find_spec("setuptools") is not None:
            args.append("--no-build-isolation")      # build offline with the local setuptools
        logger.info("building the cvmigrate wheel (sources %s)", digest)
        _pip([*args, str(src)], "building the cvmigrate wheel", timeout)
        wheels = sorted(dist.glob(f"{_PROJECT}-*.whl"))
        if not wheels:
            raise BundleError("pip wheel produced no cvmigrate wheel; pass bundle=DIR prepared in advance")
        out.mkdir(parents=True, exist_ok=True)
        final = out / wheels[-1].name
        shutil.copy2(wheels[-1], out / (final.name + ".tmp"))
        os.replace(out / (final.name + ".tmp"), final)
    return final


def receiver_requirements() -> list[str]:
    """The receiver's runtime requirements: the project's base dependencies (no extras)."""
    from importlib import metadata

    try:
        reqs = metadata.requires(_PROJECT) or []
    except metadata.PackageNotFoundError:  # pragma: no cover - running from a bare checkout
        import tomllib
        return list(tomllib.loads((project_root() / "pyproject.toml").read_text())["project"]["dependencies"])
    return [r.split(";")[0].strip() for r in reqs if "extra ==" not in r]


def download_dependency_wheels(remote: RemotePython, cache: Path | None = None, *,
                               requirements: Sequence[str] | None = None, timeout: float = 300) -> list[Path]:
    """Binary wheels of the receiver's dependencies for the remote's Python and platform (cached)."""
    cache = cache or wheel_cache_dir()
    reqs = sorted(requirements if requirements is not None else receiver_requirements())
    key = hashlib.sha256(json.dumps([remote.platform_key(), reqs]).encode()).hexdigest()[:12]
    out = cache / "deps" / f"{remote.platform_key()}-{key}"
    marker = out / "complete.json"
    if marker.is_file():
        names = json.loads(marker.read_text())["wheels"]
        paths = [out / n for n in names]
        if all(p.is_file() for p in paths):
            return paths
    shutil.rmtree(out, ignore_errors=True)       # an interrupted download: start clean
    out.mkdir(parents=True, exist_ok=True)
    py = f"{remote.version[0]}{remote.version[1]}"
    args = ["download", "--only-binary=:all:", "--dest", str(out), "--python-version", py,
            "--implementation", "cp", "--abi", f"cp{py}", "--abi", "abi3", "--abi", "none"]
    for tag in platform_tags(remote):
        args += ["--platform", tag]
    logger.info("downloading receiver dependency wheels for %s: %s", remote.platform_key(), ", ".join(reqs))
    _pip([*args, *reqs], f"downloading wheels for the rescue system ({remote.platform_key()})", timeout)
    wheels = sorted(out.glob("*.whl"))
    if not wheels:
        raise BundleError(f"pip downloaded no wheels for {remote.platform_key()}; pass bundle=DIR prepared "
                          "in advance")
    marker.write_text(json.dumps({"requirements": reqs, "wheels": [p.name for p in wheels]}))
    return wheels


def prepare_bundle(remote: RemotePython, out_dir: Path | None = None, *, timeout: float = 300) -> list[Path]:
    """All wheels the receiver needs on ``remote``: the project wheel plus its dependencies.

    With ``out_dir`` the wheels are also copied there, so a bundle can be
    prepared on a machine with PyPI access and passed as ``bundle=`` later.
    """
    deadline = time.monotonic() + timeout
    own = build_project_wheel(timeout=timeout)
    deps = download_dependency_wheels(remote, timeout=max(1.0, deadline - time.monotonic()))
    wheels = [own, *deps]
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        for w in wheels:
            shutil.copy2(w, out_dir / w.name)
        return [out_dir / w.name for w in wheels]
    return wheels


def bundle_from_dir(bundle: Path) -> list[Path]:
    wheels = sorted(Path(bundle).glob("*.whl"))
    if not any(w.name.startswith(f"{_PROJECT}-") for w in wheels):
        raise BundleError(f"the bundle directory {os.fspath(bundle)!r} holds no {_PROJECT}-*.whl; build one "
                          "with prepare_bundle(remote, out_dir) or `pip wheel --no-deps .`")
    return wheels


def sha256_of(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()
