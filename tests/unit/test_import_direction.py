"""The import rules of docs/design.md (section 2): common imports no sibling; the agent and the
receiver never import the controller (nor the cloud SDK)."""
import ast
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
