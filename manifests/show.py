"""Text renderings of manifests for the terminal: `datl manifest show`, the demo summary."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .io import Manifest

BAR = "█"


def histogram_lines(names: list[str], counts: np.ndarray, top: int | None, width: int = 40) -> list[str]:
    """One line per class: name, count, share and a bar; the largest ``top`` classes when given."""
    order = np.arange(len(names)) if top is None or top >= len(names) else np.argsort(-counts, kind="stable")[:top]
    total = max(int(counts.sum()), 1)
    peak = max(int(counts.max()) if len(counts) else 0, 1)
    name_w = max([len(names[i]) for i in order] + [5])
    lines = []
    for i in order:
        c = int(counts[i])
        bar = BAR * (round(width * c / peak) if c else 0)
        lines.append(f"  {names[i]:<{name_w}}  {c:>10,}  {100 * c / total:5.1f}%  {bar}")
    if top is not None and top < len(names):
        lines.append(f"  ... {len(names) - top} more classes (largest {top} shown; --top 0 for all)")
    return lines


def describe(m: Manifest, top: int | None = 40) -> str:
    lines = [str(m.path), f"  rows     {m.num_rows:,}", f"  columns  {', '.join(m.columns)}"]
    if m.meta is not None:
        lines.append(f"  stage    {m.meta.stage or '-'} (datl {m.meta.version}, {m.meta.created})")
        if m.meta.params:
            shown = ", ".join(f"{k}={v}" for k, v in sorted(m.meta.params.items()))
            lines.append(f"  params   {shown[:200]}")
    if not m.has_labels:
        lines.append("  labels   none (unlabeled)")
        return "\n".join(lines)
    if m.multi_label:
        return "\n".join(lines + multi_label_lines(m, top))
    counts, n_null = m.label_counts()
    empty = int((counts == 0).sum())
    lines.append(f"  classes  {len(counts):,}" + (f" ({empty} with no rows)" if empty else ""))
    if n_null:
        lines.append(f"  unlabeled rows  {n_null:,}")
    lines.extend(histogram_lines(list(m.classes), counts, top))
    return "\n".join(lines)


def multi_label_lines(m: Manifest, top: int | None) -> list[str]:
    """A multi-label manifest: labels per image (a histogram), then per-class occurrences."""
    counts, n_empty, sizes = m.label_set_counts()
    labeled = max(m.num_rows - n_empty, 0)
    mean = counts.sum() / labeled if labeled else 0.0
    empty = int((counts == 0).sum())
    lines = [
        f"  labels   multi-label: {int(counts.sum()):,} label occurrences, {mean:.2f} a labeled image",
        f"  classes  {len(counts):,}" + (f" ({empty} never used)" if empty else ""),
        "  labels per image:",
    ]
    lines.extend(histogram_lines([f"{j} label{'s' if j != 1 else ''}" for j in range(len(sizes))], sizes, None))
    lines.append("  occurrences per class (an image counts once for each of its labels):")
    lines.extend(histogram_lines(list(m.classes), counts, top))
    return lines


def summary_table(paths: list[Path]) -> str:
    rows = [("manifest", "rows", "classes", "labeled")]
    for p in paths:
        m = Manifest(p)
        rows.append(
            (p.name, f"{m.num_rows:,}", str(len(m.classes)) if m.has_labels else "-", "yes" if m.has_labels else "no")
        )
    w = [max(len(r[i]) for r in rows) for i in range(4)]
    return "\n".join(f"{r[0]:<{w[0]}}  {r[1]:>{w[1]}}  {r[2]:>{w[2]}}  {r[3]:<{w[3]}}".rstrip() for r in rows)


def family_line(m: Manifest) -> str:
    """'mnist 5,000 (10 classes), ...' for a source whose class names are 'family/name'."""
    counts, _ = m.label_counts()
    fams: dict[str, list[int]] = {}
    for name, c in zip(m.classes, counts):
        fam = name.split("/", 1)[0]
        fams.setdefault(fam, [0, 0])
        fams[fam][0] += int(c)
        fams[fam][1] += 1
    line = ", ".join(f"{f} {n:,} ({k} classes)" for f, (n, k) in fams.items())
    return line + (" (label occurrences: a multi-label source)" if m.multi_label else "")
