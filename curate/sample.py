"""``curate sample``: draw the pretraining set by importance weight, vectorised.

- with replacement (the paper's "same distribution matcher"): class counts
  ~ Multinomial(N, P_t restricted to classes that still have images), then uniform
  draws within each class; one output row per draw.
- without replacement ("elastic"): N distinct rows, each row's chance proportional to
  its class weight, by Efraimidis-Spirakis keys u_i^(1/w_i), computed as the equivalent
  exponential race: keep the N smallest E_i / w_i with E_i ~ Exp(1).

Two streamed passes over the source: labels (and ids for --exclude) to choose rows,
then every column to copy the chosen rows out. Rows come out in source order;
``draw`` numbers them 0..N-1, and ``weight`` is the row's class weight.
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
from datl.manifests import Manifest, ManifestMeta, check_same_classes, open_manifest, write_manifest

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
    exclude: str | None = opt(None, help="duplicates.parquet from `curate dedup`: never draw these ids.")
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
    refuse_clobber({"--out": cfg.out}, {"--source": cfg.source, "--weights": cfg.weights, "--exclude": cfg.exclude})
    if (cfg.weights is None) == (not cfg.uniform):
        raise UserError(
            "--weights",
            "pass either --weights or --uniform" if not cfg.uniform else "--weights and --uniform both given",
            "pass exactly one of them",
        )
    sm = open_manifest(cfg.source)
    if cfg.uniform:
        classes, wt = sm.require_labels(), uniform_weights(sm)
    else:
        classes, wt = read_weights(cfg.weights)
        check_same_classes(
            sm.require_labels(),
            classes,
            cfg.source,
            cfg.weights,
            f"weight with the prior of a model trained on {cfg.source}'s classes",
        )
    n = cfg.draws(sm.num_rows)
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
    )
    meta = ManifestMeta(
        classes=classes,
        stage="sample",
        params={
            "size": cfg.size,
            "replacement": cfg.replacement,
            "seed": cfg.seed,
            "exclude": cfg.exclude,
            "uniform": cfg.uniform,
        },
        inputs=input_hashes(source=cfg.source, weights=cfg.weights, exclude=cfg.exclude),
    )
    write_manifest(cfg.out, batches, meta, schema=schema)
    n_unique = int((np.diff(plan.rows) != 0).sum()) + 1 if len(plan.rows) else 0  # rows are sorted
    logger.info(
        f"wrote {cfg.out}: {len(plan.rows):,} draws, {n_unique:,} distinct, from {plan.eligible:,} "
        "eligible source images" + (f" ({plan.excluded:,} excluded)" if cfg.exclude else "")
    )
    return Path(cfg.out)


@dataclass
class Plan:
    rows: np.ndarray  # sorted source row numbers, repeated for repeated draws
    eligible: int  # rows that could be drawn (after exclusion, weight > 0)
    excluded: int  # rows dropped by --exclude


def read_labels(source: Manifest, exclude: pa.Array | None) -> tuple[np.ndarray, np.ndarray, int]:
    """(labels int32 with -1 for null, keep mask, excluded count) in one streamed pass."""
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
    return labels, keep, excluded


def plan_with_replacement(
    labels: np.ndarray, keep: np.ndarray, p_target: np.ndarray, size: int, rng: np.random.Generator
) -> Plan:
    k = len(p_target)
    if keep.all():
        rows, lab = None, labels
    else:
        rows = np.flatnonzero(keep)
        lab = labels[rows]
    sizes = np.bincount(lab, minlength=k)
    p = np.where(sizes > 0, p_target, 0.0)
    if p.sum() <= 0:
        raise UserError(
            "--weights",
            "no class with target mass has any source image left",
            "check the prior, or exclude fewer images",
        )
    counts = rng.multinomial(size, p / p.sum())
    order = argsort_labels(lab, k)
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    cls = np.repeat(np.arange(k), counts)
    offset = starts[cls] + (rng.random(size) * sizes[cls]).astype(np.int64)
    picked = order[offset]
    picked = np.sort(picked if rows is None else rows[picked])
    eligible = int(sizes[p > 0].sum())
    return Plan(picked, eligible, 0)


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
    w_row = weight.astype(np.float32)[labels]
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
    source: Manifest, rows: np.ndarray, weight: np.ndarray, schema: pa.Schema, out_folder: str | None = None
) -> Iterator[pa.RecordBatch]:
    """Stream the source once; yield the planned rows (repeats included) with weight and draw.

    Relative image paths are rewritten for a manifest written in ``out_folder``."""
    draw = 0
    for t in source.iter_take(rows, batch_size=BATCH):
        t = t.drop_columns([c for c in ("weight", "draw") if c in t.column_names])
        if out_folder is not None:
            i = t.schema.get_field_index("path")
            t = t.set_column(i, "path", rebase_paths(t.column("path").combine_chunks(), str(source.folder), out_folder))
        lab = t.column("label").fill_null(0).to_numpy()
        t = t.append_column("weight", pa.array(weight[lab], pa.float64()))
        t = t.append_column("draw", pa.array(np.arange(draw, draw + t.num_rows, dtype=np.int64)))
        draw += t.num_rows
        yield from t.cast(schema).to_batches()


def output_schema(source: Manifest) -> pa.Schema:
    fields = [f for f in source.schema if f.name not in ("weight", "draw")]
    return pa.schema(fields + [pa.field("weight", pa.float64()), pa.field("draw", pa.int64())])


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
) -> tuple[Plan, Iterator[pa.RecordBatch], pa.Schema]:
    """Choose the rows (pass 1) and return the stream that copies them out (pass 2).

    clip: draw every eligible row (``--size all``, without replacement only)."""
    if size <= 0:
        raise UserError("--size", f"{size} is not positive", "pass the number of images to draw, e.g. --size 100000")
    k = len(classes)
    p_target = np.zeros(k)
    weight = np.zeros(k)
    lab = weights.column("label").to_numpy()
    p_target[lab] = weights.column("p_target").to_numpy()
    weight[lab] = weights.column("weight").to_numpy()
    labels, keep, excluded = read_labels(source, exclude)
    rng = np.random.default_rng(seed)
    if replacement:
        plan = plan_with_replacement(labels, keep, p_target, size, rng)
    else:
        plan = plan_without_replacement(labels, keep, weight, None if clip else size, rng, source.path)
    plan.excluded = excluded
    del labels, keep
    schema = output_schema(source)
    return plan, take_rows(source, plan.rows, weight, schema, out_folder), schema
