"""The structure of tptlib: layers import downwards only, no module imports itself back, and no
module or function grows past a size one can read whole.

Every `import` and `from ... import` in tptlib is read with `ast`, at module level and inside
functions (and under `if TYPE_CHECKING:`), with the package `__init__` that an import runs on the
way to its module. The layers, lowest first, are those of docs/architecture.md. A module may hold
at most `MAX_MODULE_LINES` lines, and a function (a method or a nested function included) at most
`MAX_FUNCTION_LINES`, counted from its `def` line to its last line (`end_lineno - lineno + 1`).
"""
import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "tptlib"

MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 80

#: lowest first; a module belongs to the entry with the longest prefix that names it or a package above it
LAYERS = [
    ("utilities", ["tptlib.version", "tptlib.lazy", "tptlib.nested", "tptlib.argtypes", "tptlib.memory", "tptlib.meter",
                   "tptlib.checks", "tptlib.files", "tptlib.jsonout", "tptlib.interrupts"]),
    ("data, objectives, metrics", ["tptlib.data", "tptlib.objectives", "tptlib.metrics"]),
    ("micro profile", ["tptlib.micro"]),
    ("clip", ["tptlib.textmemo", "tptlib.clip", "tptlib.image_tower"]),
    ("prompts, towers, augment", ["tptlib.prompts", "tptlib.towers", "tptlib.augment", "tptlib.augment_ops"]),
    ("methods", ["tptlib.methods", "tptlib.reference", "tptlib.reference_peers", "tptlib.reference_adapters"]),
    ("engine", ["tptlib.engine"]),
    ("runs", ["tptlib.runs"]),
    ("workbook, analysis, bench", ["tptlib.workbook", "tptlib.analysis", "tptlib.bench"]),
    ("cli", ["tptlib.cli"]),
    ("package", ["tptlib"]),
]


def _modules(package: Path) -> dict[str, Path]:
    """Dotted module name -> file, for every .py file of the package (`__init__` names its package)."""
    found = {}
    for path in sorted(package.rglob("*.py")):
        parts = list(path.relative_to(package.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def _known(name: str, modules: dict) -> str:
    """The module `name` denotes: itself when it is one, else the closest package above it."""
    while name not in modules:
        name = name.rsplit(".", 1)[0]
    return name


def _edges(modules: dict[str, Path]) -> set[tuple[str, str]]:
    """(importer, imported) for every import of a tptlib module, at any depth of the source, plus the
    packages an import initialises on the way (those above the importer itself excepted)."""
    edges = set()
    for name, path in modules.items():
        is_package = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = name.split(".") if is_package else name.split(".")[:-1]
                    base = base[:len(base) - node.level + 1]
                    stem = ".".join(base + ([node.module] if node.module else []))
                else:
                    stem = node.module
                targets = [f"{stem}.{alias.name}" if f"{stem}.{alias.name}" in modules else stem
                           for alias in node.names]
            for target in targets:
                if target != "tptlib" and not target.startswith("tptlib."):
                    continue
                target = _known(target, modules)
                edges.add((name, target))
                parts = target.split(".")
                for k in range(2, len(parts)):              # packages the import runs on the way
                    above = ".".join(parts[:k])
                    if not (name == above or name.startswith(above + ".")):
                        edges.add((name, above))
    return {(a, b) for a, b in edges if a != b}


def _layer(name: str) -> int:
    best, best_len = None, -1
    for level, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            matches = name == prefix or (prefix != "tptlib" and name.startswith(prefix + "."))
            if matches and len(prefix) > best_len:
                best, best_len = level, len(prefix)
    assert best is not None, f"{name} has no layer: add it to LAYERS (and to docs/architecture.md)"
    return best


def _cycles(edges: set[tuple[str, str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan, iterative)."""
    graph: dict[str, list[str]] = {}
    for a, b in sorted(edges):
        graph.setdefault(a, []).append(b)
        graph.setdefault(b, [])
    index, low, on_stack, stack, found, counter = {}, {}, set(), [], [], [0]
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(graph[root]))]
        index[root] = low[root] = counter[0]
        counter[0] += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is None:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
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
            elif child not in index:
                index[child] = low[child] = counter[0]
                counter[0] += 1
                stack.append(child)
                on_stack.add(child)
                work.append((child, iter(graph[child])))
            elif child in on_stack:
                low[node] = min(low[node], index[child])
    return found


def _oversized(modules: dict[str, Path]) -> list[str]:
    """One line for every module over `MAX_MODULE_LINES` lines and every function over
    `MAX_FUNCTION_LINES` (at any depth: methods and nested functions too)."""
    found = []
    for name, path in modules.items():
        text = path.read_text()
        n_lines = len(text.splitlines())
        if n_lines > MAX_MODULE_LINES:
            found.append(f"{path}: {n_lines} lines (at most {MAX_MODULE_LINES})")
        for node in ast.walk(ast.parse(text, str(path))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    found.append(f"{path}:{node.lineno} {node.name}: {length} lines (at most {MAX_FUNCTION_LINES})")
    return sorted(found)


def test_every_module_has_a_layer():
    for name in _modules(PACKAGE):
        _layer(name)


def test_no_module_imports_a_higher_layer():
    modules = _modules(PACKAGE)
    upward = sorted(f"{a} ({LAYERS[_layer(a)][0]}) imports {b} ({LAYERS[_layer(b)][0]})"
                    for a, b in _edges(modules) if _layer(b) > _layer(a))
    assert not upward, "imports from a lower layer to a higher one:\n" + "\n".join(upward)


def test_no_import_loops():
    cycles = _cycles(_edges(_modules(PACKAGE)))
    assert not cycles, "modules that import each other, directly or around a loop:\n" + "\n".join(
        " <-> ".join(c) for c in cycles)


def test_the_reader_sees_imports_inside_functions_and_relative_ones(tmp_path):
    pkg = tmp_path / "tptlib"
    (pkg / "data").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "engine.py").write_text("")
    (pkg / "data" / "__init__.py").write_text("")
    (pkg / "data" / "catalog.py").write_text("def f():\n    from ..engine import x\n    from . import folders\n")
    (pkg / "data" / "folders.py").write_text("import tptlib.data.catalog\n")
    edges = _edges(_modules(pkg))
    assert ("tptlib.data.catalog", "tptlib.engine") in edges
    assert ("tptlib.data.catalog", "tptlib.data.folders") in edges
    assert _cycles(edges) == [["tptlib.data.catalog", "tptlib.data.folders"]]


def test_lazy_public_names_are_listed_and_resolve():
    import importlib
    for name in ("tptlib", "tptlib.data", "tptlib.methods"):
        package = importlib.import_module(name)
        assert set(package.__all__) - {"versions", "__version__"} == set(package._EXPORTS), name
        for public in package.__all__:
            assert getattr(package, public) is not None, f"{name}.{public}"


def test_no_module_or_function_is_over_its_size_limit():
    oversized = _oversized(_modules(PACKAGE))
    assert not oversized, "split along a seam (re-export what moves):\n" + "\n".join(oversized)


def test_the_size_rule_counts_module_lines_and_every_function_at_any_depth(tmp_path):
    pkg = tmp_path / "tptlib"
    pkg.mkdir()
    body = "    x = 1\n"
    (pkg / "__init__.py").write_text("")
    (pkg / "long.py").write_text("x = 1\n" * (MAX_MODULE_LINES + 1))
    (pkg / "limit.py").write_text("x = 1\n" * MAX_MODULE_LINES)
    (pkg / "funcs.py").write_text(
        "def at_limit():\n" + body * (MAX_FUNCTION_LINES - 1)
        + "@staticmethod\ndef over():\n" + body * MAX_FUNCTION_LINES
        + "class C:\n    async def method(self):\n" + ("    " + body) * MAX_FUNCTION_LINES
        + "def outer():\n    def inner():\n" + ("    " + body) * MAX_FUNCTION_LINES)
    m, f = MAX_MODULE_LINES, MAX_FUNCTION_LINES
    assert set(_oversized(_modules(pkg))) == {
        f"{pkg / 'long.py'}: {m + 1} lines (at most {m})",
        f"{pkg / 'funcs.py'}:{f + 2} over: {f + 1} lines (at most {f})",           # the decorator not counted
        f"{pkg / 'funcs.py'}:{2 * f + 4} method: {f + 1} lines (at most {f})",
        f"{pkg / 'funcs.py'}:{3 * f + 5} outer: {f + 2} lines (at most {f})",
        f"{pkg / 'funcs.py'}:{3 * f + 6} inner: {f + 1} lines (at most {f})",
    }
