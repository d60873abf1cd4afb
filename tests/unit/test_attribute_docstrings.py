"""Every string that stands alone at a module's top level (past its docstring) documents the
name assigned right before it, as Sphinx and the style (DESIGN §9) read it: one left behind when
code was inserted between a name and its docstring documents nothing, or the wrong name (the
front door's ``ErrorAnswer`` lost its docstring to ``BodyMemory``, which was put between them;
``READ_FAILURES`` lost its to ``SENT_FAILURES``)."""

from __future__ import annotations

import ast
import itertools
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SOURCES = [ROOT / "daemon" / "src", ROOT / "client" / "src", ROOT / "tui" / "src"]


def stray_strings(path: Path) -> list[str]:
    """The top-level strings of ``path`` (past the module docstring) that follow no assignment."""
    body = ast.parse(path.read_text(encoding="utf-8")).body
    return [
        f"{path.relative_to(ROOT)}:{node.lineno} follows a {type(before).__name__}"
        for before, node in itertools.pairwise(body)
        if isinstance(node, ast.Expr)
        and isinstance(node.value, ast.Constant)
        and isinstance(node.value.value, str)
        and not isinstance(before, ast.Assign | ast.AnnAssign)
    ]


def test_each_top_level_docstring_follows_the_name_it_documents() -> None:
    modules = sorted(path for source in SOURCES for path in source.rglob("*.py"))
    assert len(modules) > 100
    assert [stray for path in modules for stray in stray_strings(path)] == []
