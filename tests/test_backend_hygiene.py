"""Static checks of the package source: backend.py alone knows CuPy, and every ``xp.<name>`` the
package uses exists in real CuPy (tests/cupy_standin/names.json, generated from CuPy)."""
from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "dualtensor"
NAMES = json.loads((Path(__file__).with_name("cupy_standin") / "names.json").read_text())
SOURCES = sorted(PACKAGE.rglob("*.py"))


def names_cupy(tree: ast.AST) -> list[str]:
    """Where a module imports or names CuPy (imports, the names cupy/cupyx, "cupy..." strings used
    as module names); words in docstrings and comments do not count."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [a.name for a in node.names if a.name.split(".")[0] in ("cupy", "cupyx")]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in ("cupy", "cupyx"):
            found.append(node.module)
        elif isinstance(node, ast.Name) and node.id in ("cupy", "cupyx"):
            found.append(f"name {node.id} (line {node.lineno})")
        elif isinstance(node, ast.Call) and any(isinstance(a, ast.Constant) and isinstance(a.value, str)
                                                and a.value.split(".")[0] in ("cupy", "cupyx") for a in node.args):
            found.append(f"a call with a 'cupy...' argument (line {node.lineno})")
    return found


@pytest.mark.parametrize("path", SOURCES, ids=[str(p.relative_to(PACKAGE)) for p in SOURCES])
def test_only_backend_names_cupy(path):
    if path.name == "backend.py" and path.parent == PACKAGE:
        return
    assert names_cupy(ast.parse(path.read_text())) == [], f"{path} names CuPy; only dualtensor/backend.py may"


def _xp_uses(tree: ast.AST) -> set[tuple[str, str]]:
    """(module, name) for every ``xp.name`` / ``xp.linalg.name`` / ``xp.random.name`` and the same on
    ``get_xp(...)`` / ``_xp(...)`` results."""
    uses = set()

    def root(node: ast.AST) -> bool:
        if isinstance(node, ast.Name):
            return node.id == "xp"
        return isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("get_xp", "_xp")

    for node in ast.walk(tree):
        if not isinstance(node, ast.Attribute) or node.attr.startswith("__"):
            continue
        if root(node.value):
            uses.add(("cupy", node.attr))
        elif isinstance(node.value, ast.Attribute) and root(node.value.value) and node.value.attr in (
                "linalg", "random", "fft", "lib"):
            uses.add((f"cupy.{node.value.attr}", node.attr))
    return uses


def test_every_xp_name_the_package_uses_exists_in_cupy():
    missing = {}
    for path in SOURCES:
        for module, name in _xp_uses(ast.parse(path.read_text())):
            if name not in NAMES["modules"].get(module, {}):
                missing.setdefault(f"{module}.{name}", []).append(str(path.relative_to(PACKAGE)))
    assert missing == {}, f"not in CuPy {NAMES['cupy_version']}: {missing}"


def test_the_scan_sees_the_uses():
    uses = set()
    for path in SOURCES:
        uses |= _xp_uses(ast.parse(path.read_text()))
    assert {("cupy", "matmul"), ("cupy", "asarray"), ("cupy.linalg", "qr")} <= uses
    assert names_cupy(ast.parse("import cupy\nfrom cupyx.scipy import special\nx = cupy.ones(3)")) == [
        "cupy", "cupyx.scipy", "name cupy (line 3)"]
