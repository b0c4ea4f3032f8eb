"""Dependencies as declared as used: the third-party imports of the package's sources are
exactly pyproject.toml's ``dependencies`` (no undeclared import, no unused declaration), the
tests' are declared there or in the ``test`` extra, the benchmarks' in ``bench``; the exact
torch pin lives in constraints.txt, never in the library's requirements."""

from __future__ import annotations

import ast
import re
import sys
from importlib.metadata import packages_distributions
from pathlib import Path

import tomllib

from sources import FOLDERS, ROOT

PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
# our own modules: the package, tests/_lib and the benchmarks (one bench script may reuse another's helpers)
OURS = {"datl", "probe"} | {p.stem for folder in ("tests/_lib", "bench") for p in (ROOT / folder).glob("*.py")}


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~\[; ]", requirement, maxsplit=1)[0].strip().lower().replace("_", "-")


def declared(extra: str | None = None) -> set[str]:
    reqs = (
        PYPROJECT["project"]["dependencies"] if extra is None else PYPROJECT["project"]["optional-dependencies"][extra]
    )
    return {_name(r) for r in reqs}


def third_party(paths: list[Path]) -> set[str]:
    """Top-level names of the non-stdlib modules the files import (inside functions too)."""
    found = set()
    for path in paths:
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level:
                names = [node.module or ""]
            else:
                continue
            found |= {n.split(".")[0] for n in names}
    return {n for n in found if n and n not in sys.stdlib_module_names and n not in OURS and n != "__future__"}


def distributions(modules: set[str]) -> set[str]:
    """The installed distributions that provide the import names."""
    which = packages_distributions()
    missing = sorted(m for m in modules if m not in which)
    assert not missing, f"imported but provided by no installed distribution: {missing}"
    return {which[m][0].lower().replace("_", "-") for m in modules}


def package_sources() -> list[Path]:
    return [p for folder in set(FOLDERS.values()) for p in sorted((ROOT / folder).rglob("*.py"))]


def test_the_package_imports_exactly_what_it_declares():
    used = distributions(third_party(package_sources()))
    assert used == declared(), (
        f"imported, not declared: {sorted(used - declared())}; declared, never imported: {sorted(declared() - used)}"
    )


def test_tests_and_benchmarks_import_only_what_is_declared():
    tests = distributions(third_party(sorted((ROOT / "tests").rglob("*.py"))))
    assert tests <= declared() | declared("test"), sorted(tests - declared() - declared("test"))
    bench = distributions(third_party(sorted((ROOT / "bench").glob("*.py"))))
    assert bench <= declared() | declared("bench"), sorted(bench - declared() - declared("bench"))


def test_the_exact_torch_pin_is_a_constraint_not_a_requirement():
    assert not any("==" in r for r in PYPROJECT["project"]["dependencies"])
    pins = {
        ln.split("==")[0]: ln.split("==")[1]
        for ln in (ROOT / "constraints.txt").read_text().splitlines()
        if ln and not ln.startswith("#")
    }
    assert set(pins) == {"torch", "torchvision"}
    assert "constraints.txt" in (ROOT / "Makefile").read_text()
