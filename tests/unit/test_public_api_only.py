"""The shipped code uses its dependencies' public API only: no import from a private module of
another package (``anyio._backends._asyncio``…) and no reach into anyio's or asyncio's task and
cancel-scope internals, which change between patch releases (issue 14: request deadlines read
anyio's ``_task_states`` and ``_parent_scope``)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SOURCES = sorted(
    path for part in ("daemon/src", "client/src", "tui/src") for path in (ROOT / part).rglob("*.py")
)
PRIVATE_INTERNALS = frozenset(
    {
        # anyio's cancel scopes and task states (asyncio backend)
        "_task_states",
        "_parent_scope",
        "_child_scopes",
        "_host_task",
        "_cancel_called",
        "_deliver_cancellation",
        # asyncio's tasks and futures
        "_fut_waiter",
        "_must_cancel",
        "_coro",
    }
)


def _private_module(name: str) -> bool:
    parts = name.split(".")
    return parts[0] != "quotad" and any(
        part.startswith("_") and not part.startswith("__") for part in parts
    )


def _violations(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        where = f"{path.relative_to(ROOT)}:{getattr(node, 'lineno', 0)}"
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if _private_module(node.module):
                found.append(f"{where}: from {node.module} import ...")
        elif isinstance(node, ast.Import):
            found += [f"{where}: import {a.name}" for a in node.names if _private_module(a.name)]
        elif isinstance(node, ast.Attribute) and node.attr in PRIVATE_INTERNALS:
            found.append(f"{where}: .{node.attr}")
    return found


def test_the_sources_are_found() -> None:
    assert len(SOURCES) > 50


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_private_internals_of_dependencies(path: Path) -> None:
    assert _violations(path) == []
