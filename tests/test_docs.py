"""The docs a user reads: every relative link in README.md and docs/ resolves (the file, and
the heading an anchor names), and the README stays a front page (at most 12 KB)."""

from __future__ import annotations

import re
from pathlib import Path

from sources import ROOT

LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "bench" / "RESULTS.md"]


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces as hyphens."""
    text = re.sub(r"[`*_]", "", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
    return {slug(m.group(1)) for m in re.finditer(r"^#+ (.+)$", text, re.M)}


def broken(pages: list[Path], root: Path = ROOT) -> list[str]:
    bad = []
    for page in pages:
        text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)  # code blocks hold no links
        for target in LINK.findall(text):
            if re.match(r"^[a-z]+:", target):  # http:, mailto:, ...: not ours to check offline
                continue
            path, _, anchor = target.partition("#")
            dest = (page.parent / path).resolve() if path else page
            if not dest.exists():
                bad.append(f"{page.relative_to(root)}: {target} (no such file)")
            elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
                bad.append(f"{page.relative_to(root)}: {target} (no such heading)")
    return bad


def test_every_relative_link_resolves():
    assert broken(PAGES) == []


def test_the_check_catches_a_missing_file_and_a_missing_heading(tmp_path):
    (tmp_path / "a.md").write_text("# Title\n\n## The size sweep\n\n[ok](#the-size-sweep) [x](b.md) [y](#nope)\n")
    assert broken([tmp_path / "a.md"], tmp_path) == ["a.md: b.md (no such file)", "a.md: #nope (no such heading)"]


def test_the_readme_is_a_front_page():
    assert len((ROOT / "README.md").read_bytes()) <= 12 * 1024
