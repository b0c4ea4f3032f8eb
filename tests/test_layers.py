"""The import direction (docs/DESIGN.md, "Layout"): a lower layer never imports a higher one.

    manifests  <  datl_torch  <  pretrain | curate | finetune  <  datl

The three stages never import each other, and nothing imports datl. Every import in
the package sources counts, also the ones inside functions.
"""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LAYERS = {"manifests": 0, "datl_torch": 1, "pretrain": 2, "curate": 2, "finetune": 2, "datl": 3}


def imported_packages(path: Path, package: str) -> set[str]:
    """Top-level datl packages that the module at ``path`` (in ``package``) imports."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            names = [package if node.level else (node.module or "")]
        else:
            continue
        found |= {n.split(".")[0] for n in names if n.split(".")[0] in LAYERS}
    return found


def violations(root: Path) -> list[str]:
    bad = []
    for package, layer in LAYERS.items():
        for path in sorted((root / package).rglob("*.py")):
            for other in imported_packages(path, package) - {package}:
                if LAYERS[other] >= layer:
                    bad.append(f"{path.relative_to(root)} imports {other} (layer {LAYERS[other]} >= {layer})")
    return bad


def test_no_lower_layer_imports_a_higher_one():
    assert violations(ROOT) == []


def test_the_check_catches_an_upward_and_a_sideways_import(tmp_path):
    for package in LAYERS:
        (tmp_path / package).mkdir()
        (tmp_path / package / "__init__.py").write_text("")
    (tmp_path / "datl_torch" / "loop.py").write_text("def f():\n    from pretrain.train import run\n")
    (tmp_path / "curate" / "x.py").write_text("import finetune.adapt\nfrom . import y\n")
    (tmp_path / "datl" / "ok.py").write_text("from curate.cli import cli\nfrom manifests import Manifest\n")
    found = violations(tmp_path)
    assert found == ["datl_torch/loop.py imports pretrain (layer 2 >= 1)",
                     "curate/x.py imports finetune (layer 2 >= 2)"]
