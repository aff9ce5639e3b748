"""`push --mount PATH` with a source root other than /: paths inside SOURCE_DIR, anything else refused clearly."""
from __future__ import annotations

import subprocess
import sys

import pytest

from cvmigrate.agent.cli import mount_inside
from cvmigrate.common.errors import UsageError


def test_paths_inside_the_source(tmp_path, monkeypatch):
    src = tmp_path / "img"
    (src / "data/sub").mkdir(parents=True)
    assert mount_inside(str(src), str(src / "data")) == b"data"
    assert mount_inside(str(src), str(src / "data/sub") + "/") == b"data/sub"
    monkeypatch.chdir(src)
    assert mount_inside(str(src), "data") == b"data"


@pytest.mark.parametrize("mount,message", [
    ("/data", "is not inside SOURCE_DIR"),          # the path on the source server, not inside the mounted image
    ("../elsewhere", "is not inside SOURCE_DIR"),
    ("IMG", "is not inside SOURCE_DIR"),            # the source itself
    ("IMG/nope", "is not a directory"),
])
def test_paths_outside_or_missing_are_refused(tmp_path, mount, message):
    src = tmp_path / "img"
    src.mkdir()
    with pytest.raises(UsageError, match=message) as err:
        mount_inside(str(src), mount.replace("IMG", str(src)))
    if mount == "/data":
        assert f"--mount {src}/data" in str(err.value)   # the fix, spelled out


def test_cli_refuses_before_connecting(tmp_path):
    src = tmp_path / "img"
    src.mkdir()
    proc = subprocess.run([sys.executable, "-m", "cvmigrate", "push", str(src), "--to", "127.0.0.1:9", "--insecure",
                           "--mount", "/data"], capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0
    assert "--mount '/data' is not inside SOURCE_DIR" in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) <= 2, proc.stderr
