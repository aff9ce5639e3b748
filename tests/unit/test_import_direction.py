"""The import rules of docs/design.md (section 2): common imports no sibling; the agent and the
receiver never import the controller (nor the cloud SDK); and the agent, the receiver and common
load nothing beyond the light base dependencies when they are imported."""
import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


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


@pytest.mark.parametrize("folder,forbidden", [
    ("common", ("cvmigrate.agent", "cvmigrate.receiver", "cvmigrate.controller", "tencentcloud")),
    ("agent", ("cvmigrate.controller", "tencentcloud")),
    ("receiver", ("cvmigrate.controller", "cvmigrate.agent", "tencentcloud")),
])
def test_import_direction(folder, forbidden):
    bad = [(f, m) for f, m in _imports(folder) if m.startswith(forbidden)]
    assert not bad, f"{folder}/ must not import {forbidden}: {bad}"


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
