"""The import rules of docs/design.md (section 2), checked on every import statement (lazy ones too),
and the agent, the receiver and common loading nothing beyond the light base dependencies when imported.

- ``common`` imports no sibling (nor the cloud SDK, nor the CLI package): it is what every side shares.
- The CLI package (the top-level ``cvmigrate/``: the ``cvmigrate`` command, argparse wiring) sits above the
  roles.  A role's command line may use only its argparse wiring (``cvmigrate.security_flags``, the
  --tls-*/--token-file/--insecure flags), which imports nothing but ``common``; nobody imports ``cvmigrate.cli``.
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


#: the CLI package's modules a role's command line may import: argparse wiring over ``common``
CLI_WIRING = ("cvmigrate.security_flags", "cvmigrate.transfer_flags")
ROLES = ("common", "proto", "agent", "receiver", "controller")


def _in_cli_package(module: str) -> bool:
    """A module of the top-level ``cvmigrate/`` package (not ``cvmigrate`` itself, which holds __version__)."""
    parts = module.split(".")
    return parts[0] == "cvmigrate" and len(parts) > 1 and parts[1] not in ROLES


def test_common_imports_only_common_and_the_stubs() -> None:
    ours = [(f, m) for f, m in _imports("common") if m.split(".")[0] == "cvmigrate" and m != "cvmigrate"]
    bad = [(f, m) for f, m in ours if not m.startswith(("cvmigrate.common", "cvmigrate.proto"))]
    assert not bad, f"common/ imports no sibling and nothing of the CLI package: {bad}"


@pytest.mark.parametrize("folder", ["agent", "receiver", "controller"])
def test_roles_use_only_the_argparse_wiring_of_the_cli_package(folder: str) -> None:
    bad = [(f, m) for f, m in _imports(folder) if _in_cli_package(m) and not m.startswith(CLI_WIRING)]
    assert not bad, f"{folder}/ may import from the CLI package only {CLI_WIRING}: {bad}"


def test_the_argparse_wiring_imports_only_common() -> None:
    files = {f"cvmigrate/{m.rsplit('.', 1)[1]}.py" for m in CLI_WIRING}
    ours = [(f, m) for f, m in _imports("cvmigrate") if f in files and m.split(".")[0] == "cvmigrate"]
    assert ours, "no imports found in the wiring modules: the paths are wrong"
    bad = [(f, m) for f, m in ours if m != "cvmigrate" and not m.startswith("cvmigrate.common")]
    assert not bad, f"the CLI package's wiring is imported by the agent and the receiver, so it uses only common: {bad}"


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


@pytest.mark.parametrize("folder", ["common", "agent", "receiver", "cvmigrate"])
def test_light_dependencies_at_import(folder):
    """An optional dependency (rich, prometheus-client, cryptography ...) is imported where it is used, inside
    the function that needs it, with a clear error when it is missing -- never when the module loads."""
    def allowed(module: str) -> bool:
        top = module.split(".")[0]
        return top in sys.stdlib_module_names or module.startswith(BASE_DEPENDENCIES) or top == "__future__"
    bad = [(f, m) for f, m in _module_level_imports(folder) if not allowed(m)]
    assert not bad, f"{folder}/ imports optional dependencies at module level: {bad}"
