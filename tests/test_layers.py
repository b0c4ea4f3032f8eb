"""The architecture (docs/DESIGN.md, "Layout"), checked on the sources: every import counts,
also the ones inside functions.

    datl.core  <  datl.manifests  <  datl.neural  <  datl.curate | datl.pretrain | datl.finetune  <  datl

- a module imports only its own layer's group or lower layers; the three stages never import
  each other;
- no import cycle anywhere, between packages or inside one (a package's ``__init__``
  re-exporting its own modules aside; inside a package, a module imports its neighbours,
  never the package itself);
- the manifest package is the ground floor: pyarrow, numpy, PIL and the torch-free part of
  the core, nothing else, checked on the sources and in a fresh interpreter.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

from sources import FOLDERS, ROOT, modules

LAYERS = [
    ("datl.core", 0),
    ("datl.manifests", 1),
    ("datl.neural", 2),
    ("datl.curate", 3),
    ("datl.pretrain", 3),
    ("datl.finetune", 3),
    ("datl", 4),
]
GROUND_THIRD_PARTY = {"pyarrow", "numpy", "PIL"}
GROUND_CORE = {
    "datl.core",
    "datl.core.errors",
    "datl.core.files",
    "datl.core.pool",
    "datl.core.progress",
    "datl.core.specs",
}


def group(module: str) -> tuple[str, int]:
    """(layer group, layer) of a datl module: the longest prefix in LAYERS."""
    for prefix, layer in LAYERS:
        if module == prefix or module.startswith(prefix + "."):
            return prefix, layer
    raise ValueError(module)


def _resolve(name: str, known: dict[str, Path]) -> str | None:
    """The known module an imported name lands in: the name itself, or its longest known prefix
    (``from datl.core.files import atomic_output`` -> datl.core.files)."""
    while name:
        if name in known:
            return name
        name = name.rpartition(".")[0]
    return None


def imports(module: str, path: Path, known: dict[str, Path]) -> tuple[set[str], set[str]]:
    """(datl modules, third-party top-level names) that the module imports."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    ours, theirs = set(), set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(up + ([base] if base else []))
            names = [f"{base}.{a.name}" for a in node.names]
        else:
            continue
        for n in names:
            if n.split(".")[0] == "datl":
                hit = _resolve(n, known)
                if hit is not None:
                    ours.add(hit)
            elif n and n.split(".")[0] not in sys.stdlib_module_names and n != "__future__":
                theirs.add(n.split(".")[0])
    return ours - {module}, theirs


def graph(root: Path) -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    known = modules(root)
    edges, third = {}, {}
    for m, p in known.items():
        edges[m], third[m] = imports(m, p, known)
    return edges, third


def layer_violations(root: Path) -> list[str]:
    edges, _ = graph(root)
    bad = []
    for m, targets in sorted(edges.items()):
        g, layer = group(m)
        for t in sorted(targets):
            tg, tlayer = group(t)
            if tg != g and tlayer >= layer:
                bad.append(f"{m} imports {t} (layer {tlayer} >= {layer})")
    return bad


def package_self_imports(root: Path) -> list[str]:
    """Modules that import the package they are in (its ``__init__``), not its modules."""
    edges, _ = graph(root)
    known = modules(root)
    bad = []
    for m, targets in sorted(edges.items()):
        if known[m].name == "__init__.py":
            continue
        for t in sorted(targets):
            if known[t].name == "__init__.py" and m.startswith(t + "."):
                bad.append(f"{m} imports its own package {t}")
    return bad


def cycles(root: Path) -> list[list[str]]:
    """Every import cycle (strongly connected component of more than one module), a package's
    ``__init__`` importing its own modules left out."""
    edges, _ = graph(root)
    known = modules(root)
    g = {
        m: {t for t in ts if not (known[m].name == "__init__.py" and t.startswith(m + "."))} for m, ts in edges.items()
    }
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(g[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(g):
        if v not in index:
            visit(v)
    return found


def ground_floor_violations(root: Path) -> list[str]:
    edges, third = graph(root)
    bad = []
    for m in sorted(edges):
        if not m.startswith("datl.manifests"):
            continue
        for t in sorted(third[m] - GROUND_THIRD_PARTY):
            bad.append(f"{m} imports {t}")
        for t in sorted(edges[m]):
            if t.startswith("datl.core") and t not in GROUND_CORE:
                bad.append(f"{m} imports {t}")
    return bad


def test_no_lower_layer_imports_a_higher_one():
    assert layer_violations(ROOT) == []


def test_no_import_cycle_anywhere():
    assert cycles(ROOT) == []
    assert package_self_imports(ROOT) == []


def test_the_manifest_package_is_the_ground_floor():
    assert ground_floor_violations(ROOT) == []


def test_importing_every_manifest_module_loads_no_torch_click_or_sklearn():
    """In a fresh interpreter, what importing the manifest package (all of it) actually loads."""
    names = sorted(m for m in modules(ROOT) if m.startswith("datl.manifests"))
    code = (
        f"import importlib, sys\nfor m in {names!r}: importlib.import_module(m)\n"
        "print(' '.join(sorted(k for k in ('torch', 'click', 'sklearn', 'timm', 'matplotlib', 'faiss') "
        "if k in sys.modules)))"
    )
    res = subprocess.run([sys.executable, "-P", "-c", code], capture_output=True, text=True, cwd="/")
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == ""


def _tree(tmp_path: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        p = tmp_path / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    for folder in FOLDERS.values():
        (tmp_path / folder).mkdir(exist_ok=True)
        (tmp_path / folder / "__init__.py").touch()
    return tmp_path


def test_the_checks_catch_an_upward_import_a_sideways_one_a_cycle_and_torch_on_the_ground_floor(tmp_path):
    root = _tree(
        tmp_path,
        {
            "datl/core/__init__.py": "",
            "datl/neural/__init__.py": "",
            "datl/neural/loop.py": "def f():\n    from datl.pretrain.train import run\n",
            "pretrain/train.py": "from datl.neural import loop\n",
            "curate/x.py": "import datl.finetune.adapt\nfrom . import y\n",
            "curate/y.py": "from .x import z\n",
            "finetune/adapt.py": "",
            "manifests/io.py": "import torch\nfrom datl.core.options import opt\nfrom . import schema\n",
            "manifests/schema.py": "from datl.manifests import Manifest\nfrom .io import x\n",
            "datl/core/options.py": "",
            "datl/cli.py": "from datl.curate.x import cli\nfrom datl.manifests.io import Manifest\n",
        },
    )
    assert layer_violations(root) == [
        "datl.curate.x imports datl.finetune.adapt (layer 3 >= 3)",
        "datl.neural.loop imports datl.pretrain.train (layer 3 >= 2)",
    ]
    assert cycles(root) == [
        ["datl.curate.x", "datl.curate.y"],
        ["datl.manifests.io", "datl.manifests.schema"],
        ["datl.neural.loop", "datl.pretrain.train"],
    ]
    assert package_self_imports(root) == ["datl.manifests.schema imports its own package datl.manifests"]
    assert ground_floor_violations(root) == [
        "datl.manifests.io imports torch",
        "datl.manifests.io imports datl.core.options",
    ]
