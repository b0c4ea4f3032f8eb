"""Where the package's sources are: the folders pyproject.toml's package-dir maps into the
one ``datl`` namespace, and the module name of each source file."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# module prefix -> folder, as pyproject.toml's package-dir maps them
FOLDERS = {
    "datl.manifests": "manifests",
    "datl.curate": "curate",
    "datl.pretrain": "pretrain",
    "datl.finetune": "finetune",
    "datl": "datl",
}


def modules(root: Path = ROOT) -> dict[str, Path]:
    """Module name -> source file, for every .py file of the package folders under ``root``."""
    out: dict[str, Path] = {}
    for prefix, folder in FOLDERS.items():
        for path in sorted((root / folder).rglob("*.py")):
            parts = path.relative_to(root / folder).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out.setdefault(".".join((prefix, *parts)), path)
    return out
