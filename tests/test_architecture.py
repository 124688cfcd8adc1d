"""The house's shape, checked: rooms import only rooms below them (no cycles, no upward imports,
lazy imports inside functions included), and no room or function grows past what one reader holds."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "m2ib"

# Each room may import rooms of a lower rank only (rooms of one rank do not import each other).
LAYERS = [
    ("errors", "version"),
    ("fileio", "settings", "tokenizer", "maps", "registry"),
    ("inputs", "models", "datasets", "results"),
    ("preflight", "backends", "training"),
    ("viz",),
    ("explanation",),
    ("methods",),
    ("comparison",),
    ("api",),
    ("metrics",),
    ("interactions",),  # word-region interactions: below evaluation, which measures them (grounding)
    ("evaluation", "pairs"),  # pairs: the explain pipeline over both kinds of method
    ("auditing", "serve"),
    ("cli",),
    ("m2ib", "__main__"),  # the package's namespace and `python -m m2ib`
]
RANK = {room: rank for rank, rooms in enumerate(LAYERS) for room in rooms}
MAX_MODULE_LINES = 450
MAX_FUNCTION_LINES = 90


def _module_name(path: Path) -> tuple[str, str]:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    module = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    return module, package


def _room(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "m2ib"


def _runtime_nodes(tree: ast.AST):
    """Every node, except those under ``if TYPE_CHECKING:`` (imports for type hints only)."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and getattr(node.test, "id", getattr(node.test, "attr", "")) == "TYPE_CHECKING":
            yield from (n for child in node.orelse for n in [child, *_runtime_nodes(child)])
            continue
        yield node
        yield from _runtime_nodes(node)


def room_imports() -> dict[tuple[str, str], list[str]]:
    """(importing room, imported room) -> the modules where it happens (every import statement)."""
    edges: dict[tuple[str, str], list[str]] = defaultdict(list)
    for path in SRC.rglob("*.py"):
        module, package = _module_name(path)
        for node in _runtime_nodes(ast.parse(path.read_text())):
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
    upward = [f"{a} -> {b} (in {', '.join(sorted(set(where)))})" for (a, b), where in room_imports().items()
              if b in RANK and RANK[b] >= RANK.get(a, len(LAYERS))]
    assert not upward, "upward or sideways imports:\n" + "\n".join(sorted(upward))


def test_the_layer_check_catches_an_upward_import(tmp_path, monkeypatch):
    """The check above is not vacuous: an import of the API from the backends is reported."""
    fake = tmp_path / "m2ib"
    (fake / "backends").mkdir(parents=True)
    (fake / "api.py").write_text("")
    (fake / "backends" / "__init__.py").write_text("def f():\n    from ..api import explain\n")
    monkeypatch.setattr(__import__(__name__), "SRC", fake)
    assert ("backends", "api") in room_imports()


def test_rooms_and_functions_stay_readable():
    too_long = []
    for path in SRC.rglob("*.py"):
        text = path.read_text()
        if text.count("\n") > MAX_MODULE_LINES:
            too_long.append(f"{path.relative_to(SRC)}: {text.count(chr(10))} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    too_long.append(f"{path.relative_to(SRC)}: {node.name}() {lines} lines")
    assert not too_long, "\n".join(too_long)


def test_the_command_line_lives_in_cli():
    """Rooms keep their logic only: every subcommand's parser and handler are in m2ib.cli (no room has a command.py)."""
    stray = sorted(str(p.relative_to(SRC)) for p in SRC.rglob("command.py"))
    assert not stray, f"command-line modules outside m2ib/cli: {stray}"
