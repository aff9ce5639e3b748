"""Post-migration fix-ups on the migrated root, so the target boots and reaches the network.

Why this package exists: a copied Linux keeps the source's ``/etc/fstab``
UUIDs, grub's ``root=``, an initramfs built for other storage, MAC-bound
network configuration and SELinux labels from another disk.  Tencent leaves
this to the user; we fix each of them, and we show exactly what we changed.

Contract of every fix-up (a module with ``NAME`` and ``fix(ctx)``):

* It edits files only through :meth:`FixupContext.write` (or
  :meth:`FixupContext.remove`), which backs the old file up under
  ``<root>/var/backups/cvmigrate/<timestamp>/<path>`` and logs a unified
  before/after diff.  Nothing is changed silently.
* It runs tools only through :meth:`FixupContext.chroot`, i.e. inside the
  migrated root with ``/dev``, ``/proc``, ``/sys`` bound in, and only when
  ``chroot_tools`` is true (a dry run and the unit tests pass False).
* Its text transformations are pure functions of the old text and the plan,
  so they are unit-tested table by table (tests/unit/test_fixups_*.py).

:func:`run_fixups` runs them in a fixed order (fstab, network, cloud-init,
SELinux, initramfs, bootloader: the bootloader is last because grub-mkconfig
reads the regenerated initramfs and the final fstab) and returns a
:class:`FixupReport`.  A fix-up that fails is reported and the others still
run; the caller decides whether a failure is fatal (``report.ok``).
"""
from __future__ import annotations

import contextlib
import difflib
import errno
import logging
import os
import stat
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cvmigrate.common.durable import write_at
from cvmigrate.common.errors import CvmError

logger = logging.getLogger(__name__)

BACKUP_DIR = "var/backups/cvmigrate"


class FixupError(CvmError, template="fix-up {step} failed: {message}", grpc_code="FAILED_PRECONDITION",
                 exit_code=7):
    """A post-migration fix-up failed."""


@dataclass
class FileChange:
    path: str                  # absolute inside the migrated root, e.g. /etc/fstab
    diff: str                  # unified diff, '' for a removal of a binary file
    backup: str | None         # absolute host path of the backup (None: the file was new)
    removed: bool = False


@dataclass
class FixupStep:
    name: str
    status: str = "unchanged"  # changed | unchanged | skipped | failed
    messages: list[str] = field(default_factory=list)
    changes: list[FileChange] = field(default_factory=list)
    commands: list[str] = field(default_factory=list)


@dataclass
class FixupReport:
    root: str
    backup_dir: str
    steps: list[FixupStep] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(s.status != "failed" for s in self.steps)

    def step(self, name: str) -> FixupStep:
        return next(s for s in self.steps if s.name == name)

    def diffs(self) -> str:
        """Every change as one text: what the closing note and the summary show."""
        out = []
        for s in self.steps:
            for c in s.changes:
                if c.diff:
                    out.append(c.diff)
                else:
                    what = "removed" if c.removed else "binary file regenerated"
                    out.append(f"--- a{c.path}\n+++ b{c.path}\n({what}; backup: {c.backup})\n")
        return "".join(out)

    def summary(self) -> str:
        lines = []
        for s in self.steps:
            files = ", ".join(c.path for c in s.changes)
            lines.append(f"{s.name:<10} {s.status:<9} {files}" + (f"  ({'; '.join(s.messages)})" if s.messages else ""))
        return "\n".join(lines)

    def as_json(self) -> dict[str, Any]:
        return {"root": self.root, "backup_dir": self.backup_dir, "ok": self.ok,
                "steps": [{"name": s.name, "status": s.status, "messages": s.messages, "commands": s.commands,
                           "changes": [{"path": c.path, "backup": c.backup, "removed": c.removed, "diff": c.diff}
                                       for c in s.changes]} for s in self.steps]}


def unified_diff(path: str, old: str, new: str) -> str:
    return "".join(difflib.unified_diff(old.splitlines(keepends=True), new.splitlines(keepends=True),
                                        fromfile=f"a{path}", tofile=f"b{path}"))


class FixupContext:
    """What a fix-up may touch: files under ``root`` (with backups) and tools in a chroot."""

    def __init__(self, root: Path, plan: Any, *, chroot_tools: bool, backup_dir: Path, step: FixupStep) -> None:
        self.root = root
        self.plan = plan
        self.chroot_tools = chroot_tools
        self.backup_dir = backup_dir
        self.step = step
        self._chroot: _Chroot | None = None
        self.source: Any = None            # the agent's SourceFacts, when the controller sent them
        self.keep_static_ip = False

    # -- files
    def path(self, inner: str) -> Path:
        """Host path of ``inner`` (an absolute path inside the migrated root), symlinks resolved *inside* the root.

        An absolute symlink in the migrated tree (``/etc/foo -> /usr/share/foo``)
        must not be followed on the host: that would read or, worse, edit the
        rescue system's own files.
        """
        return resolve_in_root(self.root, inner)

    def exists(self, inner: str) -> bool:
        return os.path.lexists(self.path(inner))

    def read(self, inner: str) -> str | None:
        """The text of the regular file at ``inner``; None when it is missing or anything else (never blocks)."""
        data = self._read_bytes(inner)
        return None if data is None else data.decode("utf-8", "surrogateescape")

    def _read_bytes(self, inner: str) -> bytes | None:
        try:
            parent, name = self._locate(inner)
            dfd = self._open_dir(parent)
        except (FileNotFoundError, NotADirectoryError):
            return None
        try:
            return _read_regular(dfd, name)
        finally:
            os.close(dfd)

    # Every change below goes through a directory descriptor opened one component at a time with
    # O_NOFOLLOW from the root: the migrated tree is the source's, and a symlink planted anywhere
    # (a parent, the temporary name, the backup directory) must not move a write onto a host file.
    def _locate(self, inner: str) -> tuple[list[str], str]:
        """(parent components, name) of ``inner`` resolved inside the root as a chroot would."""
        parts = list(self.path(inner).relative_to(self.root).parts)
        if not parts:
            raise FixupError(f"{inner!r} names the root itself", step=self.step.name)
        return parts[:-1], parts[-1]

    def _open_dir(self, parts: Sequence[str], *, create: bool = False, mode: int = 0o755) -> int:
        """A descriptor of the directory root/parts (created with ``mode`` when ``create``), no link followed."""
        return open_dir_in(self.root, parts, create=create, mode=mode, step=self.step.name)

    def glob(self, pattern: str) -> list[str]:
        """Inner paths matching ``pattern`` (relative to /), sorted."""
        return sorted("/" + str(p.relative_to(self.root)) for p in self.root.glob(pattern.lstrip("/")))

    def _backup(self, inner: str, where: tuple[list[str], str] | None = None) -> str | None:
        """Copy what stands at ``inner`` (resolved, or exactly ``where``) under the backup directory."""
        try:
            parent, name = where or self._locate(inner)
            sfd = self._open_dir(parent)
        except (FileNotFoundError, NotADirectoryError):
            return None
        try:
            st = os.stat(name, dir_fd=sfd, follow_symlinks=False)
            link = os.readlink(name, dir_fd=sfd) if stat.S_ISLNK(st.st_mode) else None
            data = _read_regular(sfd, name) if link is None else None
        except FileNotFoundError:
            return None
        finally:
            os.close(sfd)
        if link is None and data is None:
            return None                 # a directory, a device, a FIFO: nothing a fix-up replaces
        rel = self.backup_dir.relative_to(self.root).parts + tuple(p for p in inner.split("/") if p)
        dst = self.backup_dir / inner.lstrip("/")
        dfd = self._open_dir(rel[:-1], create=True, mode=0o700)
        try:
            if _exists_at(dfd, rel[-1]):
                return str(dst)         # changed twice in one run: the backup keeps the original
            if link is not None:
                os.symlink(link, rel[-1], dir_fd=dfd)
            else:
                assert data is not None
                write_at(dfd, rel[-1], data, stat.S_IMODE(st.st_mode), uid=st.st_uid, gid=st.st_gid)
        finally:
            os.close(dfd)
        return str(dst)

    def write(self, inner: str, new: str, reason: str = "", mode: int = 0o644) -> bool:
        """Replace ``inner`` with ``new`` (backup + diff); False when nothing changes.

        An existing file keeps its mode and owner; a new one gets ``mode`` (root-owned).
        """
        old = self.read(inner)
        if old == new:
            return False
        parent, name = self._locate(inner)
        backup = self._backup(inner) if old is not None else None
        dfd = self._open_dir(parent, create=True)
        try:
            try:
                st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
                keep = (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) if stat.S_ISREG(st.st_mode) else None
            except FileNotFoundError:
                keep = None
            m, uid, gid = keep or (mode, -1, -1)
            write_at(dfd, name, new.encode("utf-8", "surrogateescape"), m, uid=uid, gid=gid)
        finally:
            os.close(dfd)
        diff = unified_diff(inner, old or "", new)
        self.step.changes.append(FileChange(inner, diff, backup))
        self.step.status = "changed"
        logger.info("fix-up %s: %s %s%s\n%s", self.step.name, "changed" if old is not None else "created", inner,
                    f" ({reason})" if reason else "", diff.rstrip("\n"))
        return True

    def remove(self, inner: str, reason: str = "") -> bool:
        """Remove the entry at ``inner`` itself (a symlink, not what it points to), after a backup."""
        parent_inner, _, base = inner.rstrip("/").rpartition("/")
        try:
            parent = list(self.path(parent_inner or "/").relative_to(self.root).parts)
            dfd = self._open_dir(parent)
        except (FileNotFoundError, NotADirectoryError):
            return False
        try:
            try:
                st = os.stat(base, dir_fd=dfd, follow_symlinks=False)
            except FileNotFoundError:
                return False
            if stat.S_ISDIR(st.st_mode):
                raise FixupError(f"{inner} is a directory; fix-ups remove files only", step=self.step.name)
            old = None
            if stat.S_ISREG(st.st_mode):
                data = _read_regular(dfd, base)
                old = data.decode("utf-8", "surrogateescape") if data is not None else None
            backup = self._backup(inner, (parent, base))
            os.unlink(base, dir_fd=dfd)
        finally:
            os.close(dfd)
        diff = unified_diff(inner, old, "") if old is not None else ""
        self.step.changes.append(FileChange(inner, diff, backup, removed=True))
        self.step.status = "changed"
        logger.info("fix-up %s: removed %s%s (backup %s)", self.step.name, inner,
                    f" ({reason})" if reason else "", backup)
        return True

    def discard(self, inner: str) -> None:
        """Remove a scratch file a tool wrote for us (no backup, no record); missing is fine."""
        parent, name = self._locate(inner)
        dfd = self._open_dir(parent)
        try:
            os.unlink(name, dir_fd=dfd)
        except FileNotFoundError:
            pass
        finally:
            os.close(dfd)

    def regenerated(self, inner: str, backup: str | None) -> None:
        """Record a file a tool rewrote (an initramfs image): no text diff, but its backup."""
        self.step.changes.append(FileChange(inner, "", backup))
        self.step.status = "changed"

    def note(self, message: str) -> None:
        self.step.messages.append(message)
        logger.info("fix-up %s: %s", self.step.name, message)

    # -- tools
    def which(self, *names: str) -> str | None:
        """The first of ``names`` installed in the migrated root (as a path inside it)."""
        for name in names:
            for d in ("/usr/sbin", "/usr/bin", "/sbin", "/bin", "/usr/local/sbin"):
                p = f"{d}/{name}"
                if os.access(self.path(p), os.X_OK) or self.path(p).is_symlink():
                    return p
        return None

    def chroot(self, argv: Sequence[str], *, check: bool = True, env: dict[str, str] | None = None,
               timeout: float = 900) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` inside the migrated root (bind mounts are set up on first use)."""
        if not self.chroot_tools:
            raise FixupError("tools are disabled (chroot_tools=False)", step=self.step.name)
        if self._chroot is None:
            raise FixupError("no chroot is prepared", step=self.step.name)
        return self._chroot.run(list(argv), check=check, env=env, timeout=timeout, step=self.step)


_O_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def open_dir_in(root: Path, parts: Sequence[str], *, create: bool = False, mode: int = 0o755,
                step: str = "files") -> int:
    """Descriptor of ``root/parts``, opened one component at a time with O_NOFOLLOW (created when ``create``).

    A component that is a symlink or not a directory raises FixupError: it was
    resolved inside the root already (``resolve_in_root``), so a link here was
    planted to redirect us.
    """
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for part in parts:
            if part in ("", ".", ".."):
                raise FixupError(f"{'/'.join(parts)}: component {part!r} is not a plain name", step=step)
            if create:
                try:
                    os.mkdir(part, mode, dir_fd=fd)
                except FileExistsError:
                    pass
            try:
                nfd = os.open(part, _O_DIR, dir_fd=fd)
            except OSError as exc:
                if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                    raise FixupError(f"/{'/'.join(parts)}: /{part} is a symlink or not a directory in the migrated "
                                     "root; refusing to follow it", step=step) from None
                raise
            os.close(fd)
            fd = nfd
        return fd
    except BaseException:
        os.close(fd)
        raise


def _read_regular(dfd: int, name: str) -> bytes | None:
    """The content of the regular file ``name`` in ``dfd``; None for anything else (FIFOs are never opened)."""
    from cvmigrate.receiver.fsops import open_regular

    opened = open_regular(dfd, os.fsencode(name))
    if opened is None:
        return None
    fd, _ = opened
    try:
        chunks: list[bytes] = []
        while True:
            b = os.read(fd, 1 << 20)
            if not b:
                return b"".join(chunks)
            chunks.append(b)
    finally:
        os.close(fd)


def _exists_at(dfd: int, name: str) -> bool:
    try:
        os.stat(name, dir_fd=dfd, follow_symlinks=False)
        return True
    except FileNotFoundError:
        return False


def resolve_in_root(root: Path, inner: str, *, max_hops: int = 40) -> Path:
    """``inner`` resolved as the kernel would inside a chroot at ``root``.

    The last component's link is kept if it dangles.
    """
    todo = [p for p in inner.split("/") if p]
    done: list[str] = []
    hops = 0
    while todo:
        part = todo.pop(0)
        if part == ".":
            continue
        if part == "..":
            if done:
                done.pop()
            continue
        cand = root.joinpath(*done, part)
        if cand.is_symlink():
            hops += 1
            if hops > max_hops:
                raise FixupError(f"too many symlinks resolving {inner}", step="resolve")
            link = os.readlink(cand)
            if link.startswith("/"):
                done = []
            todo = [p for p in link.split("/") if p] + todo
            continue
        done.append(part)
    return root.joinpath(*done)


class _Chroot:
    """/dev, /proc, /sys (and a tmpfs /run) bound into the root, plus /dev/disk/by-* links.

    The by-uuid links matter: grub-mkconfig writes ``root=UUID=`` only when
    ``/dev/disk/by-uuid/<uuid>`` exists; in a rescue system or a container
    without udev it silently falls back to ``root=/dev/loopNpM``.  Links we
    create are removed again on exit.
    """

    def __init__(self, root: Path, plan: Any) -> None:
        self.root = root
        self.plan = plan
        self.mounted: list[Path] = []
        self.created: list[Path] = []

    def __enter__(self) -> _Chroot:
        try:
            for name, args in (("dev", ["--bind", "/dev"]), ("proc", ["-t", "proc", "proc"]),
                               ("sys", ["--bind", "/sys"]), ("run", ["-t", "tmpfs", "tmpfs"])):
                where = self.root / name
                os.close(open_dir_in(self.root, [name], create=True, step="chroot"))
                st = os.lstat(where)   # only onto a real directory: a planted symlink would move the mount
                if not stat.S_ISDIR(st.st_mode):
                    raise FixupError(f"/{name} in the migrated root is not a directory", step="chroot")
                subprocess.run(["mount", *args, str(where)], check=True, capture_output=True)
                self.mounted.append(where)
            self._links()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def _links(self) -> None:
        for m in getattr(self.plan, "mounts", ()):
            t = m.target
            if t is None or not t.device:
                continue
            for kind, value in (("by-uuid", t.uuid), ("by-label", t.label), ("by-partuuid", t.partuuid)):
                if not value:
                    continue
                d = Path("/dev/disk") / kind
                link = d / value
                if os.path.lexists(link):
                    continue
                for parent in (Path("/dev/disk"), d):
                    if not parent.exists():
                        parent.mkdir()
                        self.created.append(parent)
                os.symlink(t.device, link)
                self.created.append(link)

    def run(self, argv: list[str], *, check: bool, env: dict[str, str] | None, timeout: float,
            step: FixupStep) -> subprocess.CompletedProcess[str]:
        full_env = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8",
                    "DEBIAN_FRONTEND": "noninteractive", "HOME": "/root"}
        full_env.update(env or {})
        cmd = " ".join(argv)
        step.commands.append(cmd)
        logger.info("fix-up %s: chroot %s %s", step.name, self.root, cmd)
        proc = subprocess.run(["chroot", str(self.root), *argv], capture_output=True, text=True, env=full_env,
                              timeout=timeout)
        for line in (proc.stdout + proc.stderr).splitlines()[-40:]:
            logger.debug("  %s", line)
        if check and proc.returncode != 0:
            raise FixupError(f"`{cmd}` exited {proc.returncode}: {(proc.stderr or proc.stdout).strip()[-500:]}",
                             step=step.name)
        return proc

    def __exit__(self, *exc: object) -> None:
        for p in reversed(self.created):
            with contextlib.suppress(OSError):
                p.rmdir() if p.is_dir() and not p.is_symlink() else p.unlink()
        self.created.clear()
        for where in reversed(self.mounted):
            proc = subprocess.run(["umount", str(where)], capture_output=True)
            if proc.returncode != 0:
                subprocess.run(["umount", "-l", str(where)], capture_output=True)
        self.mounted.clear()


#: The order they run in, and the names ``skip`` accepts.
ORDER = ("fstab", "network", "cloudinit", "selinux", "initramfs", "grub")


def _modules() -> dict[str, Any]:
    from cvmigrate.receiver.fixups import cloudinit, fstab, grub, initramfs, network, selinux
    return {m.NAME: m for m in (fstab, network, cloudinit, selinux, initramfs, grub)}


def run_fixups(root: Path, plan: Any, *, chroot_tools: bool, skip: Sequence[str] = (),
               timestamp: str | None = None, source: Any = None, keep_static_ip: bool = False) -> FixupReport:
    """Run every fix-up on the migrated ``root`` according to the disk ``plan``.

    ``chroot_tools``: run grub-install, grub-mkconfig, update-initramfs/dracut
    in a chroot (False: text edits only).  ``skip``: names from :data:`ORDER`
    to leave out (the boot test's negative control skips ``fstab``).  ``source``: the agent's
    :class:`~cvmigrate.common.sourcefacts.SourceFacts` (the network fix-up switches its static primary
    interface to DHCP unless ``keep_static_ip``).
    """
    root = Path(root)
    unknown = set(skip) - set(ORDER)
    if unknown:
        raise FixupError(f"unknown fix-up(s) {sorted(unknown)}; known: {', '.join(ORDER)}", step="run")
    stamp = timestamp or time.strftime("%Y%m%dT%H%M%S")
    backup_dir = root / BACKUP_DIR / stamp
    report = FixupReport(root=str(root), backup_dir=str(backup_dir))
    modules = _modules()
    with contextlib.ExitStack() as stack:
        chroot = stack.enter_context(_Chroot(root, plan)) if chroot_tools else None
        for name in ORDER:
            step = FixupStep(name)
            report.steps.append(step)
            if name in skip:
                step.status = "skipped"
                step.messages.append("skipped on request")
                continue
            ctx = FixupContext(root, plan, chroot_tools=chroot_tools, backup_dir=backup_dir, step=step)
            ctx._chroot = chroot
            ctx.source, ctx.keep_static_ip = source, keep_static_ip
            try:
                modules[name].fix(ctx)
            except Exception as exc:  # noqa: BLE001 - one fix-up failing must not hide the others' results
                step.status = "failed"
                step.messages.append(str(exc))
                logger.error("fix-up %s failed: %s", name, exc)
    logger.info("fix-ups on %s (backups in %s):\n%s", root, backup_dir, report.summary())
    return report


@contextlib.contextmanager
def chrooted(root: Path, plan: Any) -> Iterator[_Chroot]:
    """The chroot environment on its own (tests, manual repairs)."""
    with _Chroot(Path(root), plan) as c:
        yield c
