"""The agent and receiver code imports with only what the one-file executable carries.

tools/build_bundle.sh builds CPython without OpenSSL (gRPC brings its own
TLS), bz2, readline, curses, dbm, tkinter, crypt, uuid's C part and nis.  A
module-level ``import ssl`` in code the agent or receiver loads breaks the
executable on every source server while every test in a normal venv stays
green; this test blocks those modules in a fresh interpreter and imports
every module of the packages the executable runs (and the ``check`` command).
"""
from __future__ import annotations

import subprocess
import sys
import textwrap

#: Standard modules the bundled interpreter does not have (tools/bundle/build_python.sh).
MISSING_IN_BUNDLE = ("ssl", "_ssl", "_hashlib", "bz2", "_bz2", "readline", "curses", "_curses", "dbm", "_dbm",
                     "_gdbm", "tkinter", "_tkinter", "crypt", "_crypt", "_uuid", "nis")
PACKAGES = ("cvmigrate.agent", "cvmigrate.receiver", "cvmigrate.common", "cvmigrate.proto")
MODULES = ("cvmigrate.cli", "cvmigrate.controller.checks")

_SCRIPT = textwrap.dedent("""
    import importlib, pkgutil, sys
    for name in {missing!r}:
        sys.modules[name] = None          # "import name" now raises ImportError
    failed = []
    names = list({modules!r})
    for pkg in {packages!r}:
        mod = importlib.import_module(pkg)
        names += [m.name for m in pkgutil.walk_packages(mod.__path__, pkg + ".")]
    for name in names:
        try:
            importlib.import_module(name)
        except Exception as exc:
            failed.append(f"{{name}}: {{type(exc).__name__}}: {{exc}}")
    from cvmigrate.common.connectfail import PROBE_CLOSED, TlsProbe
    assert TlsProbe()("127.0.0.1:1", True) == PROBE_CLOSED
    print(len(names))
    sys.exit("\\n".join(failed) or None)
""")


def test_agent_and_receiver_import_without_the_modules_the_bundle_lacks() -> None:
    script = _SCRIPT.format(missing=MISSING_IN_BUNDLE, modules=MODULES, packages=PACKAGES)
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert int(r.stdout.strip()) > 40, r.stdout
