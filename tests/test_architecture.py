"""The floors inside core/: which module may import which (an allowed-imports table), and no
import cycle among core modules (top-level and function-level imports alike)."""

from __future__ import annotations

import ast
from pathlib import Path

CORE = Path(__file__).resolve().parents[1] / "core"

# Every core module belongs to one floor, by the longest prefix of its dotted name under
# actgeom.core ("" is the package's own __init__). A module not matched here fails the test:
# add it to the floor it belongs to.
FLOORS = {
    "base": ("", "base"),
    "dump": ("dump",),
    "numerics": ("metrics",),
    "state": ("state",),
    "families": ("families",),
    "analysis": ("analysis", "baseline", "compare", "inference", "nulls"),  # compare: its own run over aligned files
    "backends": ("backends",),
    "face": ("api", "api_files", "candidates", "capture", "capture_inputs", "capture_models", "capture_outputs",
             "capture_run", "extract", "info", "public", "statistics"),
}

# floor → the floors it may import (its own included). The orchestrator (analysis) never imports
# the backends nor the public face; the backends import analysis, never the api.
ALLOWED = {
    "base": {"base"},
    "dump": {"base", "dump"},
    "numerics": {"base", "numerics"},
    "state": {"base", "dump", "numerics", "state"},
    "families": {"base", "dump", "numerics", "state", "families"},
    "analysis": {"base", "dump", "numerics", "state", "families", "analysis"},
    "backends": {"base", "dump", "numerics", "state", "families", "analysis", "backends"},
    "face": {"base", "dump", "numerics", "state", "families", "analysis", "backends", "face"},
}


def core_modules(root: Path = CORE) -> dict[str, Path]:
    """{dotted name under actgeom.core ("" for core/__init__.py): file}."""
    modules = {}
    for path in root.rglob("*.py"):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


def import_graph(root: Path = CORE) -> dict[str, set[str]]:
    """{core module: the core modules it imports}, from every import statement at any depth (a
    function's lazy import and one under ``if TYPE_CHECKING:`` count as much as a top-level one).
    ``from package import name`` points at the submodule when ``name`` is one, else at the package."""
    modules = core_modules(root)
    graph = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        targets = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    parts = package.split(".") if package else []
                    base = ".".join(["actgeom", "core", *parts][:len(parts) + 3 - node.level])
                    base = f"{base}.{node.module}" if node.module else base
                else:
                    base = node.module or ""
                targets |= {f"{base}.{alias.name}" if _local(f"{base}.{alias.name}") in modules else base
                            for alias in node.names}
        graph[name] = {_local(target) for target in targets if _local(target) in modules} - {name}
    return graph


def _local(dotted: str) -> str | None:
    """``actgeom.core.x.y`` → ``x.y`` (``actgeom.core`` → ""); None outside core."""
    if dotted == "actgeom.core":
        return ""
    return dotted.removeprefix("actgeom.core.") if dotted.startswith("actgeom.core.") else None


def floor_of(module: str) -> str | None:
    best, found = -1, None
    for floor, prefixes in FLOORS.items():
        for prefix in prefixes:
            if (module == prefix or (prefix and module.startswith(prefix + "."))) and len(prefix) > best:
                best, found = len(prefix), floor
    return found


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle through each strongly connected component of more than one module (Tarjan)."""
    index, low, on_stack, stack, components = {}, {}, set(), [], []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph.get(node, ())):
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


def test_the_graph_sees_lazy_and_relative_imports(tmp_path):
    (tmp_path / "pkg").mkdir()
    (tmp_path / "__init__.py").write_text("")
    (tmp_path / "a.py").write_text("def f():\n    from actgeom.core import b\n")
    (tmp_path / "b.py").write_text("from .pkg.c import x\n")
    (tmp_path / "pkg" / "__init__.py").write_text("")
    (tmp_path / "pkg" / "c.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                                           "    from actgeom.core.b import y\nfrom .. import a\n")
    graph = import_graph(tmp_path)
    assert graph["a"] == {"b"} and graph["b"] == {"pkg.c"} and graph["pkg.c"] == {"a", "b"}
    assert cycles(graph) == [["a", "b", "pkg.c"]]


def test_every_core_module_has_a_floor():
    assert [name for name in core_modules() if floor_of(name) is None] == []


def test_core_imports_only_its_own_floor_and_those_below():
    graph = import_graph()
    crossing = [f"{name} ({floor_of(name)}) imports {target} ({floor_of(target)})"
                for name, targets in sorted(graph.items()) for target in sorted(targets)
                if floor_of(name) and floor_of(target) and floor_of(target) not in ALLOWED[floor_of(name)]]
    assert crossing == []


def test_no_import_cycle_in_core():
    assert cycles(import_graph()) == []


def test_one_document_header():
    """Every document's head (tool, version, command, created, options, pass) is written by
    core/base/result.document_header alone: no other module of core/ or cli/ spells it out."""
    root = CORE.parent
    spelled = [str(path.relative_to(root)) for folder in ("core", "cli") for path in sorted((root / folder).rglob("*.py"))
               if '"tool": "actgeom"' in path.read_text(encoding="utf-8") and path != CORE / "base" / "result.py"]
    assert spelled == []


def test_one_inference_record():
    """How intervals and nulls were made is written by core/metrics/uncertainty.inference_record
    alone, for the families' documents and compare's alike."""
    root = CORE.parent
    spelled = [str(path.relative_to(root)) for folder in ("core", "cli") for path in sorted((root / folder).rglob("*.py"))
               if '"method": "delete-a-group jackknife"' in path.read_text(encoding="utf-8")
               and path != CORE / "metrics" / "uncertainty.py"]
    assert spelled == []


def test_every_family_is_a_real_one_and_compare_is_its_own_subpackage():
    """Issue #23: every entry of FAMILIES answers the single-dump protocol (no stub that raises);
    compare, whose pass is joint over aligned rows of two files, lives in core/compare/ and reaches
    metrics_info, the docs and the report through REGISTRIES, its options through family_options."""
    from actgeom.core.analysis import FAMILIES, REGISTRIES, family_options, metrics_info
    from actgeom.core.families.protocol import DumpFacts
    from actgeom.core.metrics.compare import CompareOptions

    for name, family in FAMILIES.items():
        assert isinstance(family.needs(family_options(name), DumpFacts(has_labels=True)), list), name
    assert "compare" not in FAMILIES and set(REGISTRIES) == {*FAMILIES, "compare"}
    assert {info["family"] for info in metrics_info(["compare"]).values()} == {"compare"}
    assert family_options("compare", {"subsample": 10}) == CompareOptions(subsample=10)
    assert not (CORE / "families" / "compare.py").exists() and (CORE / "compare" / "__init__.py").exists()
    assert floor_of("compare.comparison") == floor_of("analysis")
