"""The shape of the package: no import circle among lenet's modules, no module too long to read, and tests that
share helpers through conftest.py and helpers.py, not through each other.

The imports are read from the source with `ast`, not by importing: every `import` and `from ... import` of every
module of lenet/, relative or absolute, at the top or inside a function (a function's import runs too, only later).
"""

import ast
from pathlib import Path

TESTS = Path(__file__).resolve().parent
LENET = TESTS.parent / "lenet"
MAX_LINES = 500


def module_names():
    """{module name: path} of every module of lenet/ (a package by its own name: lenet.data is data/__init__.py)."""
    names = {}
    for path in sorted(LENET.rglob("*.py")):
        parts = path.relative_to(LENET.parent).with_suffix("").parts
        names[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return names


def imported(module, path, modules):
    """The lenet modules that importing `module` (its source at `path`) runs: each one it names, and the packages
    above that one (importing lenet.fast.convpool runs lenet/fast/__init__.py first), but not its own packages,
    which run before it."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    targets = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                base = ".".join(base + ([node.module] if node.module else []))
            else:
                base = node.module
            for alias in node.names:  # `from . import backend` imports a module, `from .x import f` a name of x
                submodule = f"{base}.{alias.name}"
                targets.add(submodule if submodule in modules else base)
    own = {module.rsplit(".", k)[0] for k in range(module.count(".") + 1)}
    found = set()
    for target in targets:
        parts = target.split(".")
        for k in range(1, len(parts) + 1):
            name = ".".join(parts[:k])
            if name in modules and name not in own:
                found.add(name)
    return found


def import_graph():
    modules = module_names()
    return {module: imported(module, path, modules) for module, path in modules.items()}


def circles(graph):
    """The import circles of `graph`: its strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.add(w)
                if w == v:
                    break
            if len(component) > 1 or v in graph[v]:
                found.append(component)

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def a_path_around(component, graph):
    """One circle through `component`, as `a -> b -> ... -> a`, for the failure message."""
    start = min(component)
    path, seen = [start], {start}
    while True:
        nxt = sorted(w for w in graph[path[-1]] if w in component)
        back = [w for w in nxt if w == start]
        if back and len(path) > 1 or not nxt:
            return " -> ".join([*path, start])
        unseen = [w for w in nxt if w not in seen]
        step = unseen[0] if unseen else nxt[0]
        if step in seen:
            return " -> ".join([*path[path.index(step) :], step])
        path.append(step)
        seen.add(step)


def test_the_import_graph_is_read_as_python_reads_the_imports():
    graph = import_graph()
    assert "lenet.checkpoint_checks" in graph["lenet.checkpoint"]  # from .checkpoint_checks import ...
    assert "lenet.optim" in graph["lenet.fast.gpu"]  # from ..optim import SGD, Adam
    assert "lenet.fast" in graph["lenet.commands.train"]  # from ..fast import FastRunner, inside _runner
    assert "lenet.data" in graph["lenet.trainer"] and "lenet.data.batches" in graph["lenet.data"]
    assert "lenet" not in graph["lenet.checkpoint"]  # its own package runs before it: no edge


def test_the_circle_finder_finds_a_circle_and_names_it():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    (component,) = circles(graph)
    assert component == {"a", "b", "c"} and a_path_around(component, graph) == "a -> b -> c -> a"
    assert circles({"a": {"b"}, "b": set()}) == []


def test_no_import_circle_in_lenet():
    graph = import_graph()
    found = circles(graph)
    assert not found, "import circles: " + "; ".join(a_path_around(c, graph) for c in found)


def test_no_module_in_lenet_is_over_500_lines():
    long = {
        str(path.relative_to(LENET.parent)): n
        for path in LENET.rglob("*.py")
        if (n := len(path.read_text().splitlines())) > MAX_LINES
    }
    assert not long, f"split these by job (over {MAX_LINES} lines): {long}"


# Test modules that import another test module, known when this test was written; they go on another branch.
# Remove them once it is merged.
def test_no_test_module_imports_another():
    """Shared fixtures live in conftest.py, shared plain functions in helpers.py."""
    found = set()
    for path in TESTS.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            names += [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            found.update((path.stem, name.split(".")[0]) for name in names if name.split(".")[0].startswith("test_"))
    extra = sorted(found)
    assert not extra, f"(test module, the test module it imports): {extra}; share through conftest.py or helpers.py"
