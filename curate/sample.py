"""``curate sample``: draw the pretraining set by importance weight, vectorised.

- with replacement (the paper's "same distribution matcher"): class counts
  ~ Multinomial(N, P_t restricted to classes that still have images), then uniform
  draws within each class; one output row per draw.
- without replacement ("elastic"): N distinct rows, each row's chance proportional to
  its class weight, by Efraimidis-Spirakis keys u_i^(1/w_i), computed as the equivalent
  exponential race: keep the N smallest E_i / w_i with E_i ~ Exp(1).

With per-image weights (``--image-weights``, `curate weight --per-image`): with replacement
the class counts are drawn as above and each class's draws go to its images in proportion to
w(x); without replacement the keys use w(x) instead of the class weight. Rows of weight 0 are
never drawn. The weights file is read alongside the source, its ids checked row by row; the
plan then holds one float64 weight a source row beside its label (12 bytes a row in all).

Two streamed passes over the source: labels (and ids for --exclude) to choose rows,
then every column to copy the chosen rows out. Rows come out in source order;
``draw`` numbers them 0..N-1, and ``weight`` is the row's class weight (w(x) with
``--image-weights``).

A multi-label source (a ``labels`` column), the paper's rule applied per label:

- with replacement: per-label draw counts ~ Multinomial(N, P_t restricted to labels that
  still have images), each draw uniform among the images carrying its label; the label
  that drew the row is kept in ``draw_label``. An image with several labels can be drawn
  by any of them, so co-occurring labels come along and the label shares reached differ
  from P_t (`curate weight` reports the expected shares as ``p_expected``).
- without replacement: N distinct images, each image's chance proportional to the sum of
  its labels' weights, w(x) = sum_{y in S(x)} w(y). The rule is chosen because it is the
  with-replacement scheme's own preference: there, image x is drawn per draw with
  chance sum_{y in S(x)} P_t(y) / n_y = sum_{y in S(x)} w(y) / M (M: all label
  occurrences), so both modes rank images alike; on a single-label source it is w(y).
  ``draw_label`` is null.
- ``--uniform`` draws images, not labels: every labeled image equally likely (the
  all-source baseline), ``weight`` 1, ``draw_label`` null.

``weight`` is w(x) = sum of the row's label weights. Memory: the plan holds the label
occurrences (a row number and a label each, 8 bytes an occurrence below 2^31 rows).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from datl.core.errors import UserError
from datl.core.files import input_hashes, refuse_clobber
from datl.core.options import opt, validate
from datl.manifests import Manifest, ManifestMeta, check_same_classes, labelsets, open_manifest, write_manifest

logger = logging.getLogger(__name__)

BATCH = 262_144


@dataclass(kw_only=True)
class SampleConfig:
    source: str = opt(help="Labeled source manifest.")
    weights: str | None = opt(None, help="weights.parquet from `curate weight` (or --uniform).")
    uniform: bool = opt(False, help="Every source image equally likely (the baseline): class shares as in the source.")
    size: str = opt(help="Number of draws N, or 'all' (with --no-replacement: every eligible row).")
    out: str = opt(short="-o", help="Sample manifest to write.")
    replacement: bool = opt(
        True,
        negatable=True,
        help="With: class counts ~ Multinomial(N, P_t), the paper's. Without: N distinct rows ('elastic').",
    )
    image_weights: str | None = opt(
        None,
        help="image_weights.parquet from `curate weight --per-image`: with replacement, each class's draws go to "
        "its images in proportion to w(x), not uniformly; without, rows by w(x).",
    )
    exclude: str | None = opt(None, help="duplicates.parquet from `curate dedup`: never draw these ids.")
    classes: str | None = opt(
        None,
        help="Draw only among images carrying these classes (the paper's label-subset baseline): a FILE of "
        "class names, one a line, or GLOB patterns matched against the names, comma separated ('bird/*').",
    )
    hierarchy: str | None = opt(
        None,
        help="JSON {parent: [children, ...]}: a name given to --classes stands for its whole subtree.",
    )
    seed: int = opt(0, bounds="[0, inf)")

    def check(self) -> None:
        validate(self)

    def draws(self, eligible: int) -> int:
        """N: --size as a number, or every row with 'all' (without replacement)."""
        if self.size == "all":
            if self.replacement:
                raise UserError("--size", "'all' needs --no-replacement", "add --no-replacement, or pass a number")
            return eligible
        try:
            n = int(self.size)
        except ValueError:
            raise UserError("--size", f"'{self.size}' is not a number", "pass the number of draws, or 'all'") from None
        need, have = n * PLAN_BYTES, physical_memory()
        if need > have:
            raise UserError(
                "--size",
                f"{n:,} draws would need about {need / 2**30:,.0f} GiB to plan, more than this machine's "
                f"{have / 2**30:,.0f} GiB",
                "draw fewer (a sample of N draws is N manifest rows), or draw several samples with other --seed",
            )
        return n


PLAN_BYTES = 48  # memory per draw while the rows are chosen (indices, offsets, random numbers, the sort)


def physical_memory() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def run(cfg: SampleConfig) -> Path:
    """Draw the sample and write it: the source's columns + weight + draw, paths rebased to OUT's folder."""
    from .weight import read_excluded_ids, read_weights

    cfg.check()
    refuse_clobber(
        {"--out": cfg.out},
        {
            "--source": cfg.source,
            "--weights": cfg.weights,
            "--exclude": cfg.exclude,
            "--image-weights": cfg.image_weights,
        },
    )
    if (cfg.weights is None) == (not cfg.uniform):
        raise UserError(
            "--weights",
            "pass either --weights or --uniform" if not cfg.uniform else "--weights and --uniform both given",
            "pass exactly one of them",
        )
    sm = open_manifest(cfg.source)
    if cfg.uniform:
        classes, wt = sm.require_labels(multi=True), uniform_weights(sm)
    else:
        classes, wt = read_weights(cfg.weights)
        check_same_classes(
            sm.require_labels(multi=True),
            classes,
            cfg.source,
            cfg.weights,
            f"weight with the prior of a model trained on {cfg.source}'s classes",
        )
    row_weights = None
    if cfg.image_weights is not None:
        from .weight import read_image_weights

        if cfg.uniform or sm.multi_label:
            raise UserError(
                "--image-weights",
                "works with --weights on a single-label source" + (", not with --uniform" if cfg.uniform else ""),
                "drop --image-weights, or pass the weights.parquet of the same `curate weight --per-image`",
            )
        row_weights = read_image_weights(cfg.image_weights, sm)
    n = cfg.draws(sm.num_rows)
    allowed = None
    if cfg.classes is not None:
        allowed = select_classes(cfg.classes, cfg.hierarchy, classes)
        logger.info(f"--classes: drawing among images carrying {int(allowed.sum()):,} of {len(classes):,} classes")
    elif cfg.hierarchy is not None:
        raise UserError("--hierarchy", "is given without --classes", "name the classes (or subtrees) with --classes")
    plan, batches, schema = run_sample(
        sm,
        classes,
        wt,
        n,
        cfg.replacement,
        read_excluded_ids(cfg.exclude),
        cfg.seed,
        str(Path(cfg.out).resolve().parent),
        clip=cfg.size == "all",
        uniform=cfg.uniform,
        allowed=allowed,
        row_weights=row_weights,
    )
    meta = ManifestMeta(
        classes=classes,
        stage="sample",
        params={
            "size": cfg.size,
            "replacement": cfg.replacement,
            "seed": cfg.seed,
            "exclude": cfg.exclude,
            "image_weights": cfg.image_weights,
            "uniform": cfg.uniform,
            "classes": cfg.classes,
            "hierarchy": cfg.hierarchy,
            "n_classes_allowed": None if allowed is None else int(allowed.sum()),
        },
        inputs=input_hashes(
            source=cfg.source,
            weights=cfg.weights,
            image_weights=cfg.image_weights,
            exclude=cfg.exclude,
            classes=cfg.classes if cfg.classes and Path(cfg.classes).is_file() else None,
            hierarchy=cfg.hierarchy,
        ),
    )
    write_manifest(cfg.out, batches, meta, schema=schema)
    n_unique = int((np.diff(plan.rows) != 0).sum()) + 1 if len(plan.rows) else 0  # rows are sorted
    logger.info(
        f"wrote {cfg.out}: {len(plan.rows):,} draws, {n_unique:,} distinct, from {plan.eligible:,} "
        "eligible source images" + (f" ({plan.excluded:,} excluded)" if cfg.exclude else "")
    )
    if sm.multi_label and not cfg.uniform:
        logger.info(achieved_line(Manifest(cfg.out), wt))
    return Path(cfg.out)


def achieved_line(sample: Manifest, weights: pa.Table) -> str:
    """A multi-label sample: how far the label shares it reached are from P_t (co-occurring
    labels come along with every draw), and the label furthest off."""
    counts, _ = sample.label_counts()
    got = counts / max(int(counts.sum()), 1)
    want = np.zeros(len(got))
    want[weights.column("label").to_numpy()] = weights.column("p_target").to_numpy()
    gap = np.abs(got - want)
    i = int(np.argmax(gap))
    return (
        f"label shares reached: {gap.sum() / 2:.3f} total variation from P_t (co-occurring labels come along); "
        f"furthest: {sample.classes[i]} {got[i]:.3f} against P_t {want[i]:.3f} (`datl manifest show` the sample)"
    )


@dataclass
class Plan:
    rows: np.ndarray  # sorted source row numbers, repeated for repeated draws
    eligible: int  # rows that could be drawn (after exclusion, weight > 0)
    excluded: int  # rows dropped by --exclude
    draw_label: np.ndarray | None = None  # multi-label: the label that drew each row (-1: none)


def select_classes(spec: str, hierarchy: str | None, classes: list[str]) -> np.ndarray:
    """``--classes``: which of ``classes`` may be drawn (a bool a class). ``spec`` is a file of
    names (one a line; blank lines and '#' comments skipped) or comma-separated glob patterns;
    with ``hierarchy``, a name stands for itself and every descendant. A name that is neither
    a class nor a parent, or a pattern that matches nothing, is refused."""
    import fnmatch
    import json

    tree: dict[str, list[str]] = {}
    if hierarchy is not None:
        try:
            tree = json.loads(Path(hierarchy).read_text())
        except FileNotFoundError:
            raise UserError(hierarchy, "does not exist", "pass a JSON file {parent: [children, ...]}") from None
        except ValueError as e:
            raise UserError(
                hierarchy, f"is not valid JSON ({e})", "pass a JSON file {parent: [children, ...]}"
            ) from None
        if not isinstance(tree, dict) or not all(
            isinstance(v, list) and all(isinstance(c, str) for c in v) for v in tree.values()
        ):
            raise UserError(
                hierarchy, "is not an object of name -> list of child names", 'write {"bird": ["owl", ...]}'
            )
    index = {c: i for i, c in enumerate(classes)}
    allowed = np.zeros(len(classes), dtype=bool)

    def take(name: str, where: str) -> None:
        seen, todo, hit = set(), [name], False
        while todo:
            n = todo.pop()
            if n in seen:
                continue
            seen.add(n)
            if n in index:
                allowed[index[n]] = hit = True
            todo.extend(tree.get(n, []))
        if not hit:
            raise UserError(
                where,
                f"names '{name}', which is neither one of the source's classes nor a parent of any",
                "check the spelling (`datl manifest show` lists the classes), or pass --hierarchy",
            )

    path = Path(spec)
    if path.is_file():
        for line in path.read_text().splitlines():
            name = line.split("#", 1)[0].strip()
            if name:
                take(name, spec)
    else:
        for pattern in (p.strip() for p in spec.split(",") if p.strip()):
            names = [pattern] if pattern in index or pattern in tree else fnmatch.filter(classes, pattern)
            if not names:
                raise UserError(
                    "--classes",
                    f"'{pattern}' is not a file and matches none of the {len(classes):,} class names",
                    "pass a file of class names, or a pattern such as 'bird/*'",
                )
            for name in names:
                take(name, "--classes")
    if not allowed.any():
        raise UserError("--classes", f"'{spec}' selects no class", "name at least one class of the source")
    return allowed


def read_labels(
    source: Manifest, exclude: pa.Array | None, allowed: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray, int]:
    """(labels int32 with -1 for null, keep mask, excluded count) in one streamed pass;
    ``allowed`` (a bool a class): rows of other classes are not kept."""
    cols = ["label"] + (["id"] if exclude is not None else [])
    n = source.num_rows
    labels = np.empty(n, dtype=np.int32)
    keep = np.ones(n, dtype=bool)
    pos = 0
    for b in source.iter_batches(cols, batch_size=BATCH):
        m = b.num_rows
        labels[pos : pos + m] = b.column(0).fill_null(-1).to_numpy()
        if exclude is not None:
            keep[pos : pos + m] = ~pc.is_in(b.column(1), value_set=exclude).to_numpy(zero_copy_only=False)
        pos += m
    keep &= labels >= 0
    excluded = 0 if exclude is None else int(n - keep.sum() - (labels < 0).sum())
    if allowed is not None:
        keep &= allowed[np.maximum(labels, 0)]
    return labels, keep, excluded


def plan_with_replacement(
    labels: np.ndarray,
    keep: np.ndarray,
    p_target: np.ndarray,
    size: int,
    rng: np.random.Generator,
    within: np.ndarray | None = None,
) -> Plan:
    """``within``: per-image weights (one a source row); a class's draws then go to its rows in
    proportion to them, and rows of weight 0 are not drawn."""
    k = len(p_target)
    if within is not None:
        keep = keep & (within > 0)
    if keep.all():
        rows, lab = None, labels
    else:
        rows = np.flatnonzero(keep)
        lab = labels[rows]
    inner = None if within is None else (within if rows is None else within[rows])
    picked, _, sizes, p = draw_by_class(lab, p_target, size, rng, k, "class", inner)
    picked = np.sort(picked if rows is None else rows[picked])
    eligible = int(sizes[p > 0].sum())
    return Plan(picked, eligible, 0)


def draw_by_class(
    lab: np.ndarray,
    p_target: np.ndarray,
    size: int,
    rng: np.random.Generator,
    k: int,
    what: str,
    within: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The paper's draw: counts ~ Multinomial(size, P_t over the classes that have entries in
    ``lab``), then each draw uniform among its class's entries, or with ``within`` (a weight > 0
    an entry) in proportion to the weights. Returns (the positions in ``lab`` drawn, each draw's
    class, entries per class, the P_t used)."""
    sizes = np.bincount(lab, minlength=k)
    p = np.where(sizes > 0, p_target, 0.0)
    if p.sum() <= 0:
        raise UserError(
            "--weights",
            f"no {what} with target mass has any source image left",
            "check the prior, or exclude fewer images",
        )
    counts = rng.multinomial(size, p / p.sum())
    order = argsort_labels(lab, k)
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    cls = np.repeat(np.arange(k), counts)
    if within is None:
        return order[starts[cls] + (rng.random(size) * sizes[cls]).astype(np.int64)], cls, sizes, p
    cum = np.cumsum(within[order], dtype=np.float64)  # a class's entries are one run of it
    ends = starts + sizes
    base = np.where(starts > 0, cum[np.maximum(starts - 1, 0)], 0.0)
    total = np.where(sizes > 0, cum[np.maximum(ends - 1, 0)], 0.0) - base
    at = np.searchsorted(cum, base[cls] + rng.random(size) * total[cls], side="right")
    at = np.clip(at, starts[cls], ends[cls] - 1)  # rounding at a run's ends
    return order[at], cls, sizes, p


def argsort_labels(lab: np.ndarray, k: int) -> np.ndarray:
    """Stable argsort of class labels: as uint16 when they fit, where NumPy radix-sorts
    (faster: bench/RESULTS.md, sample.py)."""
    if k <= np.iinfo(np.uint16).max + 1:
        return np.argsort(lab.astype(np.uint16), kind="stable")
    return np.argsort(lab, kind="stable")


def plan_without_replacement(
    labels: np.ndarray, keep: np.ndarray, weight: np.ndarray, size: int | None, rng: np.random.Generator, where: object
) -> Plan:
    """N distinct rows, P(row) proportional to its class weight; size None = every eligible row."""
    return plan_rows_without_replacement(weight.astype(np.float32)[labels], keep, size, rng, where)


def plan_rows_without_replacement(
    w_row: np.ndarray, keep: np.ndarray, size: int | None, rng: np.random.Generator, where: object
) -> Plan:
    """N distinct rows, P(row) proportional to ``w_row`` (float32, one a source row)."""
    ok = keep & (w_row > 0)
    rows = None if ok.all() else np.flatnonzero(ok)
    if rows is not None:
        w_row = w_row[rows]
    n = len(w_row)
    size = n if size is None else size
    if size > n:
        raise UserError(
            where,
            f"--size {size:,} is more than the {n:,} eligible source images (weight > 0, not excluded)",
            f"pass --size {n:,} or less, or --replacement",
        )
    # Efraimidis-Spirakis as an exponential race: E_i = Exp(1) / w_i = -log(u_i) / w_i; the N
    # smallest are the N largest keys u_i^(1/w_i).
    keys = rng.standard_exponential(n, dtype=np.float32)
    keys /= w_row
    del w_row
    top = np.argpartition(keys, size - 1)[:size] if 0 < size < n else np.arange(size)
    return Plan(np.sort(top if rows is None else rows[top]), n, 0)


def uniform_weights(source: Manifest) -> pa.Table:
    """The weights table of the uniform baseline: weight 1 everywhere, P(class) = its source share."""
    counts, _ = source.label_counts()
    share = counts / max(int(counts.sum()), 1)
    return pa.table(
        {"label": pa.array(np.arange(len(counts)), pa.int32()), "p_target": share, "weight": np.ones(len(counts))}
    )


def rebase_paths(paths: pa.Array, source_folder: str, out_folder: str) -> pa.Array:
    """Relative image paths of a manifest in ``source_folder``, made relative to ``out_folder``."""
    prefix = os.path.relpath(source_folder, out_folder)
    if prefix == ".":
        return paths
    absolute = pc.starts_with(paths, "/")
    return pc.if_else(absolute, paths, pc.binary_join_element_wise(prefix, paths, "/"))


def take_rows(
    source: Manifest, plan: Plan, row_weight: np.ndarray, schema: pa.Schema, out_folder: str | None = None
) -> Iterator[pa.RecordBatch]:
    """Stream the source once; yield the planned rows (repeats included) with weight and draw
    (and draw_label for a multi-label source). ``row_weight``: one a planned row.

    Relative image paths are rewritten for a manifest written in ``out_folder``."""
    draw = 0
    for t in source.iter_take(plan.rows, batch_size=BATCH):
        t = t.drop_columns([c for c in ADDED if c in t.column_names])
        if out_folder is not None:
            i = t.schema.get_field_index("path")
            t = t.set_column(i, "path", rebase_paths(t.column("path").combine_chunks(), str(source.folder), out_folder))
        span = slice(draw, draw + t.num_rows)
        t = t.append_column("weight", pa.array(row_weight[span], pa.float64()))
        t = t.append_column("draw", pa.array(np.arange(span.start, span.stop, dtype=np.int64)))
        if source.multi_label:
            dl = plan.draw_label[span] if plan.draw_label is not None else np.full(t.num_rows, -1, np.int32)
            t = t.append_column("draw_label", pa.array(dl, pa.int32(), mask=dl < 0))
        draw += t.num_rows
        yield from t.cast(schema).to_batches()


ADDED = ("weight", "draw", "draw_label")  # columns the sample adds (a sample of a sample replaces them)


def output_schema(source: Manifest) -> pa.Schema:
    fields = [f for f in source.schema if f.name not in ADDED]
    extra = [pa.field("weight", pa.float64()), pa.field("draw", pa.int64())]
    if source.multi_label:
        extra.append(pa.field("draw_label", pa.int32()))
    return pa.schema(fields + extra)


def run_sample(
    source: Manifest,
    classes: list[str],
    weights: pa.Table,
    size: int,
    replacement: bool,
    exclude: pa.Array | None,
    seed: int,
    out_folder: str | None = None,
    clip: bool = False,
    uniform: bool = False,
    allowed: np.ndarray | None = None,
    row_weights: np.ndarray | None = None,
) -> tuple[Plan, Iterator[pa.RecordBatch], pa.Schema]:
    """Choose the rows (pass 1) and return the stream that copies them out (pass 2).

    clip: draw every eligible row (``--size all``, without replacement only); uniform: the
    baseline (a multi-label source then draws images, not labels); allowed (a bool a class,
    ``--classes``): only images carrying one of these are drawn, and only these labels draw;
    row_weights (one a source row, ``--image-weights``): per-image weights w(x)."""
    if size <= 0:
        raise UserError("--size", f"{size} is not positive", "pass the number of images to draw, e.g. --size 100000")
    k = len(classes)
    p_target = np.zeros(k)
    weight = np.zeros(k)
    lab = weights.column("label").to_numpy()
    p_target[lab] = weights.column("p_target").to_numpy()
    weight[lab] = weights.column("weight").to_numpy()
    rng = np.random.default_rng(seed)
    schema = output_schema(source)
    if source.multi_label:
        plan, row_weight = plan_multi_label(
            source, exclude, p_target, weight, size, replacement, rng, clip, uniform, allowed
        )
        return plan, take_rows(source, plan, row_weight, schema, out_folder), schema
    labels, keep, excluded = read_labels(source, exclude, allowed)
    if replacement:
        plan = plan_with_replacement(labels, keep, p_target, size, rng, row_weights)
    elif row_weights is not None:
        plan = plan_rows_without_replacement(
            row_weights.astype(np.float32), keep, None if clip else size, rng, source.path
        )
    else:
        plan = plan_without_replacement(labels, keep, weight, None if clip else size, rng, source.path)
    plan.excluded = excluded
    row_weight = weight[labels[plan.rows]] if row_weights is None else row_weights[plan.rows]
    del labels, keep
    return plan, take_rows(source, plan, row_weight, schema, out_folder), schema


# -- multi-label sources ----------------------------------------------------------------
@dataclass
class Occurrences:
    """Every label occurrence of a multi-label source: its row and its label; ``keep``: rows
    that may be drawn (a label, not excluded)."""

    rows: np.ndarray
    labels: np.ndarray
    keep: np.ndarray
    excluded: int


def read_occurrences(source: Manifest, exclude: pa.Array | None, allowed: np.ndarray | None = None) -> Occurrences:
    """The label occurrences in one streamed pass; with ``allowed`` only those of allowed
    labels, and only images carrying one are kept."""
    n = source.num_rows
    row_type = np.int32 if n < 2**31 else np.int64
    cols = [source.label_column] + (["id"] if exclude is not None else [])
    keep = np.ones(n, dtype=bool)
    rows, labels, pos = [], [], 0
    for b in source.iter_batches(cols, batch_size=BATCH):
        offsets, values, _ = labelsets.flat(b.column(0))
        lengths = np.diff(offsets)
        at = np.repeat(np.arange(pos, pos + b.num_rows, dtype=row_type), lengths)
        if allowed is not None:
            mine = allowed[values]
            at, values = at[mine], values[mine]
            lengths = np.bincount(at - pos, minlength=b.num_rows)
        rows.append(at)
        labels.append(values.astype(np.int32))
        keep[pos : pos + b.num_rows] = lengths > 0
        if exclude is not None:
            keep[pos : pos + b.num_rows] &= ~pc.is_in(b.column(1), value_set=exclude).to_numpy(zero_copy_only=False)
        pos += b.num_rows
    occ_rows = np.concatenate(rows) if rows else np.zeros(0, row_type)
    occ_labels = np.concatenate(labels) if labels else np.zeros(0, np.int32)
    del rows, labels
    labeled = np.zeros(n, dtype=bool)
    labeled[occ_rows] = True
    excluded = int((labeled & ~keep).sum())
    ok = keep[occ_rows]
    return Occurrences(occ_rows[ok], occ_labels[ok], keep, excluded)


def plan_multi_label(
    source: Manifest,
    exclude: pa.Array | None,
    p_target: np.ndarray,
    weight: np.ndarray,
    size: int,
    replacement: bool,
    rng: np.random.Generator,
    clip: bool,
    uniform: bool,
    allowed: np.ndarray | None = None,
) -> tuple[Plan, np.ndarray]:
    """The plan for a multi-label source (the module docstring's rules) and each planned
    row's weight w(x) = sum of its (allowed) labels' weights (1 with ``uniform``)."""
    occ = read_occurrences(source, exclude, allowed)
    k, n = len(p_target), source.num_rows
    if uniform:
        w_img = occ.keep.astype(np.float32)
    else:
        w_img = np.bincount(occ.rows, weights=weight[occ.labels], minlength=n).astype(np.float32)
    if uniform and replacement:
        pool = np.flatnonzero(occ.keep)
        if not len(pool):
            raise UserError(source.path, "has no labeled image left to draw", "check --exclude and the label sets")
        plan = Plan(np.sort(pool[rng.integers(0, len(pool), size)]), len(pool), occ.excluded)
    elif replacement:
        plan = plan_label_draws(occ, p_target, size, rng, k, n)
        plan.excluded = occ.excluded
    else:
        plan = plan_rows_without_replacement(w_img, occ.keep, None if clip else size, rng, source.path)
        plan.excluded = occ.excluded
    return plan, w_img[plan.rows].astype(np.float64)


def plan_label_draws(
    occ: Occurrences, p_target: np.ndarray, size: int, rng: np.random.Generator, k: int, n: int
) -> Plan:
    """With replacement, per label: counts ~ Multinomial(N, P_t over labels with images),
    each draw uniform among the occurrences of its label (one per image carrying it)."""
    picked, cls, _, p = draw_by_class(occ.labels, p_target, size, rng, k, "label")
    cls = cls.astype(np.int32)
    rows = occ.rows[picked]
    by_row = np.argsort(rows, kind="stable")
    reachable = np.zeros(n, dtype=bool)
    reachable[occ.rows[p[occ.labels] > 0]] = True
    return Plan(rows[by_row].astype(np.int64), int(reachable.sum()), 0, draw_label=cls[by_row])
