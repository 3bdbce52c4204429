"""Architecture checks that the import contracts (pyproject.toml,
[tool.importlinter]) cannot express.

1. No import cycle between any two sensor modules. The graph is grimp's
   (import-linter's own): every import statement counts, the lazy ones
   inside functions and the ``if TYPE_CHECKING:`` ones too -- a type-only
   import is still one module knowing another, and a cycle through one is
   a layering mistake even though it never runs.

2. No module touches another module's ``_private`` names: neither
   ``from X import _name`` nor ``expr._name`` where ``expr`` is not
   ``self``/``cls`` and the module does not define ``_name`` itself
   (a def, a class, an assignment, ``self._name = ...``, a class-body
   annotation). The owner gives a small public method or property instead.

Run alone: ``.venv/bin/python -m pytest -q -p no:cacheprovider tests/test_architecture.py``
"""

from __future__ import annotations

import ast
from pathlib import Path

import grimp

SENSOR = Path(__file__).resolve().parent.parent / "sensor"

# Underscore names that are documented public API of their owner, not
# private: os._exit (exit without interpreter teardown), sys._getframe, and
# namedtuple's _replace/_asdict/_fields/_make (underscored only so they
# cannot clash with field names).
PUBLIC_UNDERSCORE = frozenset({"_exit", "_getframe", "_replace", "_asdict", "_fields", "_make"})


# ---------------------------------------------------------------- cycles


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's algorithm, iterative; the components of more than one module
    (or a module importing itself), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    found: list[list[str]] = []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            advanced = False
            for child in children:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                    advanced = True
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            if advanced:
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                comp = []
                while True:
                    m = stack.pop()
                    on_stack.discard(m)
                    comp.append(m)
                    if m == node:
                        break
                if len(comp) > 1 or node in graph[node]:
                    found.append(sorted(comp))
    return sorted(found)


def import_graph() -> dict[str, set[str]]:
    g = grimp.build_graph(
        "sensor", include_external_packages=False, exclude_type_checking_imports=False, cache_dir=None
    )
    return {m: set(g.find_modules_directly_imported_by(m)) for m in g.modules}


def cycle_report(graph: dict[str, set[str]]) -> list[str]:
    lines = []
    for comp in strongly_connected(graph):
        members = set(comp)
        edges = sorted((a, b) for a in comp for b in graph[a] if b in members)
        lines.append("cycle: " + ", ".join(comp))
        lines += [f"    {a} -> {b}" for a, b in edges]
    return lines


def test_tarjan_finds_cycles():
    g = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": {"e"}, "f": set()}
    assert strongly_connected(g) == [["a", "b", "c"], ["e"]]


def test_no_import_cycles():
    graph = import_graph()
    assert "sensor.pipeline" in graph and "sensor.core.frozen" in graph  # the graph is the real one
    report = cycle_report(graph)
    print("\n".join(report))
    assert not report, "\n" + "\n".join(report)


# ---------------------------------------------------------- private names


def is_private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__") and name not in PUBLIC_UNDERSCORE


def defined_names(tree: ast.AST) -> set[str]:
    """Every name the module itself defines, anywhere in it."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
        elif isinstance(node, ast.Attribute) and isinstance(node.ctx, (ast.Store, ast.Del)):
            if isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"):
                names.add(node.attr)
        elif isinstance(node, ast.alias):
            # `import x as _x`: the module's own binding
            if node.asname:
                names.add(node.asname)
        elif isinstance(node, ast.arg):
            names.add(node.arg)
    return names


def private_violations(path: Path, root: Path) -> list[str]:
    tree = ast.parse(path.read_text(), str(path))
    own = defined_names(tree)
    rel = path.relative_to(root)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            for alias in node.names:
                if is_private(alias.name):
                    found.append((node.lineno, alias.name))
        elif isinstance(node, ast.Attribute) and is_private(node.attr):
            if isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"):
                continue
            if node.attr in own:
                continue
            found.append((node.lineno, node.attr))
    return [f"{rel}:{line}: {name}" for line, name in sorted(set(found))]


def test_private_rule_itself(tmp_path):
    src = tmp_path / "m.py"
    src.write_text(
        "from a import _hidden, public\n"
        "import b as _b\n"
        "class C:\n"
        "    def __init__(self):\n"
        "        self._mine = 1\n"
        "    def f(self, other):\n"
        "        other._mine, other._theirs, self._x, _b.y, os._exit, other.__dict__\n"
        "        other._theirs = 2\n"
    )
    assert private_violations(src, tmp_path) == ["m.py:1: _hidden", "m.py:7: _theirs", "m.py:8: _theirs"]


def test_no_private_access_across_modules():
    violations = [v for path in sorted(SENSOR.rglob("*.py")) for v in private_violations(path, SENSOR.parent)]
    print("\n".join(violations))
    assert not violations, f"\n{len(violations)} private names used across modules:\n" + "\n".join(violations)
