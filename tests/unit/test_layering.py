"""The layering DESIGN §1-§2 draws, enforced over the import graph of the three distributions'
sources (read with :mod:`ast`, nothing imported): the wire protocol and the network plumbing
import nothing of the domain; gates, cache and ledger (store), and routing never import each
other, and providers know nothing of gates, budgets or routing; none of those parts imports
the composition above them (the broker and its homes, the front ends, the runtime, the
command); and no module imports, even for type checking or inside a function, a module that
imports it back."""

from __future__ import annotations

import ast
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Final

import pytest

ROOT: Final = Path(__file__).resolve().parents[2]
SOURCES: Final = [ROOT / "client" / "src", ROOT / "daemon" / "src", ROOT / "tui" / "src"]

D: Final = "quotad.daemon"
COMPOSITION: Final = tuple(
    f"{D}.{name}"
    for name in (
        "broker",
        "admin",
        "permits",
        "status",
        "live_tail",
        "config_generations",
        "request_context",
        "budget_holds",
        "streamed_answer",
        "caller",
        "server",
        "front_door",
        "runtime",
        "cli",
        "client_commands",
        "demo",
        "doctor",
    )
)
"""The broker, the homes of its request kinds, the front ends, the runtime and the command."""

FORBIDDEN: Final[dict[str, tuple[str, ...]]] = {
    # the wire protocol: nothing else of quotad (the client and the TUI build on it)
    "quotad.protocol": ("quotad.client", "quotad.daemon", "quotad.tui"),
    # gates, cache and ledger, routing never call each other; the broker composes them
    f"{D}.gates": (f"{D}.store", f"{D}.routing", f"{D}.providers", *COMPOSITION),
    f"{D}.store": (f"{D}.gates", f"{D}.routing", f"{D}.providers", *COMPOSITION),
    f"{D}.routing": (f"{D}.gates", f"{D}.store", *COMPOSITION),
    # providers: wire formats, nothing of gates, budgets or routing
    f"{D}.providers": (f"{D}.gates", f"{D}.store", f"{D}.routing", *COMPOSITION),
}
ONLY_ITSELF: Final = ("quotad.protocol", f"{D}.net")
"""Packages that import nothing of quotad but themselves: the wire protocol, the plumbing."""


def modules() -> dict[str, Path]:
    """Every module of the three distributions, by dotted name."""
    found: dict[str, Path] = {}
    for source in SOURCES:
        for path in sorted(source.rglob("*.py")):
            parts = list(path.relative_to(source).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


def imported(name: str, path: Path, known: dict[str, Path]) -> Iterator[tuple[str, int]]:
    """The quotad modules ``name`` imports, anywhere in it (type checking and function
    bodies too), with the line: ``from package import module`` names the module, not the
    package; a name that is not a module names the module it is taken from."""
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                source = ".".join([*base, *([node.module] if node.module else [])])
            else:
                source = node.module or ""
            targets = [
                f"{source}.{alias.name}" if f"{source}.{alias.name}" in known else source
                for alias in node.names
            ]
        else:
            continue
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name:
                yield target, node.lineno


def graph() -> dict[str, dict[str, int]]:
    """Module → the modules it imports (→ the first line that does)."""
    known = modules()
    edges: dict[str, dict[str, int]] = {}
    for name, path in known.items():
        edges[name] = {}
        for target, line in imported(name, path, known):
            edges[name].setdefault(target, line)
    return edges


def within(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def import_cycles(edges: dict[str, dict[str, int]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm,
    iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []
    for root in edges:
        if root in index:
            continue
        work: list[tuple[str, Iterator[str]]] = [(root, iter(edges[root]))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, successors = work[-1]
            for successor in successors:
                if successor not in index:
                    index[successor] = low[successor] = len(index)
                    stack.append(successor)
                    on_stack.add(successor)
                    work.append((successor, iter(edges[successor])))
                    break
                if successor in on_stack:
                    low[node] = min(low[node], index[successor])
            else:
                work.pop()
                if work:
                    parent = work[-1][0]
                    low[parent] = min(low[parent], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    if len(component) > 1:
                        cycles.append(sorted(component))
    return cycles


EDGES: Final = graph()


def test_the_graph_is_read() -> None:
    """The walk finds the packages the rules speak of, and the edges everyone knows."""
    assert {"quotad.protocol.messages", f"{D}.broker", f"{D}.gates", f"{D}.net.pool"} <= set(EDGES)
    assert f"{D}.gates" in EDGES[f"{D}.broker"]
    assert "quotad.protocol.messages" in EDGES[f"{D}.store.ledger"]


def imports_from(package: str, wrong: Callable[[str], bool]) -> list[str]:
    """Where the modules of ``package`` import a module ``wrong`` says they may not."""
    return [
        f"{name}:{line} imports {target}"
        for name, targets in EDGES.items()
        if within(name, package)
        for target, line in targets.items()
        if wrong(target)
    ]


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_what_a_part_may_not_import(package: str) -> None:
    forbidden = FORBIDDEN[package]
    assert imports_from(package, lambda target: any(within(target, f) for f in forbidden)) == []


@pytest.mark.parametrize("package", ONLY_ITSELF)
def test_protocol_and_plumbing_import_nothing_else_of_quotad(package: str) -> None:
    assert imports_from(package, lambda target: not within(target, package)) == []


def test_no_import_cycles() -> None:
    """Not even under ``if TYPE_CHECKING`` or inside a function: a transport and the server
    that owns it meet through a Protocol the transport declares."""
    cycles = import_cycles(EDGES)
    assert cycles == [], "\n".join(
        " ".join(f"{a} -> {b}:{EDGES[a][b]}" for a in cycle for b in cycle if b in EDGES[a])
        for cycle in cycles
    )


def test_the_checks_can_fail() -> None:
    """The cycle finder and the rules catch what they are for, on a made-up graph."""
    made_up = {"a": {"b": 1}, "b": {"c": 2}, "c": {"a": 3}, "d": {"a": 4}}
    assert import_cycles(made_up) == [["a", "b", "c"]]
    assert import_cycles({"a": {"b": 1}, "b": {}}) == []
    assert any(within(f"{D}.routing.router", f) for f in FORBIDDEN[f"{D}.store"])
    assert not within(f"{D}.storeroom", f"{D}.store")


def test_the_broker_is_the_pipeline_in_at_most_500_lines() -> None:
    """The broker is the pipeline, read top to bottom; what is not the pipeline has a home of
    its own (it had grown to 518 lines, a hit's way of replaying and a whole answer's charged
    usage written out in it)."""
    broker = ROOT / "daemon" / "src" / "quotad" / "daemon" / "broker.py"
    assert len(broker.read_text().splitlines()) <= 500
