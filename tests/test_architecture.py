"""The layering rules of docs/architecture.md, checked on the source: no import cycle between
Loupe's modules (counting imports inside functions too: a lazy import still ties two modules
together), `indexer` never imports `searchapp` or Flask, and nothing imports the test or
benchmark folders."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("indexer", "searchapp")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def source_modules() -> dict[str, Path]:
    return {module_name(path): path for package in PACKAGES for path in sorted((ROOT / package).rglob("*.py"))}


def _runtime_nodes(tree: ast.AST):
    """Every node of `tree` except those under `if TYPE_CHECKING:` (imports for annotations only)."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            yield from (n for child in node.orelse for n in ast.walk(child))
            continue
        yield node
        yield from _runtime_nodes(node)


def imported_names(module: str, path: Path) -> set[str]:
    """Every module name `module` imports, absolute, anywhere in its file that runs (imports
    inside functions count; those under `if TYPE_CHECKING:` do not)."""
    is_package = path.name == "__init__.py"
    names = set()
    for node in _runtime_nodes(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")
                base = base[: len(base) - node.level + (1 if is_package else 0)]
                origin = ".".join(base + ([node.module] if node.module else []))
            else:
                origin = node.module or ""
            names.add(origin)
            names.update(f"{origin}.{alias.name}" for alias in node.names)  # `from pkg import module`
    return names


def import_graph() -> dict[str, set[str]]:
    """Edges between Loupe's own modules (an import of `a.b.c` where only `a.b` is a module
    counts as `a.b`)."""
    modules = source_modules()
    graph = {}
    for module, path in modules.items():
        edges = set()
        for name in imported_names(module, path):
            while name and name not in modules:
                name = name.rpartition(".")[0]
            if name and name != module and not module.startswith(name + "."):  # not its own package
                edges.add(name)
        graph[module] = edges
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan's algorithm)."""
    index, low, on_stack, stack, found = {}, {}, set(), [], []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for other in sorted(graph.get(node, ())):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_checker_finds_a_cycle_and_a_package_edge():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles():
    found = cycles(import_graph())
    assert not found, "import cycles (imports inside functions count): " + "; ".join(" <-> ".join(c) for c in found)


@pytest.mark.parametrize("forbidden", ["searchapp", "flask", "werkzeug", "waitress", "tests", "bench"])
def test_indexer_never_imports_upward(forbidden):
    offenders = sorted(
        module for module, path in source_modules().items() if module.startswith("indexer")
        for name in imported_names(module, path) if name == forbidden or name.startswith(forbidden + ".")
    )
    assert not offenders, f"indexer modules importing {forbidden}: {offenders}"


@pytest.mark.parametrize("forbidden", ["tests", "bench"])
def test_the_application_never_imports_tests_or_benchmarks(forbidden):
    offenders = sorted(
        module for module, path in source_modules().items()
        for name in imported_names(module, path) if name == forbidden or name.startswith(forbidden + ".")
    )
    assert not offenders, f"modules importing {forbidden}: {offenders}"


MODEL_PACKAGES = ("searchapp.restoration", "searchapp.generation", "searchapp.diffusion")
WEB_LIBRARIES = ("flask", "werkzeug", "waitress")
WEB_MODULES = ("searchapp.api", "searchapp.pages", "searchapp.files", "searchapp.services", "searchapp.security",
               "searchapp.routing", "searchapp.errors", "searchapp.cli")


def reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    """`start` and every module it imports, directly or through others."""
    seen, todo = {start}, [start]
    while todo:
        for other in graph.get(todo.pop(), ()):
            if other not in seen:
                seen.add(other)
                todo.append(other)
    return seen


def test_model_packages_never_reach_the_web_layer():
    """Restoration, generation and diffusion are model code that the CLI and the benchmarks use
    without a server: neither they nor anything they import imports Flask or the web modules."""
    modules, graph = source_modules(), import_graph()
    offenders = sorted(
        f"{module} (through {other})" for module in modules if module.startswith(MODEL_PACKAGES)
        for other in reachable(graph, module)
        if other.startswith(WEB_MODULES) or any(name.split(".")[0] in WEB_LIBRARIES
                                                 for name in imported_names(other, modules[other]))
    )
    assert not offenders, f"model modules reaching the web layer: {offenders}"
