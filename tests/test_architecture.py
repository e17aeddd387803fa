"""The import graph of otcore, read from the source with `ast` (lazy imports inside functions too).

The house rules made checkable: no import cycle; fusion imports only numeric libraries and the
few otcore modules it builds on; Streamlit never; Plotly and pandas only where figures and
reports are drawn. Plus the golden cache key: a fixed spec set hashes to a fixed literal, so a
change of what a key holds is a decision (bump CACHE_FORMAT), never an accident.
"""
from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path


from tests.support import REPO

PACKAGE = REPO / "otcore"


def module_name(path: Path) -> str:
    """otcore/fusion/fuse.py -> 'otcore.fusion.fuse'; a package's __init__ is the package."""
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imports(name: str) -> set[str]:
    """Every module `name` imports, at any depth of its code (top-level names for third parties)."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolved against this module's package
                anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            for alias in node.names:  # `from otcore import cli` imports the module otcore.cli
                found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base)
    return {m if m.startswith("otcore") else m.split(".")[0] for m in found if m != "__future__"}


GRAPH = {name: imports(name) for name in MODULES}


def test_the_walk_sees_lazy_imports():
    assert "otcore.pipeline" in GRAPH["otcore.cli.fusion"]  # imported inside run_fuse only
    assert "ot" in GRAPH["otcore.fusion.transport"]  # imported inside transport_plan only


def import_cycles() -> list[set[str]]:
    """The strongly connected components of more than one module (Tarjan): each holds an import cycle."""
    edges = {name: sorted(m for m in targets if m in GRAPH and m != name) for name, targets in GRAPH.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[set[str]] = []

    def connect(name: str) -> None:
        index[name] = low[name] = len(index)
        stack.append(name)
        for target in edges[name]:
            if target not in index:
                connect(target)
                low[name] = min(low[name], low[target])
            elif target in stack:
                low[name] = min(low[name], index[target])
        if low[name] == index[name]:
            component = {stack.pop()}
            while name not in component:
                component.add(stack.pop())
            if len(component) > 1:
                cycles.append(component)

    for name in sorted(edges):
        if name not in index:
            connect(name)
    return cycles


def test_the_cycle_finder_finds_a_cycle(monkeypatch):
    monkeypatch.setitem(GRAPH, "otcore.errors", GRAPH["otcore.errors"] | {"otcore.config"})  # config imports errors
    assert {"otcore.config", "otcore.errors"} in [c & {"otcore.config", "otcore.errors"} for c in import_cycles()]


def test_no_import_cycle():
    assert import_cycles() == []


FUSION_MAY_IMPORT = {"torch", "numpy", "scipy", "ot", "otcore.models", "otcore.graph", "otcore.activations", "otcore.device",
                     "otcore.errors"}


def test_fusion_imports_only_numeric_libraries_models_activations_and_errors():
    stdlib = set(sys.stdlib_module_names)
    for name, targets in GRAPH.items():
        if name == "otcore.fusion" or name.startswith("otcore.fusion."):
            outside = {t for t in targets if t not in stdlib and not t.startswith("otcore.fusion")} - FUSION_MAY_IMPORT
            assert not outside, (name, outside)


def test_otcore_never_imports_streamlit():
    assert not [name for name, targets in GRAPH.items() if "streamlit" in targets]


def _draws(name: str) -> bool:
    """Whether a module is one that draws: otcore.figures*, otcore.*_figures, otcore.report*."""
    return re.search(r"(^|[._])(figures|report)", name.removeprefix("otcore.")) is not None


def _plotting_outside_figures() -> dict[str, set[str]]:
    return {name: targets & {"plotly", "pandas"} for name, targets in GRAPH.items()
            if targets & {"plotly", "pandas"} and not _draws(name)}


def test_the_plotting_check_sees_the_modules_that_draw():
    assert _draws("otcore.figures") and _draws("otcore.figures.partition") and _draws("otcore.report")
    assert _draws("otcore.figures.sweep") and not _draws("otcore.sweep") and not _draws("otcore.pipeline")
    assert {"plotly", "pandas"} <= set().union(*(t for n, t in GRAPH.items() if n.startswith("otcore.figures")))


def test_plotly_and_pandas_only_in_figures_and_reports():
    assert _plotting_outside_figures() == {}


def test_sweep_and_fusion_import_in_a_fresh_interpreter():
    code = "import otcore.sweep, otcore.fusion; print(otcore.fusion.fuse.__name__)"
    done = subprocess.run([sys.executable, "-c", code],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "fuse"


def test_no_module_is_longer_than_450_lines():
    long = {name: n for name, path in MODULES.items() if (n := len(path.read_text().splitlines())) > 450}
    assert not long, long


def test_golden_cache_keys():
    """A fixed spec set -> fixed keys. If this fails, a key changed: bump CACHE_FORMAT and update the literals."""
    from otcore.config import CACHE_FORMAT, DataSpec, FusionSpec, HessianSpec, ModelSpec, PruneSpec, TrainSpec, spec_hash
    from otcore.keys import parent_key

    assert CACHE_FORMAT == 5
    specs = (ModelSpec("vgg11_nobias"), TrainSpec(epochs=3, seed=7), FusionSpec(alignment="cca", weights=(1.0, 3.0)),
             PruneSpec(fraction=0.3, type="structured"), HessianSpec(top_k=2))
    assert spec_hash("fusion", *specs, ["k1", "k2"]) == "3a3856c312d12889a9118293"
    # The digits' content fingerprint is part of every key: the data, not its path.
    assert parent_key(DataSpec(), ModelSpec(), TrainSpec()) == "8c091c6f0e52494f9f24c981"
