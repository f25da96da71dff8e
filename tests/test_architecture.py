"""The one rule of the house (ARCHITECTURE.md): every import points down.

floor 1: contract/, drivers/, webkit/  - import nothing of ours above them
floor 2: edge/, gateway/, simulators/  - import floor 1 only, never each other
floor 3: campusguard/                  - composes everything
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
OURS = {"contract", "drivers", "webkit", "edge", "gateway", "simulators", "campusguard"}
ALLOWED = {
    "contract": {"contract"},
    "drivers": {"contract", "drivers"},
    "webkit": {"webkit"},
    "edge": {"contract", "drivers", "webkit", "edge"},
    "gateway": {"contract", "drivers", "webkit", "gateway"},
    "simulators": {"contract", "drivers", "simulators"},
    "campusguard": OURS,
}


def imported_packages(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found & OURS


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_imports_point_down(package: str) -> None:
    wrong = {
        str(path.relative_to(ROOT)): sorted(imported_packages(path) - ALLOWED[package])
        for path in sorted((ROOT / package).rglob("*.py"))
        if "migrations" not in path.parts
    }
    wrong = {k: v for k, v in wrong.items() if v}
    assert not wrong, f"{package}/ may import only {sorted(ALLOWED[package])}: {wrong}"
