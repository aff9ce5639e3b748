#!/usr/bin/env python3
"""Regenerate the gRPC stubs from proto/ -- the one command for generated code.

    python tools/genproto.py           # rewrite proto/cvmigrate/proto/*_pb2*.py(i)
    python tools/genproto.py --check   # exit 1 if the committed stubs are stale

The .proto files live at the path of the Python package they generate into
(proto/cvmigrate/proto/x.proto -> cvmigrate.proto.x_pb2), so protoc writes
correct package imports by itself: no rewriting, no sys.path tricks.
"""
from __future__ import annotations

import argparse
import filecmp
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "proto"
PACKAGE_DIR = PROTO_ROOT / "cvmigrate" / "proto"
SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")


def generate(out_dir: Path) -> list[Path]:
    """Run protoc (from grpcio-tools) over every .proto into out_dir; return the outputs."""
    from grpc_tools import protoc  # dev dependency only

    protos = sorted(str(p.relative_to(PROTO_ROOT)) for p in PACKAGE_DIR.glob("*.proto"))
    args = ["protoc", f"-I{PROTO_ROOT}", f"--python_out={out_dir}", f"--pyi_out={out_dir}",
            f"--grpc_python_out={out_dir}", *protos]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed (see above)")
    return sorted(p for p in (out_dir / "cvmigrate" / "proto").iterdir() if p.name.endswith(SUFFIXES))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if the committed stubs differ")
    ns = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        outputs = generate(Path(tmp))
        if ns.check:
            stale = [p.name for p in outputs
                     if not (PACKAGE_DIR / p.name).exists() or not filecmp.cmp(p, PACKAGE_DIR / p.name, shallow=False)]
            expected = {p.name for p in outputs}
            extra = [p.name for p in PACKAGE_DIR.iterdir() if p.name.endswith(SUFFIXES) and p.name not in expected]
            if stale or extra:
                print(f"stale generated stubs: {sorted(stale + extra)}; run: python tools/genproto.py", file=sys.stderr)
                return 1
            return 0
        for p in outputs:
            (PACKAGE_DIR / p.name).write_bytes(p.read_bytes())
            print(f"wrote {(PACKAGE_DIR / p.name).relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
