"""The house's shape, checked: rooms import only rooms below them (no cycles, no upward imports,
lazy imports inside functions and type-only imports included), and no room or function grows past what one reader holds."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "m2ib"

# Each room may import rooms of a lower rank only (rooms of one rank do not import each other).
LAYERS = [
    ("errors", "version", "collector"),
    ("fileio", "settings", "settings_file", "tokenizer", "maps", "registry"),
    ("inputs", "models", "datasets", "results"),
    ("preflight", "backends", "training"),
    ("viz",),
    ("explanation",),
    ("methods",),
    ("comparison", "generative"),  # generative: M2IB on a generative VLM's answer (its own seam)
    ("api",),
    ("metrics",),
    ("interactions",),  # word-region interactions: below evaluation, which measures them (grounding)
    ("evaluation", "pairs"),  # pairs: the explain pipeline over both kinds of method
    ("auditing", "serve", "tuning"),  # tuning: m2ib tune, over methods, metrics and evaluation
    ("cli",),
    ("m2ib", "__main__"),  # the package's namespace and `python -m m2ib`
]
RANK = {room: rank for rank, rooms in enumerate(LAYERS) for room in rooms}
# Sizes in statements, not lines: ruff format puts one argument per line where a call does not fit, so
# physical lines measure the formatter (it grew src/ by 13 %, a Gradio layout function by 60 %), while
# statements measure what a reader holds. The largest today: 274 in a module, 51 in a function.
MAX_MODULE_STATEMENTS = 300
MAX_FUNCTION_STATEMENTS = 60


def _module_name(path: Path) -> tuple[str, str]:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    module = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    return module, package


def _room(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "m2ib"


def room_imports() -> dict[tuple[str, str], list[str]]:
    """(importing room, imported room) -> the modules where it happens (every import statement)."""
    edges: dict[tuple[str, str], list[str]] = defaultdict(list)
    for path in SRC.rglob("*.py"):
        module, package = _module_name(path)
        for node in ast.walk(ast.parse(path.read_text())):  # type-only imports too: a type is a dependency
            if isinstance(node, ast.ImportFrom) and node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
                names = [target] if node.module else [f"{target}.{a.name}" for a in node.names]
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("m2ib"):
                names = [node.module]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names if a.name.startswith("m2ib")]
            else:
                continue
            for name in names:
                a, b = _room(module), _room(name)
                if a != b:
                    edges[(a, b)].append(module)
    return edges


def test_every_room_has_a_layer():
    rooms = {_room(_module_name(p)[0]) for p in SRC.rglob("*.py")}
    assert rooms <= set(RANK), f"rooms without a layer in LAYERS: {sorted(rooms - set(RANK))}"


def test_rooms_import_only_rooms_below_them():
    upward = [
        f"{a} -> {b} (in {', '.join(sorted(set(where)))})"
        for (a, b), where in room_imports().items()
        if b in RANK and RANK[b] >= RANK.get(a, len(LAYERS))
    ]
    assert not upward, "upward or sideways imports:\n" + "\n".join(sorted(upward))


def test_the_layer_check_catches_an_upward_import(tmp_path, monkeypatch):
    """The check above is not vacuous: an import of the API from the backends is reported."""
    fake = tmp_path / "m2ib"
    (fake / "backends").mkdir(parents=True)
    (fake / "api.py").write_text("")
    (fake / "backends" / "__init__.py").write_text("def f():\n    from ..api import explain\n")
    monkeypatch.setattr(__import__(__name__), "SRC", fake)
    assert ("backends", "api") in room_imports()


def _statements(node: ast.AST) -> int:
    return sum(isinstance(n, ast.stmt) for n in ast.walk(node))


def test_rooms_and_functions_stay_readable():
    too_long = []
    for path in SRC.rglob("*.py"):
        tree = ast.parse(path.read_text())
        if _statements(tree) > MAX_MODULE_STATEMENTS:
            too_long.append(f"{path.relative_to(SRC)}: {_statements(tree)} statements")
        for node in ast.walk(tree):
            if (
                isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
                and _statements(node) - 1 > MAX_FUNCTION_STATEMENTS
            ):
                too_long.append(f"{path.relative_to(SRC)}: {node.name}() {_statements(node) - 1} statements")
    assert not too_long, "\n".join(too_long)


def test_the_command_line_lives_in_cli():
    """Rooms keep their logic only: every subcommand's parser and handler are in m2ib.cli (no room has a command.py)."""
    stray = sorted(str(p.relative_to(SRC)) for p in SRC.rglob("command.py"))
    assert not stray, f"command-line modules outside m2ib/cli: {stray}"


def module_imports(src: Path = None) -> dict[str, set[str]]:
    """Module -> the m2ib modules it imports (lazy ones inside functions and type-only ones included)."""
    src = src or SRC
    modules = {
        ".".join(p.relative_to(src.parent).with_suffix("").parts).removesuffix(".__init__") for p in src.rglob("*.py")
    }
    graph: dict[str, set[str]] = defaultdict(set)
    for path in src.rglob("*.py"):
        parts = path.relative_to(src.parent).with_suffix("").parts
        module = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
        for node in ast.walk(ast.parse(path.read_text())):  # type-only imports too: a circle all the same
            if isinstance(node, ast.ImportFrom) and node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("m2ib"):
                target = node.module
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name in modules:
                        graph[module].add(alias.name)
                continue
            else:
                continue
            for alias in node.names:  # `from pkg import submodule` imports the submodule
                name = f"{target}.{alias.name}"
                graph[module].add(name if name in modules else target)
        graph[module].discard(module)
    return graph


def import_circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected groups of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    circles = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                circles.append(sorted(group))

    for v in sorted(set(graph) | {w for ws in graph.values() for w in ws}):
        if v not in index:
            visit(v)
    return circles


def test_no_import_circles_between_modules():
    """No two modules import each other, directly or around a circle, inside a room included."""
    circles = import_circles(module_imports())
    assert not circles, "import circles:\n" + "\n".join(" <-> ".join(c) for c in circles)


def test_the_circle_check_catches_a_circle_inside_a_room(tmp_path):
    fake = tmp_path / "m2ib"
    (fake / "metrics").mkdir(parents=True)
    (fake / "metrics" / "__init__.py").write_text("")
    (fake / "metrics" / "base.py").write_text("from .config import Config\n")
    (fake / "metrics" / "config.py").write_text("def f():\n    from . import base\n")
    assert import_circles(module_imports(fake)) == [["m2ib.metrics.base", "m2ib.metrics.config"]]
