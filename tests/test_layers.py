"""The layers are visible in the folder tree and each depends only on the ones below it.

storage (``djfs.stores``, ``djfs.cache``) <- external objects (``djfs.objects``) <- the relational layer
(``djfs.relational``) <- the mount (``djfs.fs``) <- the command line and test servers; the primitives at the top
of the package (errors, settings, hashing, blob, npy, connection, singleflight) sit below all of them.
An import counts wherever it is written (module level or inside a function), except under ``TYPE_CHECKING``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import djfs

PACKAGE = Path(djfs.__file__).parent
PRIMITIVES = {"errors", "settings", "hashing", "blob", "npy", "connection", "singleflight"}
RANK = {"primitives": 0, "stores": 1, "cache": 1, "objects": 2, "relational": 3, "fs": 4, "cli": 5, "testing": 5}


def layer_of(module: str) -> str:
    """``djfs.objects.gc`` -> ``objects``; ``djfs.blob`` -> ``primitives``."""
    parts = module.split(".")
    if len(parts) == 1:
        return "facade"
    head = parts[1]
    return "primitives" if head in PRIMITIVES else head


def module_name(path: Path) -> str:
    relative = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(relative.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _type_checking_only(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def imports_of(path: Path) -> list[tuple[str, list[str], int]]:
    """(absolute module, imported names, line) of every import in the file outside ``if TYPE_CHECKING:``."""
    module = module_name(path)
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    found: list[tuple[str, list[str], int]] = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _type_checking_only(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            target = ".".join(base + ([node.module] if node.module else []))
            found.append((target, [alias.name for alias in node.names], node.lineno))
        elif isinstance(node, ast.Import):
            found.extend((alias.name, [], node.lineno) for alias in node.names)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text(), str(path)))
    return [(target, names, line) for target, names, line in found if target.split(".")[0] == "djfs"]


def violations() -> list[str]:
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        module = module_name(path)
        layer = layer_of(module)
        if layer == "facade":
            continue
        for target, names, line in imports_of(path):
            targets = [target] if target != "djfs" else [f"djfs.{name}" for name in names]
            for each in targets:
                if each == "djfs.config":  # the configuration object the facade defines before anything else
                    continue
                used = layer_of(each)
                if used == "facade" or RANK[used] > RANK[layer]:
                    found.append(f"{module} ({layer}) imports {each} ({used}) at line {line}")
    return found


def test_every_module_is_in_a_known_layer() -> None:
    layers = {layer_of(module_name(path)) for path in PACKAGE.rglob("*.py")}
    assert layers <= set(RANK) | {"facade"}, layers - set(RANK)


def test_no_layer_imports_one_above_it() -> None:
    assert violations() == []


@pytest.mark.parametrize("source, expected", [
    ("from ..relational.table import Table\n", "djfs.relational.table (relational)"),
    ("from ..fs import tree\n", "djfs.fs (fs)"),
])
def test_an_upward_import_is_reported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, source: str,
                                      expected: str) -> None:
    """The checker itself can fail: a storage module importing upward is named."""
    fake_package = tmp_path / "djfs"
    (fake_package / "cache").mkdir(parents=True)
    (fake_package / "__init__.py").write_text("")
    (fake_package / "cache" / "__init__.py").write_text("")
    (fake_package / "cache" / "bad.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                                                   "    from ..relational.heading import Heading\n" + source)
    monkeypatch.setitem(globals(), "PACKAGE", fake_package)
    found = violations()
    assert found == [f"djfs.cache.bad (cache) imports {expected} at line 4"]
