"""Import hygiene: no import cycle in the package or the plugins, and the worker path stays torch-free.

The graph is built from the AST, not by importing: an edge ``a -> b`` for every module-level ``import b`` /
``from b import x`` / ``from . import b`` in ``a`` (a ``from pkg import name`` where ``name`` is a submodule gives an
edge to the submodule). Imports inside functions and under ``if TYPE_CHECKING:`` are left out: they do not run when
the module is imported, so they cannot make a cycle at import time.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("expnet_stream", "plugins")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            found[_module_name(path)] = path
    return found


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _module_level_imports(tree: ast.Module) -> list[ast.Import | ast.ImportFrom]:
    """Imports that run when the module is imported: module body, ``if``/``try``/``with`` blocks, not functions,
    classes' methods or ``if TYPE_CHECKING:`` bodies (their ``else`` does run)."""
    out: list[ast.Import | ast.ImportFrom] = []

    def visit(body: list[ast.stmt]) -> None:
        for node in body:
            if isinstance(node, ast.Import | ast.ImportFrom):
                out.append(node)
            elif isinstance(node, ast.If):
                if not _is_type_checking(node.test):
                    visit(node.body)
                visit(node.orelse)
            elif isinstance(node, ast.Try):
                visit(node.body)
                for handler in node.handlers:
                    visit(handler.body)
                visit(node.orelse)
                visit(node.finalbody)
            elif isinstance(node, ast.With):
                visit(node.body)
            elif isinstance(node, ast.ClassDef):
                visit(node.body)  # a class body runs at import time; its methods do not

    visit(tree.body)
    return out


def _all_imports(tree: ast.Module) -> list[ast.Import | ast.ImportFrom]:
    """Every import outside ``if TYPE_CHECKING:`` bodies, function-local ones included."""
    out: list[ast.Import | ast.ImportFrom] = []

    class Visitor(ast.NodeVisitor):
        def visit_Import(self, node: ast.Import) -> None:
            out.append(node)

        def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
            out.append(node)

        def visit_If(self, node: ast.If) -> None:
            if not _is_type_checking(node.test):
                for stmt in node.body:
                    self.visit(stmt)
            for stmt in node.orelse:
                self.visit(stmt)

    Visitor().visit(tree)
    return out


def _resolve(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    if node.level == 0:
        return node.module or ""
    base = module.split(".")
    if not is_package:
        base.pop()
    if node.level > 1:
        base = base[: len(base) - (node.level - 1)]
    return ".".join([*base, node.module] if node.module else base)


def import_graph(*, local: bool = False) -> dict[str, set[str]]:
    """``module -> modules of the two packages it imports at import time`` (``local``: or in any function)."""
    modules = _modules()
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        is_package = path.name == "__init__.py"
        for node in _all_imports(tree) if local else _module_level_imports(tree):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                base = _resolve(name, is_package, node)
                subs = [f"{base}.{alias.name}" for alias in node.names]
                targets += [s for s in subs if s in modules]  # `from pkg import submodule`
                if len(targets) < len(subs):  # a name defined in `base` itself
                    targets.append(base)
            for target in targets:
                # `import a.b.c` imports a, a.b and a.b.c; the parents are imported first anyway, and they are
                # packages whose own imports are edges of their own: link to the deepest module that exists.
                while target and target not in modules:
                    target = target.rpartition(".")[0]
                if target and target != name:
                    graph[name].add(target)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle ``[a, b, ..., a]`` of ``graph``, or None (iterative DFS, deterministic order)."""
    white, grey, black = 0, 1, 2
    color = dict.fromkeys(graph, white)
    for start in sorted(graph):
        if color[start] != white:
            continue
        stack: list[tuple[str, list[str]]] = [(start, sorted(graph[start]))]
        path = [start]
        color[start] = grey
        while stack:
            node, todo = stack[-1]
            if not todo:
                color[node] = black
                stack.pop()
                path.pop()
                continue
            nxt = todo.pop(0)
            if color.get(nxt, black) == grey:
                return [*path[path.index(nxt) :], nxt]
            if color.get(nxt, black) == white:
                color[nxt] = grey
                stack.append((nxt, sorted(graph[nxt])))
                path.append(nxt)
    return None


def all_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per strongly connected component that has one (so a failure lists every knot, not just the first)."""
    cycles: list[list[str]] = []
    remaining = {k: set(v) for k, v in graph.items()}
    while (cycle := find_cycle(remaining)) is not None:
        cycles.append(cycle)
        a, b = cycle[0], cycle[1]
        remaining[a].discard(b)  # break this one, look for the next
    return cycles


def test_graph_sees_relative_and_absolute_imports() -> None:
    graph = import_graph()
    assert "expnet_stream.events.schema" in graph["expnet_stream.events.codec"]  # from .schema import ...
    assert "expnet_stream.errors" in graph["expnet_stream.events.codec"]  # from ..errors import ...
    assert "expnet_stream.models.contract" in graph["expnet_stream.models"]  # from .contract import ...


def test_find_cycle_reports_the_cycle() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycles() -> None:
    cycles = all_cycles(import_graph())
    text = "\n".join(" -> ".join(c) for c in cycles)
    assert not cycles, f"import cycles (module-level imports):\n{text}"


# Dependencies that must stay one-way even counting imports inside functions (which the cycle check leaves out):
# the registry imports the models it registers, the plan builder uses the runtime engine, the event registry in
# ``schema`` imports the aggregate schema, never the other way round.
ONE_WAY = [
    ("expnet_stream.models.registry", "expnet_stream.models.expnet"),
    ("expnet_stream.models.registry", "expnet_stream.models.light"),
    ("expnet_stream.engines.tensorrt_engine", "expnet_stream.engines.tensorrt_build"),
    ("expnet_stream.events.schema", "expnet_stream.events.aggregate_schema"),
]


@pytest.mark.parametrize(("user", "used"), ONE_WAY)
def test_one_way_dependencies(user: str, used: str) -> None:
    graph = import_graph(local=True)
    assert user not in graph[used], f"{used} imports {user} (in some scope)"


# Lower layers never import higher ones, in any scope: the runtime layers (models, video, faces, engines, events,
# aggregate, worker) never import the training code, and the entrypoint table never names the architectures.
LOWER = ("models", "video", "faces", "engines", "events", "aggregate", "worker", "kafka", "config")


@pytest.mark.parametrize("layer", LOWER)
def test_runtime_layers_never_import_train(layer: str) -> None:
    graph = import_graph(local=True)
    bad = sorted(
        f"{user} -> {used}"
        for user, deps in graph.items()
        if user.startswith(f"expnet_stream.{layer}.") or user == f"expnet_stream.{layer}"
        for used in deps
        if used.startswith("expnet_stream.train")
    )
    assert not bad, f"{layer} imports the training code: {bad}"


def test_entrypoint_table_never_names_the_architectures() -> None:
    """Not even for typing: the architectures import the entrypoint table to register themselves."""
    source = (ROOT / "expnet_stream" / "models" / "entrypoints.py").read_text(encoding="utf-8")
    tree = ast.parse(source)
    names = {node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.level >= 1}
    assert not names & {"expnet", "light", "registry", "resnet"}, names


@pytest.mark.parametrize("module", ["expnet_stream.worker.worker", "expnet_stream.worker.runtime"])
def test_worker_path_does_not_import_torch(module: str) -> None:
    code = (
        f"import sys, {module}; heavy = sorted(m for m in ('torch', 'tensorrt') if m in sys.modules); "
        "print(','.join(heavy))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "", f"importing {module} imported {result.stdout.strip()}"


MAX_MODULE_LINES = 500


def test_no_module_of_the_package_over_500_lines() -> None:
    """A module that grows past this is a hub to split along its seams (issue 23: the worker as stages)."""
    long = {
        str(p.relative_to(ROOT)): n
        for package in ("expnet_stream", "plugins")
        for p in sorted((ROOT / package).rglob("*.py"))
        if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_MODULE_LINES
    }
    assert not long, f"modules over {MAX_MODULE_LINES} lines: {long}"
