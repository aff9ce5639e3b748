"""A hostile agent: someone holding a valid data-plane credential (a compromised
source server) speaks the wire protocol through the generated stubs to a real
``cvmigrate receive`` process and tries to get out of ``--root``.

One test per finding of issue 11; several spread the attack over passes (each
pass is one Transfer stream, as the agent's would be).  Every test checks the
status the receiver answers *and* that nothing outside the root (nor the
receiver's state) changed.
"""
from __future__ import annotations

import hashlib
import os
import sqlite3
import stat
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import grpc
import pytest

from cvmigrate.common.hashing import FileHasher, chunk_hash
from cvmigrate.common.model import PROTOCOL_VERSION
from cvmigrate.common.rpc import channel_options
from cvmigrate.common.serde import entry_from_proto
from cvmigrate.common.shards import MAX_STREAMS, shard_of_dir
from cvmigrate.proto import transfer_pb2 as pb
from cvmigrate.proto import transfer_pb2_grpc as pb_grpc
from cvmigrate.receiver.fsops import tmp_name
from tests.helpers.procs import TEST_TOKEN, start_receiver
from tests.helpers.wire import transfer_outcome

if TYPE_CHECKING:
    from cvmigrate.common.tls import MigrationTokens, PkiPaths

INVALID = grpc.StatusCode.INVALID_ARGUMENT


@pytest.fixture
def world(tmp_path: Path) -> tuple[Path, Path]:
    """(root, outside): the receiver's root and a directory beside it on the same filesystem."""
    root, outside = tmp_path / "dst", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    (outside / "victim").write_bytes(b"precious\n")
    os.chmod(outside / "victim", 0o644)
    return root, outside


@pytest.fixture
def receiver(world: tuple[Path, Path], tmp_path: Path) -> Iterator[tuple[str, Path]]:
    root, _ = world
    with start_receiver(root, work_dir=tmp_path / "recv") as rp:
        yield rp.address, root


def snapshot(*dirs: Path) -> dict[str, tuple[int, int, str]]:
    """(mode, nlink, content hash) of every object under ``dirs`` (the receiver's own state left out unless
    given itself): compared before and after an attack."""
    out: dict[str, tuple[int, int, str]] = {}
    for d in dirs:
        for dirpath, dirnames, filenames in os.walk(d):
            dirnames[:] = [n for n in dirnames if n != ".cvmigrate"]
            for n in dirnames + filenames:
                p = os.path.join(dirpath, n)
                st = os.lstat(p)
                digest = ""
                if stat.S_ISREG(st.st_mode):
                    digest = hashlib.sha256(Path(p).read_bytes()).hexdigest()
                out[p] = (st.st_mode, st.st_nlink, digest)
    return out


def state_intact(state: Path, paths: set[bytes]) -> None:
    """The journal is a single-named plain file, sound, and still knows ``paths``."""
    st = os.lstat(state / "journal.db")
    assert stat.S_ISREG(st.st_mode) and st.st_nlink == 1
    db = sqlite3.connect(state / "journal.db")
    try:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        known = {r[0] for r in db.execute("SELECT path FROM entries")}
    finally:
        db.close()
    assert paths <= known, (paths, known)


#: How the hostile agent's streams introduce themselves: a single stream, or shard 0 of a parallel pass
#: (the shard that takes any path: the root, hard links), served by the receiver's shard session.
HELLO_SHARD: dict[str, object] = {}


@pytest.fixture(autouse=True, params=["one-stream", "shard-0-of-2"])
def stream_kind(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    if request.param == "shard-0-of-2":
        monkeypatch.setitem(HELLO_SHARD, "shard_count", 2)
    return request.param


def transfer(address: str, *messages: pb.AgentMessage, timeout: float = 20,
             token: str = TEST_TOKEN) -> tuple[list[pb.ReceiverMessage], grpc.StatusCode, str]:
    """One Transfer stream: Hello (delete on), then ``messages``, then Done."""
    shard = dict(HELLO_SHARD)
    if shard:
        shard["pass_id"] = uuid.uuid4().hex   # every stream is its own pass (its other shards never come)
        # shard 0 takes any entry (the root, hard links) but only completions of the directories that hash
        # to it: a stream count under which every completion here does (else the stream stands alone)
        dirs = [d for m in messages if m.WhichOneof("body") == "entries"
                for d in (*m.entries.completed_dirs, *m.entries.incomplete_dirs)]
        count = next((n for n in range(2, MAX_STREAMS + 1) if all(shard_of_dir(d, n) == 0 for d in dirs)), 0)
        shard["shard_count"] = count
    hello = pb.AgentMessage(hello=pb.Hello(protocol_version=PROTOCOL_VERSION, options=pb.Options(delete=True),
                                           **shard))  # type: ignore[arg-type]
    done = pb.AgentMessage(done=pb.Done())
    return transfer_outcome(address, [hello, *messages, done], timeout=timeout,
                            metadata=(("authorization", f"Bearer {token}"),))


def ent(path: bytes, kind: pb.Kind = pb.REGULAR, **kw) -> pb.Entry:
    kw.setdefault("mode", 0o644)
    kw.setdefault("uid", os.geteuid())
    kw.setdefault("gid", os.getegid())
    kw.setdefault("mtime_ns", 1_600_000_000_000_000_000)
    return pb.Entry(path=path, kind=kind, **kw)


ROOT = ent(b"", pb.DIRECTORY, id=1, mode=0o755)


def entries(*es: pb.Entry, completed: tuple[bytes, ...] = ()) -> pb.AgentMessage:
    return pb.AgentMessage(entries=pb.EntryBatch(entries=list(es), completed_dirs=list(completed)))


def file_data(file_id: int, data: bytes) -> pb.AgentMessage:
    """The whole content of a small file: one uncompressed segment and its end."""
    h = FileHasher()
    h.update(data)
    seg = pb.Segment(codec=pb.RAW, raw_length=len(data), data=data,
                     chunks=[pb.ChunkRef(file_id=file_id, offset=0, length=len(data), hash=chunk_hash(data))])
    return pb.AgentMessage(data=pb.DataBatch(segments=[seg] if data else [],
                                             ends=[pb.FileEnd(file_id=file_id, size=len(data), hash=h.digest())]))


def send_file(address: str, path: bytes, data: bytes, *, extra: tuple[pb.Entry, ...] = (),
              mtime_ns: int = 1_600_000_000_000_000_000) -> tuple[grpc.StatusCode, str]:
    _, code, details = transfer(address, entries(ROOT, *extra, ent(path, id=9, size=len(data), mtime_ns=mtime_ns)),
                                file_data(9, data))
    return code, details


# ------------------------------------------------------------------ temporary-name planting
@pytest.mark.parametrize("kind", ["regular", "hardlink", "fifo", "symlink"])
def test_entry_in_the_temporary_namespace_is_refused(receiver, world, kind):
    address, root = receiver
    (root / "f").write_bytes(b"x")
    before = snapshot(*world)
    tmp = tmp_name(b"f")
    e = {"regular": ent(tmp, id=2, size=1), "hardlink": ent(tmp, id=2, hardlink_to=b"f"),
         "fifo": ent(tmp, pb.FIFO, id=2), "symlink": ent(tmp, pb.SYMLINK, id=2, link_target=b"/etc/passwd")}[kind]
    _, code, details = transfer(address, entries(ROOT, e))
    assert code == INVALID, details
    assert "temporary namespace" in details
    assert snapshot(*world) == before


def test_planted_hard_link_at_the_temporary_name_is_not_written_through(receiver, world):
    """An entry left at a file's temporary name (a hard link to a file outside the root, as an
    earlier pass or the source's disk may hold) is replaced, never opened: the outside file keeps its bytes."""
    address, root = receiver
    _, outside = world
    os.link(outside / "victim", root / os.fsdecode(tmp_name(b"f")))
    code, details = send_file(address, b"f", b"attacker data\n")
    assert code == grpc.StatusCode.OK, details
    assert (outside / "victim").read_bytes() == b"precious\n"
    assert stat.S_IMODE(os.stat(outside / "victim").st_mode) == 0o644
    assert (root / "f").read_bytes() == b"attacker data\n"


def test_planted_device_at_the_temporary_name_is_not_written_through(receiver, world, tmp_path):
    """A character device at the temporary name (here /dev/null's numbers; any disk's would do) is replaced."""
    if os.geteuid() != 0:
        pytest.skip("mknod needs root")
    address, root = receiver
    dev = root / os.fsdecode(tmp_name(b"f"))
    os.mknod(dev, stat.S_IFCHR | 0o600, os.makedev(1, 3))
    code, details = send_file(address, b"f", b"data\n")
    assert code == grpc.StatusCode.OK, details
    assert (root / "f").read_bytes() == b"data\n" and stat.S_ISREG(os.lstat(root / "f").st_mode)
    assert not os.path.lexists(dev)


def _craft_partial(root: Path, path: bytes, tmp: bytes, entry: pb.Entry) -> None:
    """What the issue's chain produced: a journal row naming a temporary file outside the root."""
    e = entry_from_proto(entry)
    db = sqlite3.connect(root / ".cvmigrate" / "journal.db", isolation_level=None)
    db.execute("INSERT OR REPLACE INTO partial VALUES(?,?,?,?,?,?)",
               (path, tmp, e.signature(), e.ino, e.ctime_ns, (0).to_bytes(8, "big") + bytes(16)))
    db.close()


@pytest.mark.parametrize("matching", [True, False], ids=["resumed", "stale"])
def test_journal_partial_outside_the_root_is_ignored(receiver, world, matching):
    """Pass 1 creates the journal; the journal then names /outside/victim as f's partial file (resumed: its
    signature matches, so the old code wrote into it, chmod'ed it and renamed it in; stale: the old code
    unlinked it).  Pass 2 must leave it alone."""
    address, root = receiver
    _, outside = world
    assert send_file(address, b"g", b"first pass\n")[0] == grpc.StatusCode.OK
    data = b"second pass\n"
    e = ent(b"f", id=9, size=len(data), mode=0o4755)
    _craft_partial(root, b"f", os.fsencode(outside / "victim") if matching else b"../outside/victim",
                   e if matching else ent(b"f", id=9, size=1))
    before = snapshot(outside)
    _, code, details = transfer(address, entries(ROOT, ent(b"g", id=3, size=11), e), file_data(9, data))
    assert code == grpc.StatusCode.OK, details
    assert snapshot(outside) == before
    assert (root / "f").read_bytes() == data


# ------------------------------------------------------------------ the state directory
@pytest.mark.parametrize("attack", ["hardlink-to-journal", "hardlink-temp-to-journal", "chmod-state-dir",
                                    "file-in-state-dir", "delete-in-state-dir"])
def test_state_directory_is_unreachable(receiver, world, attack):
    address, root = receiver
    assert send_file(address, b"a", b"pass one\n")[0] == grpc.StatusCode.OK
    before = snapshot(world[1])
    msg = {
        "hardlink-to-journal": entries(ROOT, ent(b"j", id=2, hardlink_to=b".cvmigrate/journal.db")),
        "hardlink-temp-to-journal": entries(ROOT, ent(tmp_name(b"a"), id=2, hardlink_to=b".cvmigrate/journal.db")),
        "chmod-state-dir": entries(ROOT, ent(b".cvmigrate", pb.DIRECTORY, id=2, mode=0o777)),
        "file-in-state-dir": entries(ROOT, ent(b".cvmigrate/journal.db", id=2, size=3)),
        "delete-in-state-dir": entries(ROOT, completed=(b".cvmigrate",)),
    }[attack]
    _, code, details = transfer(address, msg)
    assert code == INVALID, details
    assert "state directory" in details or "temporary namespace" in details
    assert snapshot(world[1]) == before
    state_intact(root / ".cvmigrate", {b"a"})


def test_nested_state_directory_is_protected_across_passes(world, tmp_path):
    """--state-dir deep inside the root: unreachable by any path, and never removed by mirroring --
    neither when its parent is mirrored nor when a file replaces one of the directories holding it."""
    root, outside = world
    state = root / "var" / "lib" / "cvm-state"
    with start_receiver(root, "--state-dir", str(state), work_dir=tmp_path / "recv") as rp:
        address = rp.address
        var, lib = ent(b"var", pb.DIRECTORY, id=2, mode=0o755), ent(b"var/lib", pb.DIRECTORY, id=3, mode=0o755)
        assert send_file(address, b"var/lib/x", b"x\n", extra=(var, lib))[0] == grpc.StatusCode.OK
        state_intact(state, {b"var/lib/x"})
        # pass 2: reach into it by path, and by a hard link
        for msg in (entries(ROOT, var, lib, ent(b"var/lib/cvm-state/journal.db", id=4, size=1)),
                    entries(ROOT, var, lib, ent(b"j", id=4, hardlink_to=b"var/lib/cvm-state/journal.db")),
                    entries(ROOT, var, lib, ent(b"var/lib/cvm-state", pb.DIRECTORY, id=4, mode=0o777))):
            _, code, details = transfer(address, msg)
            assert code == INVALID, details
            assert "state directory" in details
        # pass 3: the source's /var/lib has no cvm-state: mirroring keeps it
        _, code, details = transfer(address, entries(ROOT, var, lib, completed=(b"var/lib", b"var", b"")))
        assert code == grpc.StatusCode.OK, details
        # pass 4: the source's /var became a file: the directory holding the state is not replaced
        _, code, details = transfer(address, entries(ROOT, ent(b"var", id=2, size=0)), file_data(2, b""))
        assert code == INVALID, details
        state_intact(state, {b"var/lib"})  # x was mirrored away in pass 3: the journal follows


# ------------------------------------------------------------------ hangs
def test_fifo_where_the_journal_knows_a_file_does_not_hang(receiver, world):
    """`mv a b; mkfifo a` on the source: b's content is looked for at a (same size and mtime), where a FIFO
    now stands.  The old receiver blocked in open() forever; now the FIFO is never opened for data."""
    address, root = receiver
    data = os.urandom(200_000)
    assert send_file(address, b"a", data)[0] == grpc.StatusCode.OK
    msgs = [entries(ROOT, ent(b"a", pb.FIFO, id=2), ent(b"b", id=3, size=len(data))), file_data(3, data)]
    _, code, details = transfer(address, *msgs, timeout=15)
    assert code == grpc.StatusCode.OK, details
    assert stat.S_ISFIFO(os.lstat(root / "a").st_mode)
    assert (root / "b").read_bytes() == data


# ------------------------------------------------------------------ malformed fields
@pytest.mark.parametrize("bad", ["nul-link-target", "nul-xattr-name", "empty-xattr-name", "huge-uid", "huge-size",
                                 "huge-rdev", "far-offset", "far-end"])
def test_malformed_fields_are_invalid_argument(receiver, world, bad):
    address, root = receiver
    before = snapshot(*world)
    huge = 1 << 62
    msgs = {
        "nul-link-target": [entries(ROOT, ent(b"l", pb.SYMLINK, id=2, link_target=b"a\0b"))],
        "nul-xattr-name": [entries(ROOT, ent(b"d", pb.DIRECTORY, id=2,
                                             xattrs=[pb.Xattr(name=b"user.a\0b", value=b"")]))],
        "empty-xattr-name": [entries(ROOT, ent(b"d", pb.DIRECTORY, id=2, xattrs=[pb.Xattr(name=b"", value=b"v")]))],
        "huge-uid": [entries(ROOT, ent(b"d", pb.DIRECTORY, id=2, uid=(1 << 32) - 1))],
        "huge-size": [entries(ROOT, ent(b"f", id=2, size=huge))],
        "huge-rdev": [entries(ROOT, ent(b"c", pb.CHARDEV, id=2, rdev=(1 << 64) - 1))],
        "far-offset": [entries(ROOT, ent(b"f", id=2, size=10)), pb.AgentMessage(data=pb.DataBatch(segments=[
            pb.Segment(codec=pb.RAW, raw_length=1, data=b"x", chunks=[
                pb.ChunkRef(file_id=2, offset=1 << 50, length=1, hash=chunk_hash(b"x"))])]))],
        "far-end": [entries(ROOT, ent(b"f", id=2, size=10)), pb.AgentMessage(data=pb.DataBatch(ends=[
            pb.FileEnd(file_id=2, size=huge, hash=bytes(16))]))],
    }[bad]
    _, code, details = transfer(address, *msgs, timeout=15)
    assert code == INVALID, (code, details)
    assert snapshot(world[1]) == {k: v for k, v in before.items() if k.startswith(str(world[1]))}


# ------------------------------------------------------------------ roles
@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> tuple[PkiPaths, MigrationTokens]:
    from cvmigrate.common.tls import MigrationTokens, new_token
    from cvmigrate.controller.pki import mint_migration_pki

    d = tmp_path_factory.mktemp("pki")
    paths = mint_migration_pki(d, hosts=["127.0.0.1"], migration_id="mig-roles")
    tokens = MigrationTokens(data=new_token(), control=new_token(), agent=new_token())
    for name, value in (("token", tokens.data), ("control-token", tokens.control)):
        (d / name).write_text(value + "\n")
        os.chmod(d / name, 0o600)
    return paths, tokens


@pytest.fixture
def tls_receiver(world: tuple[Path, Path], tmp_path: Path,
                 pki: tuple[PkiPaths, MigrationTokens]) -> Iterator[tuple[str, Path]]:
    """`cvmigrate receive` as the controller starts it: mutual TLS, a data token and a control token."""
    paths, _ = pki
    root, _ = world
    d = Path(paths.directory)
    with start_receiver(root, "--tls-ca", paths.ca_cert, "--tls-cert", paths.server_cert, "--tls-key",
                        paths.server_key, "--token-file", str(d / "token"), "--control-token-file",
                        str(d / "control-token"), insecure=False, work_dir=tmp_path / "recv") as rp:
        yield rp.address, root


def _fixups(address: str, sec) -> tuple[grpc.StatusCode, str]:
    with sec.channel(address, channel_options()) as ch:
        try:
            pb_grpc.ReceiverStub(ch).RunFixups(pb.FixupsRequest(source_filesystems_json="[]"),
                                              metadata=sec.control_metadata(), timeout=20)
            return grpc.StatusCode.OK, ""
        except grpc.RpcError as exc:
            return exc.code(), exc.details()


def _finalize(address: str, sec) -> tuple[grpc.StatusCode, str]:
    with sec.channel(address, channel_options()) as ch:
        try:
            pb_grpc.ReceiverStub(ch).Finalize(pb.FinalizeRequest(), metadata=sec.control_metadata(), timeout=20)
            return grpc.StatusCode.OK, ""
        except grpc.RpcError as exc:
            return exc.code(), exc.details()


def test_agent_credential_cannot_call_control_methods(tls_receiver, pki):
    """What the controller hands the agent (its certificate and the data token) transfers data and nothing
    else; the controller's own credential runs the fix-ups.  The old receiver accepted the one shared token."""
    from cvmigrate.common.tls import TransportSecurity

    address, root = tls_receiver
    paths, tokens = pki
    agent = TransportSecurity.agent_data(paths, tokens)
    assert agent.control_metadata() == agent.metadata()     # it has nothing else to send
    code, details = _fixups(address, agent)
    assert code == grpc.StatusCode.PERMISSION_DENIED, details
    assert "control credential" in details
    code, details = _finalize(address, agent)
    assert code == grpc.StatusCode.PERMISSION_DENIED, details
    # even with the control token stolen, the agent's certificate is refused control methods
    stolen = TransportSecurity(role="client", ca=paths.ca_cert, cert=paths.agent_cert, key=paths.agent_key,
                               server_name=paths.server_name, token=tokens.control)
    assert _fixups(address, stolen)[0] == grpc.StatusCode.PERMISSION_DENIED
    # the data plane still works with the agent's credential
    with agent.channel(address, channel_options()) as ch:
        hello = pb.AgentMessage(hello=pb.Hello(protocol_version=PROTOCOL_VERSION, options=pb.Options()))
        out = list(pb_grpc.ReceiverStub(ch).Transfer(iter([hello, entries(ROOT), pb.AgentMessage(done=pb.Done())]),
                                                     metadata=agent.metadata(), timeout=20))
    assert out[-1].WhichOneof("body") == "summary"
    controller = TransportSecurity.from_pki(paths, "client", tokens)
    code, details = _fixups(address, controller)
    assert code == grpc.StatusCode.OK, details
    assert (root / ".cvmigrate" / "journal.db").exists()
    assert _finalize(address, stolen)[0] == grpc.StatusCode.PERMISSION_DENIED
    assert (root / ".cvmigrate" / "journal.db").exists()
    assert _finalize(address, controller) == (grpc.StatusCode.OK, "")
    assert not (root / ".cvmigrate").exists()


def test_agent_gets_only_data_plane_material(tmp_path, pki):
    """The PassRequest credentials the controller builds for an agent carry the agent's certificate and the
    data token: never the control token, the controller's key or the receiver's key."""
    from cvmigrate.common.tls import TransportSecurity
    from cvmigrate.controller.agent_client import credentials_from_security

    paths, tokens = pki
    creds = credentials_from_security(TransportSecurity.agent_data(paths, tokens), None)
    assert creds.token == tokens.data
    assert creds.client_key_pem == Path(paths.agent_key).read_bytes()
    blob = creds.ca_pem + creds.client_cert_pem + creds.client_key_pem + creds.token.encode()
    for secret in (tokens.control.encode(), tokens.agent.encode(), Path(paths.client_key).read_bytes(),
                   Path(paths.server_key).read_bytes(), Path(paths.agentd_key).read_bytes()):
        assert secret not in blob


def test_insecure_receiver_requires_a_token(tmp_path):
    import subprocess
    import sys

    from tests.helpers.procs import child_env

    env = child_env()
    env.pop("CVMIGRATE_TOKEN", None)
    p = subprocess.run([sys.executable, "-m", "cvmigrate", "receive", "--listen", "127.0.0.1:0", "--root",
                        str(tmp_path), "--insecure"], capture_output=True, text=True, env=env, timeout=60)
    assert p.returncode != 0
    assert "--insecure still requires a token" in p.stderr


# ------------------------------------------------------------------ fix-ups on a tree the source planted
def _fixup_tree(root: Path) -> None:
    from tests.unit.test_fixups_misc import _tree

    _tree(root)


@pytest.mark.parametrize("planted", ["old-temp-name", "backup-dir"])
def test_fixups_do_not_follow_planted_symlinks(tmp_path, planted):
    """Symlinks the source planted in the migrated tree (the fix-ups' old temporary name, the backup
    directory) never move a fix-up's write onto a host file."""
    from cvmigrate.receiver.fixups import run_fixups
    from tests.unit.test_fixups_misc import PLAN

    root, outside = tmp_path / "root", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    (outside / "victim").write_text("host file\n")
    _fixup_tree(root)
    if planted == "old-temp-name":
        os.symlink(outside / "victim", root / "etc" / ".fstab.cvmigrate.tmp")
    elif planted == "backup-dir":
        (root / "var").mkdir()
        os.symlink(outside, root / "var" / "backups")
    before = snapshot(outside)
    report = run_fixups(root, PLAN, chroot_tools=False, timestamp="T1")
    assert snapshot(outside) == before
    if planted == "backup-dir":
        assert report.step("fstab").status == "failed"
        assert "symlink" in " ".join(report.step("fstab").messages)
    else:
        assert report.step("fstab").status == "changed", report.summary()


def test_chroot_mounts_only_onto_real_directories(tmp_path):
    """/dev in the migrated root is a symlink to a host directory: the bind mount is refused, not followed."""
    if os.geteuid() != 0:
        pytest.skip("mount needs root")
    import subprocess

    from cvmigrate.receiver.fixups import FixupError, chrooted
    from tests.unit.test_fixups_misc import PLAN

    root, outside = tmp_path / "root", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    os.symlink(outside, root / "dev")
    try:
        with pytest.raises(FixupError, match="symlink"), chrooted(root, PLAN):
            pass
        assert not os.path.ismount(outside)
    finally:
        while os.path.ismount(outside):   # the old code mounted /dev here
            subprocess.run(["umount", "-l", str(outside)], check=False)


def test_finalize_removes_the_journal_and_every_temporary_file(world, tmp_path):
    """Known partial files, orphans a crash left unjournaled (any type), and the state directory go; a
    temporary-looking directory and everything else stay; nothing outside the root is touched."""
    from cvmigrate.receiver.finalize import finalize

    root, outside = world
    with start_receiver(root, work_dir=tmp_path / "recv") as rp:
        assert send_file(rp.address, b"keep", b"data\n")[0] == grpc.StatusCode.OK
    (root / "sub").mkdir()
    orphan_file = root / "sub" / os.fsdecode(tmp_name(b"x"))
    orphan_file.write_bytes(b"half")
    os.symlink(outside / "victim", root / os.fsdecode(tmp_name(b"y")))
    os.mkfifo(root / "sub" / os.fsdecode(tmp_name(b"z")))
    before = snapshot(outside)
    done = finalize(str(root))
    assert done.state_removed and done.temporary_files_removed == 3
    assert not (root / ".cvmigrate").exists() and not list(root.rglob(".cvm-*.tmp"))
    assert (root / "keep").read_bytes() == b"data\n"
    assert snapshot(outside) == before
    assert finalize(str(root)).temporary_files_removed == 0   # again: nothing to do


def test_pending_bound_is_enforced(receiver, world):
    """An agent that never sends data for the files it announced cannot grow the receiver's state without
    bound: past the announced pending limits the stream ends with INVALID_ARGUMENT."""
    from cvmigrate.receiver.session import MAX_AWAITING

    address, root = receiver
    n, per = MAX_AWAITING + 10, 5000
    batches = [entries(*([ROOT] if i == 0 else []),
                       *(ent(b"f%07d" % k, id=k + 2, size=10) for k in range(i, min(i + per, n))))
               for i in range(0, n, per)]
    _, code, details = transfer(address, *batches, timeout=120)
    assert code == INVALID, details
    assert "max_pending_entries" in details
