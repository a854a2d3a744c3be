"""The package's modules import each other in one direction: no import cycle.

The graph is read from the source with ``ast``: every ``import`` statement
counts, at module level or inside a function, so a cycle cannot hide behind an
import deferred to call time. (``importlib.import_module`` of the package's lazy
public names, in ``sklearn_psa/__init__.py``, is no statement and no edge: the
package's ``__init__`` imports nothing statically.)
"""

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

import sklearn_psa

PACKAGE = "sklearn_psa"
ROOT = Path(sklearn_psa.__file__).resolve().parent


def package_modules(root=ROOT, package=PACKAGE):
    """``{module name: (path, is_package)}`` for every ``.py`` file below ``root``."""
    modules = {}
    for path in sorted(root.rglob("*.py")):
        parts = (package,) + path.relative_to(root).with_suffix("").parts
        is_package = parts[-1] == "__init__"
        if is_package:
            parts = parts[:-1]
        modules[".".join(parts)] = (path, is_package)
    return modules


def _imported_modules(node, module, is_package, modules):
    """The package modules an ``import`` statement of ``module`` runs."""
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
    else:
        if node.level:
            source = module if is_package else module.rpartition(".")[0]
            for _ in range(node.level - 1):
                source = source.rpartition(".")[0]
            source = f"{source}.{node.module}" if node.module else source
        else:
            source = node.module
        # ``from pkg import name`` imports the submodule ``pkg.name`` when there is one
        names = [f"{source}.{alias.name}" if f"{source}.{alias.name}" in modules else source
                 for alias in node.names]
    for name in names:
        while name and name not in modules:  # ``import a.b.c``: the deepest module of ours
            name = name.rpartition(".")[0]
        if name:
            yield name


def import_graph(modules):
    """``{module: {imported module: line}}`` over the package's own modules.

    ``from .x import y`` is an edge to ``x`` (or to the submodule ``x.y``, when
    ``y`` is one); ``import a.b.c`` is an edge to the deepest of ``a.b.c``,
    ``a.b`` that is a module of the package. The parent packages a submodule
    import runs implicitly are not edges.
    """
    graph = {}
    for module, (path, is_package) in modules.items():
        edges = graph[module] = {}
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                for name in _imported_modules(node, module, is_package, modules):
                    if name != module:
                        edges.setdefault(name, node.lineno)
    return graph


def find_cycle(graph):
    """One cycle of ``graph`` as a list of nodes (first == last), or None."""
    state = {}  # 1: on the current path, 2: done
    path = []

    def visit(node):
        state[node] = 1
        path.append(node)
        for succ in sorted(graph.get(node, ())):
            if state.get(succ) == 1:
                return path[path.index(succ):] + [succ]
            if succ not in state:
                cycle = visit(succ)
                if cycle:
                    return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


def describe_cycle(graph, modules, cycle):
    lines = []
    for a, b in zip(cycle, cycle[1:]):
        path = modules[a][0].relative_to(ROOT.parent)
        lines.append(f"  {a} -> {b}   ({path}:{graph[a][b]})")
    return "\n".join(lines)


def test_the_graph_sees_function_local_and_relative_imports(tmp_path):
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from . import b\n")
    (pkg / "b.py").write_text("def f():\n    from .sub.c import g\n")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "c.py").write_text("import os\n\ndef g():\n    import pkg.a\n")
    modules = package_modules(pkg, "pkg")
    graph = import_graph(modules)
    assert graph == {"pkg": {}, "pkg.a": {"pkg.b": 1}, "pkg.b": {"pkg.sub.c": 2},
                     "pkg.sub": {}, "pkg.sub.c": {"pkg.a": 4}}
    assert find_cycle(graph) == ["pkg.a", "pkg.b", "pkg.sub.c", "pkg.a"]
    (pkg / "b.py").write_text("import os.path\n")
    (pkg / "sub" / "c.py").write_text("from .. import sub\nfrom ..a import name\n")
    graph = import_graph(package_modules(pkg, "pkg"))
    assert graph["pkg.sub.c"] == {"pkg.sub": 1, "pkg.a": 2}
    assert find_cycle(graph) is None


def test_no_import_cycle():
    modules = package_modules()
    graph = import_graph(modules)
    assert len(graph) > 30
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle:\n" + describe_cycle(graph, modules, cycle)


def test_the_grid_module_is_a_leaf():
    graph = import_graph(package_modules())
    assert graph["sklearn_psa._grid"] == {}


@pytest.mark.parametrize("module", ["sklearn_psa", "sklearn_psa.io", "sklearn_psa.metrics",
                                    "sklearn_psa.datasets", "sklearn_psa.records",
                                    "sklearn_psa.walk", "sklearn_psa.cli"])
def test_importing_the_torch_free_parts_does_not_load_torch(module):
    code = f"import sys, {module}; print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT.parent)})
    assert result.stdout.strip() == "False"


def _private_uses(modules):
    """``[(module, line, what)]``: a private name of another module of the package imported
    (``from .x import _y``), or a private method of the package called on an object other
    than ``self``/``cls``/``super()`` outside the modules that define it (``est._fit(...)``)."""
    trees = {m: ast.parse(path.read_text(encoding="utf-8")) for m, (path, _) in modules.items()}
    defined = {}  # private function or method name -> modules defining it
    for module, tree in trees.items():
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and \
                    node.name.startswith("_") and not node.name.startswith("__"):
                defined.setdefault(node.name, set()).add(module)
    found = []
    for module, tree in trees.items():
        is_package = modules[module][1]
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                for alias in node.names:
                    single = ast.ImportFrom(module=node.module, names=[alias], level=node.level)
                    (name,) = list(_imported_modules(single, module, is_package, modules)) or [None]
                    private = alias.name.startswith("_") and not alias.name.startswith("__")
                    if private and name is not None and not name.endswith("." + alias.name):
                        found.append((module, node.lineno, f"imports {name}.{alias.name}"))
            elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
                receiver, attr = node.func.value, node.func.attr
                if attr not in defined or module in defined[attr]:
                    continue
                if isinstance(receiver, ast.Name) and receiver.id in ("self", "cls"):
                    continue
                if isinstance(receiver, ast.Call) and getattr(receiver.func, "id", None) == "super":
                    continue
                found.append((module, node.lineno, f"calls .{attr}() of another object"))
    return sorted(set(found))


def test_the_private_use_check_sees_imports_and_calls(tmp_path):
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "_a.py").write_text("def _helper():\n    pass\n\nclass A:\n    def _run(self):\n"
                               "        return self._run2()\n\n    def _run2(self):\n"
                               "        pass\n\ndef use(a):\n    return a._run()\n")
    (pkg / "b.py").write_text("from ._a import _helper, A\nfrom . import _a\n\n"
                              "def f(a):\n    _a.use(a)\n    return a._run()\n")
    found = _private_uses(package_modules(pkg, "pkg"))
    assert found == [("pkg.b", 1, "imports pkg._a._helper"),
                     ("pkg.b", 6, "calls ._run() of another object")]


def test_no_private_name_crosses_modules():
    found = _private_uses(package_modules())
    assert not found, "\n".join(f"  {m}:{line}: {what}" for m, line, what in found)


#: The layers of docs/architecture.md, lowest first: a module imports only modules of its own
#: layer or of a lower one. A new module takes its place here (and a line in that page).
LAYERS = (
    ("foundations", "sklearn_psa _grid _device _distributed _optional exceptions _files _validation datasets "
                    "datasets._shapes datasets._voc"),
    ("functional kernels", "_random_walk _walk_kernels _transition _affinity_labels crf "
                           "_permutohedral nn nn.base nn.weights nn.heads nn.seg_head "
                           "nn.affinity_head nn.tiny nn.resnet nn.efficientnet _training "
                           "callbacks _parallel _store"),
    ("records", "records metrics"),
    ("estimators", "_torch_estimator _base _cam_maps cam classifier_cam _affinity_transform affinity "
                   "feature_affinity walk _walk_choice segmenter _stages"),
    ("pipeline, files, command line", "cli __main__ _demo io _model_file plotting"),
)


def test_modules_import_only_their_layer_and_those_below():
    layer = {}
    for rank, (_, names) in enumerate(LAYERS):
        for name in names.split():
            layer[PACKAGE if name == PACKAGE else f"{PACKAGE}.{name}"] = rank
    modules = package_modules()
    assert sorted(set(modules) - set(layer)) == [], "modules without a layer in LAYERS"
    assert sorted(set(layer) - set(modules)) == [], "LAYERS names modules that do not exist"
    graph = import_graph(modules)
    upward = [f"  {a} ({LAYERS[layer[a]][0]}) -> {b} ({LAYERS[layer[b]][0]}), line {line}"
              for a, edges in graph.items() for b, line in edges.items() if layer[b] > layer[a]]
    assert not upward, "imports from a higher layer:\n" + "\n".join(upward)


def test_the_architecture_page_lists_every_module():
    page = (ROOT.parent / "docs" / "architecture.md").read_text(encoding="utf-8")
    for module, (path, is_package) in package_modules().items():
        if module == PACKAGE or module.count(".") > 1:
            continue  # the package's own __init__, and submodules of nn/ and datasets/
        name = f"`{path.parent.name}/`" if is_package else f"`{path.stem}`"
        assert name in page or f"`{path.name}`" in page, module
