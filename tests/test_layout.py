"""The package's layering: its imports (those inside functions too) form no circle, and a project module is
imported inside a function only where a comment on that line says why (an optional heavy dependency)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "cosmos_composer"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imported_modules(node: ast.AST, module: str, is_package: bool, known: set[str]) -> list[str]:
    """The project modules an import statement names (a `from x import y` counts y when it is a module)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names if alias.name in known]
    if not isinstance(node, ast.ImportFrom):
        return []
    if node.level:
        base_parts = module.split(".") if is_package else module.split(".")[:-1]
        base_parts = base_parts[: len(base_parts) - (node.level - 1)]
        base = ".".join(base_parts + ([node.module] if node.module else []))
    else:
        base = node.module or ""
    found = [f"{base}.{alias.name}" for alias in node.names if f"{base}.{alias.name}" in known]
    if base in known and len(found) < len(node.names):
        found.append(base)
    return found


def _import_graph() -> tuple[dict[str, set[str]], list[str]]:
    """({module: the project modules it imports}, [in-function project imports without a comment])."""
    paths = sorted(PACKAGE.rglob("*.py"))
    known = {_module_name(path) for path in paths}
    graph: dict[str, set[str]] = {}
    unexplained = []
    for path in paths:
        module = _module_name(path)
        source = path.read_text()
        lines = source.splitlines()
        tree = ast.parse(source)
        graph[module] = set()
        in_function: set[int] = set()
        type_checking: set[int] = set()
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                in_function.update(id(child) for child in ast.walk(node) if child is not node)
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                type_checking.update(id(child) for child in ast.walk(node) if child is not node)
        for node in ast.walk(tree):
            if id(node) in type_checking:
                continue  # for annotations only: never executed
            imported = _imported_modules(node, module, path.name == "__init__.py", known)
            imported = [name for name in imported if name != module]
            graph[module].update(imported)
            statement_lines = lines[node.lineno - 1 : node.end_lineno] if imported else []
            if imported and id(node) in in_function and not any("#" in line for line in statement_lines):
                unexplained.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno} imports {imported}")
    # Importing a.b.c runs the package a.b's __init__ first: a dependency too, except on the importer's own
    # packages (they are initialised already when one of their modules is imported).
    for module, imports in graph.items():
        with_packages = set(imports)
        for name in imports:
            parts = name.split(".")
            with_packages.update(".".join(parts[:i]) for i in range(2, len(parts)))
        graph[module] = {name for name in with_packages if name in known and not module.startswith(name + ".")}
    return graph, unexplained


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected component with more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph.get(node, ()):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return components


def test_the_package_imports_form_no_circle():
    graph, _ = _import_graph()
    assert _cycles(graph) == []


def test_project_imports_inside_functions_say_why():
    _, unexplained = _import_graph()
    assert unexplained == []


def test_the_checker_finds_a_planted_circle_and_an_unexplained_import():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _cycles(graph) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_a_module_depends_on_the_packages_above_what_it_imports():
    graph, _ = _import_graph()
    # checkpoint/load.py imports cosmos_composer.models.network: the models package's __init__ runs first.
    assert "cosmos_composer.models" in graph["cosmos_composer.checkpoint.load"]


# The README's "Layout" rows, top to bottom (module prefixes under cosmos_composer; the longest prefix wins).
LAYERS = [
    ["benchmarks"],
    ["builders", "loggers_and_callbacks", "data.loaders", "run_setup", "run_plan", "config", "quiet", "run_lock"],
    ["models.prepare", "models.composer_model", "callbacks", "optim", "loggers"],
    ["evaluation", "generate", "generation"],
    ["checkpoint", "data", "encoders", "diffusion"],
    ["models"],
    ["latent_geometry", "dtypes", "fingerprint", "config_file", "host_memory", "run_exit", "checkpoint.keys", "spec"],
]


def _layer(module: str, graph: dict[str, set[str]]) -> int:
    """The README row of `module`; a package whose __init__ imports nothing is a leaf."""
    if not graph[module] and any(other.startswith(module + ".") for other in graph):
        return len(LAYERS) - 1
    name = module.removeprefix("cosmos_composer").removeprefix(".")
    matches = [
        (len(prefix), index)
        for index, prefixes in enumerate(LAYERS)
        for prefix in prefixes
        if name == prefix or name.startswith(prefix + ".")
    ]
    return max(matches)[1] if matches else len(LAYERS)


def test_each_layer_of_the_readme_imports_only_from_the_layers_under_it():
    graph, _ = _import_graph()
    upward = [f"{a} -> {b}" for a, imports in graph.items() for b in imports if _layer(b, graph) < _layer(a, graph)]
    assert upward == []
    unplaced = [module for module in graph if module != "cosmos_composer" and _layer(module, graph) == len(LAYERS)]
    assert unplaced == []  # every module has its row in the README
