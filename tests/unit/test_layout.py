"""Import direction, enforced: which side of the fork may import what.

Every module under ``supervisor/`` (installed as ``task_supervisor``) and ``scheduler/``
(``task_supervisor.scheduler``) is read with ``ast``, never imported: every ``import`` and
``from ... import``, at module level and inside functions, relative ones resolved, and
``from task_supervisor import loop`` resolved to the sub-module it names. Imports under
``if TYPE_CHECKING:`` never run and are skipped. A forbidden edge fails with the importing file,
its line and the rule, and so does the child side reaching the loop through a module both sides
import (config, compat...); an import cycle among module-level imports fails with the cycle.
"""

from __future__ import annotations

import ast
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = "task_supervisor"
FOLDERS = {"supervisor": PACKAGE, "scheduler": f"{PACKAGE}.scheduler"}  # folder -> import name


@dataclass(frozen=True, slots=True)
class Module:
    name: str  # dotted import name
    path: str  # file path relative to the repository, for messages
    source: str
    is_package: bool = False  # an __init__.py: relative imports start from the module itself


@dataclass(frozen=True, slots=True)
class Edge:
    importer: str
    target: str
    path: str
    line: int
    module_level: bool  # runs at import time (not inside a function)

    def where(self) -> str:
        scope = "" if self.module_level else " (inside a function)"
        return f"{self.path}:{self.line}: {self.importer} imports {self.target}{scope}"


def within(name: str, *packages: str) -> bool:
    """``name`` is one of ``packages`` or a module under one of them."""
    return any(name == p or name.startswith(f"{p}.") for p in packages)


@dataclass(frozen=True, slots=True)
class Rule:
    text: str
    applies: Callable[[str], bool]  # to the importing module
    forbids: Callable[[str], bool]  # the imported module


P = PACKAGE
RULES = (
    Rule(
        "the child side (worker/, scheduler/) runs in forked children and never imports the loop, "
        "the chores, observe, cli or bootstrap; what both sides share lives in wire/.",
        lambda importer: within(importer, f"{P}.worker", f"{P}.scheduler"),
        lambda target: within(target, f"{P}.loop", f"{P}.chores", f"{P}.observe", f"{P}.cli", f"{P}.bootstrap"),
    ),
    Rule(
        "wire/ holds the formats both sides of the fork share and imports nothing of task_supervisor "
        "but task_supervisor.exceptions, task_supervisor.events and wire/ itself.",
        lambda importer: within(importer, f"{P}.wire"),
        lambda target: within(target, P) and not within(target, f"{P}.exceptions", f"{P}.events", f"{P}.wire"),
    ),
    Rule(
        "chores/ and observe/ are called by the loop and never import it (but under `if TYPE_CHECKING:`); "
        "pass what they need in.",
        lambda importer: within(importer, f"{P}.chores", f"{P}.observe"),
        lambda target: within(target, f"{P}.loop"),
    ),
)


# -- reading the modules -------------------------------------------------------------------


def discover(root: Path = ROOT) -> dict[str, Module]:
    modules = {}
    for folder, package in FOLDERS.items():
        for file in sorted((root / folder).rglob("*.py")):
            parts = file.relative_to(root / folder).with_suffix("").parts
            is_package = parts[-1] == "__init__"
            name = ".".join((package, *(parts[:-1] if is_package else parts)))
            path = file.relative_to(root).as_posix()
            modules[name] = Module(name, path, file.read_text(encoding="utf-8"), is_package)
    return modules


def is_type_checking(test: ast.expr) -> bool:
    """``TYPE_CHECKING`` or ``typing.TYPE_CHECKING``."""
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


class _Walker(ast.NodeVisitor):
    def __init__(self, module: Module, known: Collection[str]) -> None:
        self.module = module
        self.known = known
        self.functions = 0  # depth of function bodies around the current node
        self.edges: list[Edge] = []

    def add(self, target: str, node: ast.stmt | ast.expr) -> None:
        if within(target, PACKAGE) and target != self.module.name:
            self.edges.append(Edge(self.module.name, target, self.module.path, node.lineno, self.functions == 0))

    def visit_FunctionDef(self, node: ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda) -> None:
        # Decorators, defaults and annotations run at module level, but hold no import statement.
        self.functions += 1
        self.generic_visit(node)
        self.functions -= 1

    visit_AsyncFunctionDef = visit_FunctionDef
    visit_Lambda = visit_FunctionDef

    def visit_If(self, node: ast.If) -> None:
        if is_type_checking(node.test):
            for child in node.orelse:  # the else branch does run
                self.visit(child)
        else:
            self.generic_visit(node)

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self.add(alias.name, node)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        base = self.resolve(node.module, node.level)
        for alias in node.names:
            submodule = f"{base}.{alias.name}"
            self.add(submodule if submodule in self.known else base, node)

    def visit_Call(self, node: ast.Call) -> None:
        # importlib.import_module("task_supervisor...") with a literal name is an import too.
        func = node.func
        name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
        if name == "import_module" and node.args and isinstance(node.args[0], ast.Constant):
            if isinstance(node.args[0].value, str) and not node.args[0].value.startswith("."):
                self.add(node.args[0].value, node)
        self.generic_visit(node)

    def resolve(self, module: str | None, level: int) -> str:
        if level == 0:
            return module or ""
        parts = self.module.name.split(".")
        if not self.module.is_package:
            parts = parts[:-1]
        parts = parts[: len(parts) - (level - 1)]
        return ".".join([*parts, module] if module else parts)


def imports_of(module: Module, known: Collection[str]) -> list[Edge]:
    """Every import of task_supervisor in ``module``, by line."""
    walker = _Walker(module, known)
    walker.visit(ast.parse(module.source, filename=module.path))
    return walker.edges


# -- what is wrong -------------------------------------------------------------------------


def forbidden(edges: list[Edge]) -> list[str]:
    return [
        f"{edge.where()}: {rule.text}"
        for edge in edges
        for rule in RULES
        if rule.applies(edge.importer) and rule.forbids(edge.target)
    ]


def through_shared(edges: list[Edge]) -> list[str]:
    """The child side reaching what it may not import through a module both sides use (config,
    compat, jsonlog...): whatever that module imports, even inside a function, may run in a child."""
    rule = RULES[0]
    out: dict[str, list[Edge]] = {}
    for edge in edges:
        out.setdefault(edge.importer, []).append(edge)
    problems, seen = [], set()
    for edge in sorted(edges, key=lambda e: (e.path, e.line)):
        shared = edge.target
        if not rule.applies(edge.importer) or rule.applies(shared) or rule.forbids(shared) or shared in seen:
            continue
        seen.add(shared)
        if path := _path_to(out, shared, rule.forbids, avoid=rule.applies):
            chain = " -> ".join([shared, *(e.target for e in path)])
            steps = "; ".join(f"{e.path}:{e.line}" for e in path)
            problems.append(f"{edge.where()}, which leads to {path[-1].target} ({chain}; {steps}): {rule.text}")
    return problems


def _path_to(
    out: dict[str, list[Edge]], start: str, goal: Callable[[str], bool], avoid: Callable[[str], bool]
) -> list[Edge]:
    """The edges of a shortest import chain from ``start`` to a module ``goal`` accepts; [] if none."""
    came_by: dict[str, Edge] = {}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for edge in out.get(node, []):
                succ = edge.target
                if succ == start or succ in came_by or avoid(succ):
                    continue
                came_by[succ] = edge
                if goal(succ):
                    path = [edge]
                    while path[0].importer != start:
                        path.insert(0, came_by[path[0].importer])
                    return path
                following.append(succ)
        frontier = following
    return []


def cycles(edges: list[Edge], known: Collection[str]) -> list[str]:
    """One cycle per strongly connected set of modules, through module-level imports only."""
    graph: dict[str, dict[str, Edge]] = {name: {} for name in known}
    for edge in edges:
        if edge.module_level and edge.target in graph:
            graph[edge.importer].setdefault(edge.target, edge)
    problems = []
    for component in _strongly_connected(graph):
        start = min(component)
        if len(component) == 1 and start not in graph[start]:
            continue
        path = _shortest_cycle(graph, start, component)
        names = " -> ".join([*(e.importer for e in path), start])
        lines = "; ".join(f"{e.path}:{e.line}" for e in path)
        problems.append(f"import cycle among module-level imports: {names} ({lines}); move one import into a function")
    return problems


def _strongly_connected(graph: dict[str, dict[str, Edge]]) -> Iterator[set[str]]:
    """Tarjan's algorithm, iterative."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, successors = work[-1]
            for succ in successors:
                if succ not in index:
                    index[succ] = low[succ] = len(index)
                    stack.append(succ)
                    on_stack.add(succ)
                    work.append((succ, iter(sorted(graph[succ]))))
                    break
                if succ in on_stack:
                    low[node] = min(low[node], index[succ])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = set()
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.add(member)
                        if member == node:
                            break
                    yield component


def _shortest_cycle(graph: dict[str, dict[str, Edge]], start: str, component: set[str]) -> list[Edge]:
    """The edges of a shortest cycle from ``start`` back to it, within ``component``."""
    came_by: dict[str, Edge] = {}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for succ, edge in sorted(graph[node].items()):
                if succ == start:
                    path = [edge]
                    while path[0].importer != start:
                        path.insert(0, came_by[path[0].importer])
                    return path
                if succ in component and succ not in came_by:
                    came_by[succ] = edge
                    following.append(succ)
        frontier = following
    raise AssertionError(f"{start} is in no cycle")


def problems(modules: dict[str, Module]) -> list[str]:
    edges = [edge for module in modules.values() for edge in imports_of(module, modules)]
    return sorted(forbidden(edges)) + through_shared(edges) + cycles(edges, modules)


# -- the tests -----------------------------------------------------------------------------


def test_imports_follow_the_layout():
    modules = discover()
    # Not vacuous: the walk found the package and its imports.
    for name in (f"{P}.loop.arbiter", f"{P}.worker.run", f"{P}.wire.protocol", f"{P}.scheduler.runner"):
        assert name in modules, f"{name} not found under {ROOT}"
    edges = [edge for module in modules.values() for edge in imports_of(module, modules)]
    assert any(e.importer == f"{P}.loop.spawn" and e.target == f"{P}.worker.run" for e in edges)
    found = problems(modules)
    assert not found, "\n".join(found)


def _synthetic(**sources: str) -> dict[str, Module]:
    """Modules named like the real ones (``loop/arbiter`` -> task_supervisor.loop.arbiter), plus their packages."""
    modules: dict[str, Module] = {}
    for key, source in sources.items():
        parts = key.split("__")
        for depth in range(len(parts)):
            package = ".".join([P, *parts[:depth]])
            path = "/".join(["supervisor", *parts[:depth], "__init__.py"])
            modules.setdefault(package, Module(package, path, "", is_package=True))
        name = ".".join([P, *parts])
        modules[name] = Module(name, "/".join(["supervisor", *parts]) + ".py", source)
    return modules


def test_the_walker_reports_a_forbidden_edge_with_its_file_line_and_rule():
    modules = _synthetic(
        loop__arbiter="",
        worker__bad="import os\n\n\ndef late():\n    from task_supervisor import loop\n",
    )
    (problem,) = problems(modules)
    assert problem.startswith("supervisor/worker/bad.py:5: task_supervisor.worker.bad imports task_supervisor.loop ")
    assert "(inside a function)" in problem
    assert "the child side (worker/, scheduler/) runs in forked children" in problem


def test_the_walker_resolves_names_relative_imports_and_skips_type_checking():
    modules = _synthetic(
        loop__arbiter="",
        observe__named="from task_supervisor.loop import arbiter\n",
        observe__relative="from ..loop import arbiter\n",
        observe__dynamic="import importlib\nimportlib.import_module('task_supervisor.loop.arbiter')\n",
        chores__typed=(
            "from typing import TYPE_CHECKING\nimport typing\n"
            "if TYPE_CHECKING:\n    from task_supervisor.loop.arbiter import Supervisor\n"
            "if typing.TYPE_CHECKING:\n    import task_supervisor.loop.arbiter\n"
        ),
        events="",
        exceptions="",
        wire__spec="",
        wire__fine="from task_supervisor import events, exceptions\nfrom task_supervisor.wire import spec\n",
        wire__bad="from task_supervisor.config import Config\n",
    )
    found = problems(modules)
    assert [p.split(": ", 2)[1] for p in found] == [
        "task_supervisor.observe.dynamic imports task_supervisor.loop.arbiter",
        "task_supervisor.observe.named imports task_supervisor.loop.arbiter",
        "task_supervisor.observe.relative imports task_supervisor.loop.arbiter",
        "task_supervisor.wire.bad imports task_supervisor.config",
    ]


def test_the_child_side_may_not_reach_the_loop_through_a_shared_module():
    modules = _synthetic(
        loop__arbiter="",
        compat="",
        config="def load():\n    from task_supervisor.loop import arbiter\n",
        worker__run="from task_supervisor import compat, config\n",
    )
    (problem,) = problems(modules)
    assert problem.startswith(
        "supervisor/worker/run.py:1: task_supervisor.worker.run imports task_supervisor.config, which leads to "
        "task_supervisor.loop.arbiter (task_supervisor.config -> task_supervisor.loop.arbiter; supervisor/config.py:2)"
    )


def test_the_walker_reports_a_cycle_of_module_level_imports_only():
    looped = _synthetic(
        loop__a="from task_supervisor.loop import b\n",
        loop__b="import os\nfrom task_supervisor.loop.a import thing\n",
    )
    assert problems(looped) == [
        "import cycle among module-level imports: task_supervisor.loop.a -> task_supervisor.loop.b -> "
        "task_supervisor.loop.a (supervisor/loop/a.py:1; supervisor/loop/b.py:2); move one import into a function"
    ]
    broken = _synthetic(
        loop__a="from task_supervisor.loop import b\n",
        loop__b="def later():\n    from task_supervisor.loop.a import thing\n",
    )
    assert problems(broken) == []


def test_the_supervisor_loads_every_module_a_worker_child_imports_as_it_boots():
    """bootstrap.warm_up imports them before the first fork, or each child pays for it (~14 ms)."""
    source = (ROOT / "supervisor" / "worker" / "run.py").read_text()
    serve = next(n for n in ast.walk(ast.parse(source)) if isinstance(n, ast.FunctionDef) and n.name == "_serve")
    imported = {
        f"{node.module}.{alias.name}"
        for node in ast.walk(serve)
        if isinstance(node, ast.ImportFrom) and node.module == f"{PACKAGE}.worker"
        for alias in node.names
    }
    bootstrap = ast.parse((ROOT / "supervisor" / "bootstrap.py").read_text())
    (warmed,) = [
        ast.literal_eval(n.value)
        for n in ast.walk(bootstrap)
        if isinstance(n, ast.Assign) and any(getattr(t, "id", "") == "CHILD_MODULES" for t in n.targets)
    ]
    assert imported and imported <= set(warmed), imported - set(warmed)
