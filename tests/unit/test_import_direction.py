"""The import rules of docs/design.md (section 2), checked on every import statement (lazy ones too),
and the agent, the receiver and common loading nothing beyond the light base dependencies when imported.

- ``common`` imports no sibling (nor the cloud SDK): it is what every side shares.
- ``agent`` and ``receiver`` never import the controller (nor the SDK); ``receiver`` never imports the agent.
- ``controller`` talks to a remote agent only through ``common`` (``common.rpc``, ``common.passes``,
  ``common.serde``); it never imports an agent's or a receiver's server or CLI.  What it may import
  runs *in its own process*: the agent's pass APIs (``agent.push``, ``agent.shards``, ``agent.block*``:
  an in-process pass; ``agent.sourcefacts``, ``agent.verify``) and, only in the demo modules, the
  receiver's server (the demo runs a receiver in-process).

Known exceptions, listed so that none is added unnoticed (issue 14 removes them): the source probe
(``agent/sourcefacts.py``) and the pre-checks (``controller/checks.py``) read the fix-ups' tables in
``receiver.fixups``.
"""
import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

#: controller -> agent: the in-process pass APIs only
CONTROLLER_MAY_USE_AGENT = ("cvmigrate.agent.push", "cvmigrate.agent.shards", "cvmigrate.agent.block",
                            "cvmigrate.agent.sourcefacts", "cvmigrate.agent.verify")
#: agent/server or CLI modules the controller must never import, even though they share a prefix above
AGENT_SERVERS_AND_CLIS = ("cvmigrate.agent.daemon", "cvmigrate.agent.cli", "cvmigrate.agent.block_cli",
                          "cvmigrate.agent.install")
#: (file, module prefix) pairs allowed across the lines above
EXCEPTIONS = {
    ("controller/demo.py", "cvmigrate.receiver.server"), ("controller/demo.py", "cvmigrate.receiver.session"),
    ("controller/fleet_demo.py", "cvmigrate.receiver.server"),
    ("controller/fleet_demo.py", "cvmigrate.receiver.session"),
    ("controller/checks.py", "cvmigrate.receiver.fixups"),
    ("agent/sourcefacts.py", "cvmigrate.receiver.fixups"),
}


def _imports(folder: str) -> list[tuple[str, str]]:
    out = []
    for path in (ROOT / folder).rglob("*.py"):
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                out += [(str(path.relative_to(ROOT)), a.name) for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                out.append((str(path.relative_to(ROOT)), node.module))
    return out


def _excepted(path: str, module: str) -> bool:
    return any(path == f and module.startswith(m) for f, m in EXCEPTIONS)


@pytest.mark.parametrize("folder,forbidden", [
    ("common", ("cvmigrate.agent", "cvmigrate.receiver", "cvmigrate.controller", "tencentcloud")),
    ("agent", ("cvmigrate.controller", "cvmigrate.receiver", "tencentcloud")),
    ("receiver", ("cvmigrate.controller", "cvmigrate.agent", "tencentcloud")),
    ("controller", ("cvmigrate.receiver",)),
])
def test_import_direction(folder: str, forbidden: tuple[str, ...]) -> None:
    bad = [(f, m) for f, m in _imports(folder) if m.startswith(forbidden) and not _excepted(f, m)]
    assert not bad, f"{folder}/ must not import {forbidden}: {bad}"


def test_the_controller_uses_only_the_agents_in_process_apis() -> None:
    agent = [(f, m) for f, m in _imports("controller") if m.startswith("cvmigrate.agent")]
    bad = [(f, m) for f, m in agent
           if m.startswith(AGENT_SERVERS_AND_CLIS) or not m.startswith(CONTROLLER_MAY_USE_AGENT)]
    assert not bad, ("the controller drives a remote agent through common.rpc/passes/serde and runs a local "
                     f"pass through agent.push/agent.block only; it imported {bad}")


#: What `pip install cvmigrate` brings (pyproject's `dependencies`): all the agent and the receiver may
#: need to start on a production server or in a rescue system.
BASE_DEPENDENCIES = ("grpc", "google.protobuf", "xxhash", "zstandard", "pyfastcdc", "cvmigrate")


def _module_level_imports(folder: str) -> list[tuple[str, str]]:
    """Imports that run when a module is imported: its top-level statements (not function bodies, nor
    ``if TYPE_CHECKING:`` blocks), including those inside a top-level ``try`` or ``if``."""
    out = []
    for path in (ROOT / folder).rglob("*.py"):
        todo = list(ast.parse(path.read_text(), str(path)).body)
        while todo:
            node = todo.pop()
            if isinstance(node, ast.Import):
                out += [(str(path.relative_to(ROOT)), a.name) for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                out.append((str(path.relative_to(ROOT)), node.module))
            elif isinstance(node, ast.If) and "TYPE_CHECKING" not in ast.unparse(node.test):
                todo += node.body + node.orelse
            elif isinstance(node, ast.Try):
                todo += node.body + node.orelse + node.finalbody + [s for h in node.handlers for s in h.body]
    return out


@pytest.mark.parametrize("folder", ["common", "agent", "receiver"])
def test_light_dependencies_at_import(folder):
    """An optional dependency (rich, prometheus-client, cryptography ...) is imported where it is used, inside
    the function that needs it, with a clear error when it is missing -- never when the module loads."""
    def allowed(module: str) -> bool:
        top = module.split(".")[0]
        return top in sys.stdlib_module_names or module.startswith(BASE_DEPENDENCIES) or top == "__future__"
    bad = [(f, m) for f, m in _module_level_imports(folder) if not allowed(m)]
    assert not bad, f"{folder}/ imports optional dependencies at module level: {bad}"
