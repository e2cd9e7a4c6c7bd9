"""Every public definition of the library has a docstring: what it does, guarantees and raises."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "tideline"


def _undocumented(tree: ast.AST, path: Path, prefix: str = "") -> tuple[int, list[str]]:
    """(public definitions, those without a docstring) below ``tree``: functions, classes and their methods
    whose name does not start with ``_`` (a class's members are scanned only for a public class)."""
    total, missing = 0, []
    for node in ast.iter_child_nodes(tree):
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) or node.name.startswith("_"):
            continue
        total += 1
        if not ast.get_docstring(node):
            missing.append(f"{path.relative_to(SRC.parents[1])}:{node.lineno} {prefix}{node.name}")
        if isinstance(node, ast.ClassDef):
            n, more = _undocumented(node, path, f"{prefix}{node.name}.")
            total += n
            missing += more
    return total, missing


def test_every_public_definition_has_a_docstring() -> None:
    total, missing = 0, []
    for path in sorted(SRC.rglob("*.py")):
        n, more = _undocumented(ast.parse(path.read_text(encoding="utf-8")), path)
        total += n
        missing += more
    assert total > 0
    assert not missing, f"{len(missing)} of {total} public definitions have no docstring:\n" + "\n".join(missing)
