"""Every package folder is listed in pyproject.toml: a wheel (the container image,
the SSH bootstrap bundle) silently drops any that is not."""
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_every_package_is_listed():
    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    mapping, listed = cfg["package-dir"], set(cfg["packages"])
    found = set()
    for top, folder in mapping.items():
        base = ROOT / folder
        for init in base.rglob("__init__.py"):
            rel = init.parent.relative_to(base)
            found.add(".".join([top, *rel.parts]) if rel.parts else top)
    assert found == listed, (f"missing from pyproject packages: {sorted(found - listed)}; "
                             f"stale: {sorted(listed - found)}")
