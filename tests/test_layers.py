"""No module imports one above it (docs/ARCHITECTURE.md's layers), and no import cycle between parts.

The imports of every module under src/balora are read with ``ast`` (imports inside functions count too: a lazy
import is still a dependency). Each module belongs to one part; each part to one layer. A module may import its
own part and parts of lower layers, never a higher layer, and never another part of the same layer (training
and export, for instance, share the run-folder layout through balora.run_layout instead of importing each other).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "balora"

# Lowest first. A part is a subpackage or a top-level module (named without the "balora." prefix).
LAYERS: list[tuple[str, ...]] = [
    ("foundation",),                 # _fields atomic config_io config peft_compat regularizers fused distributed ...
    ("core",),                       # reference objectives heads baselines methods inits trainer models run_layout
    ("data",),
    ("evaluation",),
    ("training", "export"),          # the run pipeline; export reads run folders
    ("reports", "serving"),          # serving checks exported adapter folders against vLLM's rules
    ("bench", "demo", "integrations"),
    ("api",),                        # balora/__init__.py: the lazy public API (and __version__)
    ("cli", "options_doc"),
]
FOUNDATION = {"_fields", "atomic", "config_io", "config", "peft_compat", "regularizers", "fused", "distributed",
              "profiling", "schedules", "pooling"}
CORE = {"reference", "objectives", "heads", "classifier_loading", "baselines", "methods", "trainer", "models",
        "run_layout", "quant", "sharding", "inits"}


def part_of(module: str) -> str:
    """``balora.training.nlu`` -> ``training``; ``balora.config`` -> ``foundation``; ``balora`` -> ``api``."""
    parts = module.split(".")
    if parts == ["balora"]:
        return "api"
    head = parts[1]
    return "foundation" if head in FOUNDATION else "core" if head in CORE else head


def layer_of(part: str) -> int:
    for i, parts in enumerate(LAYERS):
        if part in parts:
            return i
    raise AssertionError(f"part {part!r} has no layer in tests/test_layers.py: place it")


def module_name(path: Path) -> str:
    rel = path.relative_to(SRC.parent).with_suffix("")
    names = list(rel.parts)
    return ".".join(names[:-1] if names[-1] == "__init__" else names)


def imports_of(path: Path, modules: set[str]) -> set[str]:
    """The balora modules ``path`` imports (``from . import x`` names module x when x is one)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.split(".")[0] == "balora")
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "balora":
                continue
            subs = [f"{target}.{a.name}" for a in node.names if f"{target}.{a.name}" in modules]
            if len(subs) < len(node.names):
                out.add(target)  # a name defined in the module (or package) itself
            out.update(subs)
    return {m for m in out if m != name}


def import_graph() -> dict[str, set[str]]:
    paths = sorted(SRC.rglob("*.py"))
    modules = {module_name(p) for p in paths}
    return {module_name(p): {m for m in imports_of(p, modules) if m in modules} for p in paths}


def test_the_parser_sees_relative_and_lazy_imports() -> None:
    graph = import_graph()
    assert "balora.run_layout" in graph["balora.export"]      # from .run_layout import ...
    assert "balora.models" in graph["balora.export"]          # an import inside a function
    assert "balora.training.run_config" in graph["balora.training.nlu"]


def test_no_module_imports_a_layer_above_or_a_peer() -> None:
    bad = []
    for module, targets in import_graph().items():
        src = part_of(module)
        for target in sorted(targets):
            dst = part_of(target)
            if dst == src:
                continue
            if layer_of(dst) > layer_of(src):
                bad.append(f"{module} imports {target} ({dst} is above {src})")
            elif layer_of(dst) == layer_of(src):
                bad.append(f"{module} imports {target} ({dst} and {src} are peers in one layer)")
    assert not bad, "\n".join(bad)


def test_no_import_cycle_between_parts() -> None:
    edges: dict[str, set[str]] = {}
    for module, targets in import_graph().items():
        for target in targets:
            if part_of(target) != part_of(module):
                edges.setdefault(part_of(module), set()).add(part_of(target))

    def reaches(start: str, goal: str, seen: set[str]) -> bool:
        return any(n == goal or (n not in seen and reaches(n, goal, seen | {n})) for n in edges.get(start, ()))

    cycles = sorted(p for p in edges if reaches(p, p, set()))
    assert not cycles, f"parts on an import cycle: {cycles}"


@pytest.mark.parametrize("part", ["foundation", "core", "data", "evaluation", "training", "export", "reports"])
def test_lower_parts_do_not_import_the_applications(part: str) -> None:
    """Spelled out for the reader: nothing below the applications imports bench, demo or cli."""
    for module, targets in import_graph().items():
        if part_of(module) == part:
            assert not {part_of(t) for t in targets} & {"bench", "demo", "cli", "options_doc"}, module
