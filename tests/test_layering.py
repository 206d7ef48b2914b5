"""The architecture holds in the code: who may import whom, no cycles, a light edge import, and every
public name documented. An AST scan reads every import, including those inside functions."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = {"shared": "lnpt.shared", "cloud": "lnpt.cloud", "edge": "lnpt.edge", "lab": "lnpt.lab"}


def module_name(path: Path) -> str:
    folder, *rest = path.relative_to(REPO).with_suffix("").parts
    parts = [PACKAGES[folder], *rest]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports() -> dict[str, set[str]]:
    """module -> every module it imports anywhere in its body (absolute names)."""
    found: dict[str, set[str]] = {}
    for folder in PACKAGES:
        for path in (REPO / folder).rglob("*.py"):
            name = module_name(path)
            targets = found.setdefault(name, set())
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.Import):
                    targets.update(alias.name for alias in node.names)
                elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                    targets.add(node.module)
                    targets.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


GRAPH = imports()


def resolve(target: str) -> str | None:
    """The lnpt module an import names (a `from pkg import name` may name a module or an attribute)."""
    while target and target not in GRAPH:
        target = target.rpartition(".")[0]
    return target or None


@pytest.mark.parametrize("side,forbidden", [("lnpt.cloud", ("lnpt.edge", "lnpt.lab")),
                                            ("lnpt.edge", ("lnpt.cloud", "lnpt.lab")),
                                            ("lnpt.shared", ("lnpt.cloud", "lnpt.edge", "lnpt.lab"))])
def test_sides_never_import_each_other(side, forbidden):
    bad = sorted(f"{module} imports {target}" for module, targets in GRAPH.items() if module.startswith(side)
                 for target in targets if target.startswith(forbidden))
    assert not bad, "\n".join(bad)


def test_product_code_never_imports_tests():
    bad = sorted(f"{module} imports {target}" for module, targets in GRAPH.items() for target in targets
                 if target.split(".")[0] in ("tests", "support", "conftest"))
    assert not bad, "\n".join(bad)


def test_no_import_cycles():
    edges = {module: {resolve(t) for t in targets if t.startswith("lnpt.")} - {None, module}
             for module, targets in GRAPH.items()}
    index, low, stack, on_stack, cycles, counter = {}, {}, [], set(), [], [0]

    def visit(node: str) -> None:  # Tarjan's strongly connected components
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for nxt in edges.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for module in sorted(edges):
        if module not in index:
            visit(module)
    assert not cycles, f"import cycles: {cycles}"


def test_edge_import_stays_light():
    """An edge device imports the API without the cloud's or the reports' dependencies."""
    code = ("import sys; from lnpt.edge import prune, train, evaluate, export, open_teacher, run_edge_job; "
            "heavy = ('grpc_health', 'grpc_reflection', 'prometheus_client', 'matplotlib'); "
            "print(sorted({m.split('.')[0] for m in sys.modules if m.startswith(heavy)}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


@pytest.mark.parametrize("package", ["lnpt.shared", "lnpt.cloud", "lnpt.edge"])
def test_every_public_name_is_documented(package):
    import importlib

    module = importlib.import_module(package)
    assert module.__doc__ and module.__all__
    undocumented = [name for name in module.__all__ if name != "__version__"
                    and not (getattr(module, name).__doc__ or "").strip()]
    assert not undocumented, f"{package}: no docstring on {undocumented}"
