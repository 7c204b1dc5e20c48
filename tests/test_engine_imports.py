"""engine/ is a tree of imports: no module imports one that imports it back (at any depth,
including imports inside functions), and each module is reachable under its own name."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

ENGINE = Path(__file__).resolve().parents[1] / "engine"


def engine_imports(path: Path) -> set[str]:
    """The engine modules ``path`` imports anywhere in its body."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level == 1:
                base = node.module
                found |= {base} if base else {alias.name for alias in node.names}
            elif node.module and node.module.startswith("engine."):
                found.add(node.module.split(".")[1])
            elif node.module == "engine":
                found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.Import):
            found |= {a.name.split(".")[1] for a in node.names if a.name.startswith("engine.")}
    modules = {p.stem for p in ENGINE.glob("*.py")}
    return {name.split(".")[0] for name in found} & modules - {"__init__"}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a path (a -> b -> a), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt] if nxt in path else [node, nxt]
            if nxt not in state and (cycle := visit(nxt, [*path, nxt])):
                return cycle
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start, [start])):
            return cycle
    return None


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"train": {"evaluate"}, "evaluate": {"setup", "train"}}) == [
        "evaluate",
        "train",
        "evaluate",
    ]
    assert find_cycle({"train": {"evaluate", "setup"}, "evaluate": {"setup"}}) is None


def test_engine_has_no_import_cycle():
    graph = {p.stem: engine_imports(p) for p in ENGINE.glob("*.py") if p.stem != "__init__"}
    assert graph["train"] >= {"evaluate", "setup"}  # the parser sees real imports
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


def test_each_engine_module_is_reachable_under_its_own_name():
    import engine

    for path in ENGINE.glob("*.py"):
        if path.stem != "__init__":
            module = importlib.import_module(f"engine.{path.stem}")
            assert getattr(engine, path.stem) is module, path.stem
