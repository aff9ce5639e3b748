"""Generated stubs must match the .proto files: regenerate and compare."""
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_generated_stubs_are_fresh():
    proc = subprocess.run([sys.executable, str(ROOT / "tools" / "genproto.py"), "--check"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_check_detects_a_stale_stub(tmp_path, monkeypatch):
    import importlib.util

    spec = importlib.util.spec_from_file_location("genproto", ROOT / "tools" / "genproto.py")
    assert spec is not None and spec.loader is not None
    genproto = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(genproto)
    # a copy of the package dir with one stub altered must be reported stale
    pkg = tmp_path / "proto" / "cvmigrate" / "proto"
    pkg.mkdir(parents=True)
    for f in (ROOT / "proto" / "cvmigrate" / "proto").iterdir():
        if f.is_file():
            (pkg / f.name).write_bytes(f.read_bytes())
    stub = pkg / "transfer_pb2.py"
    stub.write_text(stub.read_text() + "\n# edited by hand\n")
    monkeypatch.setattr(genproto, "PROTO_ROOT", tmp_path / "proto")
    monkeypatch.setattr(genproto, "PACKAGE_DIR", pkg)
    assert genproto.main(["--check"]) == 1
