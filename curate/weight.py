"""``curate weight``: importance weight w(y) = P_t(y) / P_s(y) per source class, and its plot.

P_s(y) comes from the source manifest's label counts in one streamed pass (bounded
memory at any size). Classes that P_t gives mass but that have no source image
cannot be sampled: they are reported, dropped and P_t is renormalised over the rest.

A multi-label source (a ``labels`` column): P_s(y) is label y's share of all label
occurrences (``n_source`` counts occurrences), w(y) = P_t(y) / P_s(y) as before, and a
second streamed pass adds ``p_expected``: the share of label occurrences that a
with-replacement sample of `curate sample` is expected to reach. It differs from P_t
because co-occurring labels come along with each draw: drawing label j picks an image x
carrying j, uniformly (chance 1/n_j), and x brings all of its labels S(x). So per draw,
E[occurrences of y] = sum_j P_t(j) * |{x : j, y in S(x)}| / n_j = sum over the images x
carrying y of a(x), with a(x) = sum_{j in S(x)} P_t(j) / n_j; ``p_expected`` normalises it
over labels.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from datl.core.errors import UserError
from datl.core.files import (
    atomic_output,
    file_sha256,
    input_hashes,
    png_metadata,
    refuse_clobber,
    refuse_foreign_default,
)
from datl.core.options import opt, validate
from datl.manifests import (
    Manifest,
    ManifestError,
    ManifestMeta,
    check_same_classes,
    labelsets,
    open_manifest,
    write_table,
)

logger = logging.getLogger(__name__)

PRIOR_COLUMNS = ("label", "class_name", "p_target")
IMAGE_STAGE = "weight-image"  # the stage name in image_weights.parquet's metadata


@dataclass(kw_only=True)
class WeightConfig:
    source: str = opt(help="Labeled source manifest.")
    prior: str = opt(help="prior.parquet from `curate estimate`.")
    out: str = opt(short="-o", help="weights.parquet to write.")
    plot: str | None = opt(None, output=True, help="PNG of the weights to write (default: next to --out).")
    no_plot: bool = opt(False, help="Skip the plot.")
    exclude: str | None = opt(None, help="duplicates.parquet from `curate dedup`: count excluded images per class.")
    per_image: bool = opt(
        False,
        help="Also weigh each image: w(x) = w(y) * r(x), r a domain classifier's density ratio within the class "
        "(for targets whose images of a class look unlike the source's); needs --features and --target-features.",
    )
    features: str | None = opt(None, help="Feature store of --source with embeddings (`curate features --model`).")
    target_features: str | None = opt(
        None, help="Feature store of the unlabeled target (`curate features --source TARGET`, the same --model)."
    )
    image_weights: str | None = opt(
        None, output=True, help="Per-image weights to write (default: image_weights.parquet next to --out)."
    )
    temper: float = opt(
        0.25,
        bounds="(0, inf)",
        help="r(x) = exp(temper * log-odds): below 1 flattens the ratio (chosen on validation).",
    )
    clip: float = opt(10.0, bounds="[1, inf)", help="r(x) is clipped to [1/clip, clip] before it is normalised.")
    seed: int = opt(0, bounds="[0, inf)", help="Seed of the images the domain classifier is fitted on.")
    quiet: bool = opt(False, short="-q", help="No progress bars.")

    def check(self) -> None:
        validate(self)
        if self.per_image and (self.features is None or self.target_features is None):
            missing = "--features" if self.features is None else "--target-features"
            raise UserError("--per-image", f"needs {missing}", "pass the source's and the target's feature stores")
        if not self.per_image:
            given = [
                f
                for f, v in (
                    ("--features", self.features),
                    ("--target-features", self.target_features),
                    ("--image-weights", self.image_weights),
                )
                if v is not None
            ]
            if given:
                raise UserError(given[0], "is given without --per-image", "add --per-image, or drop it")

    def image_weights_path(self) -> str | None:
        if not self.per_image:
            return None
        return self.image_weights or str(Path(self.out).with_name("image_weights.parquet"))


def run(cfg: WeightConfig) -> Path:
    """Write weights.parquet (and its plot); report classes dropped for want of source images."""
    cfg.check()
    plot = None if cfg.no_plot else (cfg.plot or str(Path(cfg.out).with_suffix(".png")))
    if plot is not None and cfg.plot is None:  # a default path the user did not name
        refuse_foreign_default(plot, "--plot")
    images = cfg.image_weights_path()
    if images is not None and cfg.image_weights is None:
        refuse_foreign_output(images, "--image-weights")
    refuse_clobber(
        {"--out": cfg.out, "--plot": plot, "--image-weights": images},
        {"--source": cfg.source, "--prior": cfg.prior, "--exclude": cfg.exclude},
    )
    sm = open_manifest(cfg.source)
    classes, p_target = read_prior(cfg.prior)
    stores = None
    if cfg.per_image:
        from .image_weights import open_stores

        if sm.multi_label:
            raise UserError(
                cfg.source,
                "is a multi-label source; per-image weights are for single-label sources so far",
                "drop --per-image (label weights work on multi-label sources)",
            )
        stores = open_stores(cfg.features, cfg.target_features, sm, file_sha256(cfg.source))
    result = compute_weights(sm, classes, p_target, read_excluded_ids(cfg.exclude), read_interval(cfg.prior))
    meta = ManifestMeta(
        classes=sm.classes,
        stage="weight",
        params={"exclude": cfg.exclude, "multi_label": sm.multi_label},
        inputs=input_hashes(source=cfg.source, prior=cfg.prior, exclude=cfg.exclude),
    )
    t = result.table
    clf = None
    if stores is not None:  # fitted before anything is written: a target too small is refused first
        from .image_weights import fit

        clf = fit(sm, *stores, class_weights(t, len(sm.classes)), cfg.seed)
    with atomic_output(cfg.out) as tmp:  # the table and its plot land together, or neither does
        if clf is not None:
            meta.params["per_image"] = write_image_weights(cfg, sm, stores[0], clf, t, images, meta)
        write_table(tmp, t, meta)
        if plot is not None:
            plot_weights(t, plot, title=f"{Path(cfg.source).name}: importance weights from {Path(cfg.prior).name}")
    if result.dropped:
        shown = ", ".join(result.dropped[:5]) + (" ..." if len(result.dropped) > 5 else "")
        logger.warning(
            f"warning: {len(result.dropped)} class(es) have target mass but no source image; "
            f"dropped and P_t renormalised: {shown}"
        )
    msg = f"wrote {cfg.out}: {t.num_rows:,} classes"
    if "p_expected" in t.column_names:
        gap = np.abs(t.column("p_expected").to_numpy() - t.column("p_target").to_numpy()).sum() / 2
        msg += f" (multi-label: a sample is expected to reach P_t within {gap:.3f} total variation)"
    if "n_excluded" in t.column_names:
        msg += f", {sum(t.column('n_excluded').to_pylist()):,} source images excluded as duplicates"
    logger.info(msg)
    if plot is not None:
        logger.info(f"plot: {plot}")
    return Path(cfg.out)


def class_weights(table: pa.Table, k: int) -> np.ndarray:
    """w(y) by label from a weights table."""
    w = np.zeros(k)
    w[table.column("label").to_numpy()] = table.column("weight").to_numpy()
    return w


def write_image_weights(
    cfg: WeightConfig, sm: Manifest, store, clf, table: pa.Table, path: str, meta: ManifestMeta
) -> dict:
    """image_weights.parquet (image_weights.py), atomically; what it found, for weights.parquet's params."""
    from dataclasses import asdict

    from .image_weights import compute_image_weights

    img_meta = ManifestMeta(
        classes=sm.classes,
        stage=IMAGE_STAGE,
        params={"temper": cfg.temper, "clip": cfg.clip, "seed": cfg.seed, "model": store.binding.model},
        inputs={**meta.inputs, **input_hashes(features=Path(cfg.features) / "store.json")},
    )
    w = class_weights(table, len(sm.classes))
    with atomic_output(path) as tmp:
        found = compute_image_weights(sm, store, clf, w, tmp, img_meta, cfg.temper, cfg.clip, not cfg.quiet)
    logger.info(found.line())
    return {**asdict(found), "file": Path(path).name}


def refuse_foreign_output(path: str, flag: str) -> None:
    """A default output path that holds a file datl's per-image weights did not write is refused."""
    p = Path(path)
    if not p.exists():
        return
    try:
        meta = ManifestMeta.from_schema(pq.read_schema(p), p)
    except (OSError, pa.ArrowException, ManifestError):
        meta = None
    if meta is None or meta.stage != IMAGE_STAGE:
        raise UserError(p, "exists and is not per-image weights datl wrote", f"pass {flag} PATH, or move that file")


@dataclass
class WeightResult:
    table: pa.Table
    dropped: list[str] = field(default_factory=list)  # p_target > 0 but no source images


def open_parquet(path: str | Path, writer: str) -> pq.ParquetFile:
    """A stage output's Parquet file, or a one-line error naming the command that writes it."""
    path = Path(path)
    if not path.exists():
        raise UserError(path, "does not exist", f"write it with `{writer}`")
    try:
        return pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as e:
        raise UserError(
            path, f"is not a readable Parquet file ({str(e).splitlines()[0]})", f"write it with `{writer}`"
        ) from None


def read_stage_table(path: str | Path, columns: tuple[str, ...], what: str, writer: str) -> tuple[list[str], pa.Table]:
    """(classes, table) of a stage output with ``columns`` and class metadata, or a one-line error."""
    path = Path(path)
    t = open_parquet(path, writer).read()
    meta = ManifestMeta.from_schema(t.schema, path)
    missing = [c for c in columns if c not in t.column_names]
    if missing or meta is None or not meta.classes:
        raise ManifestError(
            path, f"is not {what} (missing {', '.join(missing) or 'class metadata'})", f"write it with `{writer}`"
        )
    labels = t.column("label").to_numpy()
    if labels.min(initial=0) < 0 or labels.max(initial=0) >= len(meta.classes):
        raise ManifestError(path, "has labels outside its classes", f"rewrite it with `{writer}`")
    return list(meta.classes), t.sort_by("label")


def read_interval(path: str | Path) -> tuple[np.ndarray, np.ndarray] | None:
    """(p_low, p_high) of a prior.parquet that has them (`curate estimate --bootstrap`), by label."""
    t = pq.read_table(path)
    if "p_low" not in t.column_names or "p_high" not in t.column_names:
        return None
    t = t.sort_by("label")
    return (
        t.column("p_low").to_numpy(zero_copy_only=False).astype(np.float64),
        t.column("p_high").to_numpy(zero_copy_only=False).astype(np.float64),
    )


def read_prior(path: str | Path) -> tuple[list[str], np.ndarray]:
    """(classes, p_target) from a prior.parquet written by `curate estimate`."""
    classes, t = read_stage_table(path, PRIOR_COLUMNS, "a prior", "curate estimate")
    p = np.zeros(len(classes))
    values = t.column("p_target").to_numpy(zero_copy_only=False).astype(np.float64)
    bad = np.flatnonzero(~np.isfinite(values) | (values < 0))
    if len(bad):
        name = t.column("class_name")[int(bad[0])].as_py()
        raise UserError(
            path,
            f"p_target of class '{name}' is {values[bad[0]]:g} ({len(bad)} class(es) not a finite number >= 0)",
            "re-estimate the prior with `curate estimate`",
        )
    if values.sum() <= 0:
        raise UserError(path, "p_target sums to 0", "re-estimate the prior with `curate estimate`")
    if t.num_rows != len(classes) or t.column("label").to_pylist() != list(range(len(classes))):
        raise UserError(
            path,
            f"gives p_target for {len(set(t.column('label').to_pylist()))} of its "
            f"{len(classes)} classes (one row per class expected)",
            "re-estimate the prior with `curate estimate`, which writes every class",
        )
    p[t.column("label").to_numpy()] = values
    return classes, p


def read_excluded_ids(path: str | Path | None) -> pa.Array | None:
    """The source ids listed in a duplicates.parquet (`curate dedup`) or any table with an `id` column."""
    if path is None:
        return None
    path = Path(path)
    if not path.exists():
        raise UserError(path, "does not exist", "write it with `curate dedup`, or drop --exclude")
    try:
        ids = pq.read_table(path, columns=["id"]).column("id")
    except (pa.ArrowException, OSError, KeyError) as e:
        raise UserError(
            path,
            f"has no readable 'id' column ({str(e).splitlines()[0]})",
            "pass the duplicates.parquet written by `curate dedup`",
        ) from None
    return pc.unique(ids.combine_chunks())


def excluded_counts(source: Manifest, ids: pa.Array, k: int) -> np.ndarray:
    """Per-class count of source rows whose id is in ``ids`` (one streamed pass); label
    occurrences for a multi-label source."""
    out = np.zeros(k, dtype=np.int64)
    for b in source.iter_batches(["id", source.label_column], batch_size=262_144):
        hit = pc.is_in(b.column(0), value_set=ids)
        if source.multi_label:
            _, lab, _ = labelsets.flat(pc.filter(b.column(1), hit))
        else:
            lab = pc.filter(b.column(1), hit).drop_null().to_numpy(zero_copy_only=False)
        out += np.bincount(lab, minlength=k)
    return out


def expected_shares(source: Manifest, p_target: np.ndarray, n_source: np.ndarray) -> np.ndarray:
    """A multi-label source: each label's expected share of the label occurrences in a
    with-replacement sample that draws label j with chance P_t(j), then an image carrying j
    uniformly (the module docstring's formula), in one streamed pass."""
    per = np.divide(p_target, n_source, out=np.zeros_like(p_target), where=n_source > 0)
    got = np.zeros(len(p_target))
    for b in source.iter_batches([source.label_column], batch_size=262_144):
        offsets, values, _ = labelsets.flat(b.column(0))
        rows = np.repeat(np.arange(len(offsets) - 1), np.diff(offsets))
        a = np.bincount(rows, weights=per[values], minlength=len(offsets) - 1)  # a(x) of each image
        got += np.bincount(values, weights=a[rows], minlength=len(p_target))
    return got / got.sum() if got.sum() > 0 else got


def compute_weights(
    source: Manifest,
    prior_classes: list[str],
    p_target: np.ndarray,
    exclude: pa.Array | None = None,
    p_interval: tuple[np.ndarray, np.ndarray] | None = None,
) -> WeightResult:
    """The weights table. ``p_interval`` (the prior's p_low, p_high) gives w_low, w_high: the
    interval's ends through the same renormalisation as P_t, over P_s (which is counted, not
    estimated)."""
    classes = source.require_labels(multi=True)
    check_same_classes(
        classes,
        prior_classes,
        source.path,
        "the prior",
        f"estimate the prior with a model trained on {source.path}'s classes",
    )
    n_source, _ = source.label_counts(batch_size=262_144)
    p_source = n_source / max(n_source.sum(), 1)
    unreachable = (p_target > 0) & (n_source == 0)
    p_t = np.where(unreachable, 0.0, p_target)
    if p_t.sum() <= 0:
        raise UserError(
            source.path,
            "has no images in any class the target prior gives mass to",
            "check that the prior was estimated for this source",
        )
    scale = 1.0 / p_t.sum()
    p_t = p_t * scale
    weight = np.divide(p_t, p_source, out=np.zeros_like(p_t), where=p_source > 0)
    cols = {
        "label": pa.array(np.arange(len(classes), dtype=np.int32)),
        "class_name": pa.array(classes, pa.string()),
        "n_source": pa.array(n_source, pa.int64()),
        "p_source": pa.array(p_source, pa.float64()),
        "p_target": pa.array(p_t, pa.float64()),
        "weight": pa.array(weight, pa.float64()),
    }
    if p_interval is not None:
        for name, end in zip(("w_low", "w_high"), p_interval):
            end = np.where(unreachable, 0.0, end) * scale
            cols[name] = pa.array(np.divide(end, p_source, out=np.zeros_like(end), where=p_source > 0), pa.float64())
    if source.multi_label:
        cols["p_expected"] = pa.array(expected_shares(source, p_t, n_source), pa.float64())
    if exclude is not None:
        cols["n_excluded"] = pa.array(excluded_counts(source, exclude, len(classes)), pa.int64())
    return WeightResult(pa.table(cols), [c for c, u in zip(classes, unreachable) if u])


def read_weights(path: str | Path) -> tuple[list[str], pa.Table]:
    """(classes, table sorted by label) from a weights.parquet written by `curate weight`; every
    weight and p_target must be a finite number >= 0."""
    classes, t = read_stage_table(path, ("label", "p_target", "weight"), "a weights table", "curate weight")
    for col in ("weight", "p_target"):
        v = t.column(col).to_numpy(zero_copy_only=False).astype(np.float64)
        bad = np.flatnonzero(~np.isfinite(v) | (v < 0))
        if len(bad):
            raise UserError(
                path,
                f"{col} of label {t.column('label')[int(bad[0])].as_py()} is {v[bad[0]]:g} "
                f"({len(bad)} row(s) not a finite number >= 0)",
                "recompute it with `curate weight`",
            )
        if not v.sum() > 0:
            raise UserError(
                path,
                f"every {col} is 0: no class can be drawn",
                "recompute it with `curate weight` from a prior estimated for this source",
            )
    return classes, t


def read_image_weights(path: str | Path, source: Manifest) -> np.ndarray:
    """w(x) for every row of ``source`` from an image_weights.parquet, checked row by row
    against the source's ids (a file for another source is refused with exit 2)."""
    path, writer = Path(path), "curate weight --per-image"
    f = open_parquet(path, writer)
    meta = ManifestMeta.from_schema(f.schema_arrow, path)
    if meta is None or meta.stage != IMAGE_STAGE or not {"id", "weight"} <= set(f.schema_arrow.names):
        raise UserError(path, "is not an image_weights.parquet (per-image weights)", f"write it with `{writer}`")
    if f.metadata.num_rows != source.num_rows:
        raise UserError(
            path,
            f"holds {f.metadata.num_rows:,} rows and {source.path} {source.num_rows:,}: weights of another source",
            f"write them for this source with `{writer}`",
        )
    w = np.empty(source.num_rows, np.float64)
    mine = source.iter_batches(["id"], batch_size=65_536)
    pos, buf = 0, None
    for b in f.iter_batches(batch_size=65_536, columns=["id", "weight"]):
        ids = b.column(0)
        got = []
        while sum(len(g) for g in got) < len(ids):
            if buf is None or len(buf) == 0:
                buf = next(mine).column(0)
            take = min(len(ids) - sum(len(g) for g in got), len(buf))
            got.append(buf.slice(0, take))
            buf = buf.slice(take)
        theirs = pa.concat_arrays(got) if len(got) > 1 else got[0]
        if not ids.equals(theirs):
            raise UserError(
                path,
                f"lists other ids than {source.path} near row {pos:,}: weights of another source",
                f"write them for this source with `{writer}`",
            )
        v = b.column(1).to_numpy(zero_copy_only=False)
        if not np.isfinite(v).all() or (v < 0).any():
            raise UserError(
                path, f"has a weight that is not a finite number >= 0 near row {pos:,}", f"rewrite it with `{writer}`"
            )
        w[pos : pos + len(v)] = v
        pos += len(v)
    return w


# -- the plot ---------------------------------------------------------------------------
def plot_weights(table: pa.Table, path: str | Path, top: int = 40, title: str = "") -> None:
    """Three panels: top classes by weight (named, with counts); cumulative share of P_t over
    ranked classes; P_t against P_s on log axes (weight = distance above the diagonal)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = table.column("class_name").to_pylist()
    w = table.column("weight").to_numpy()
    pt = table.column("p_target").to_numpy()
    ps = table.column("p_source").to_numpy()
    n = table.column("n_source").to_numpy()
    k = len(names)
    fig = plt.figure(figsize=(15, 10), constrained_layout=True)
    gs = fig.add_gridspec(2, 2, width_ratios=[1.1, 1])
    ax = fig.add_subplot(gs[:, 0])
    order = np.argsort(-w, kind="stable")[: min(top, k)]
    ypos = np.arange(len(order))[::-1]
    err = None
    if "w_low" in table.column_names:  # the prior's 95% interval, carried to the weight
        lo, hi = table.column("w_low").to_numpy(), table.column("w_high").to_numpy()
        err = np.vstack([np.maximum(w[order] - lo[order], 0), np.maximum(hi[order] - w[order], 0)])
    ax.barh(ypos, w[order], color="#3b75af", xerr=err, ecolor="#333333", capsize=2)
    ax.set_yticks(ypos, [f"{names[i]}  (n={n[i]:,})" for i in order], fontsize=8)
    ax.axvline(1.0, color="grey", lw=0.8, ls="--")
    ax.set_xlabel(
        "importance weight  P_t(y) / P_s(y)   (dashed: 1 = as in the source"
        + ("; bars: 95% interval of the estimate)" if err is not None else ")")
    )
    ax.set_title(f"top {len(order)} of {k:,} source classes by weight")
    for y, i in zip(ypos, order):
        ax.text(w[i], y, f" {w[i]:.2f}", va="center", fontsize=7)

    ax2 = fig.add_subplot(gs[0, 1])
    ranked = np.sort(pt)[::-1]
    cum = np.cumsum(ranked)
    ax2.plot(np.arange(1, k + 1), cum, color="#c44e52")
    for share in (0.5, 0.9, 0.99):
        j = int(np.searchsorted(cum, share)) + 1
        ax2.axhline(share, color="grey", lw=0.5, ls=":")
        ax2.annotate(
            f"{share:.0%} of P_t in {j:,} classes", (j, share), textcoords="offset points", xytext=(8, -12), fontsize=8
        )
    ax2.set_xscale("log" if k > 50 else "linear")
    ax2.set_xlabel("source classes ranked by P_t(y)")
    ax2.set_ylabel("cumulative share of P_t")
    ax2.set_ylim(0, 1.02)
    ax2.set_title("how concentrated the target is over source classes")

    ax3 = fig.add_subplot(gs[1, 1])
    floor = 1e-6
    xs, ys = np.maximum(ps, floor), np.maximum(pt, floor)
    sc = ax3.scatter(xs, ys, c=np.log10(np.maximum(w, 1e-3)), cmap="coolwarm", s=14, vmin=-2, vmax=2)
    lo, hi = min(xs.min(), ys.min()), max(xs.max(), ys.max())
    ax3.plot([lo, hi], [lo, hi], color="grey", lw=0.8, ls="--")
    ax3.set_xscale("log")
    ax3.set_yscale("log")
    ax3.set_xlabel("P_s(y)  (source label frequency)")
    ax3.set_ylabel(f"P_t(y)  (estimated; < {floor:g} drawn at {floor:g})")
    ax3.set_title("P_t vs P_s per class (dashed: weight 1)")
    for i in np.argsort(-w)[:5]:
        ax3.annotate(names[i], (xs[i], ys[i]), fontsize=7, xytext=(3, 3), textcoords="offset points")
    fig.colorbar(sc, ax=ax3, label="log10 weight")
    if title:
        fig.suptitle(title)
    with atomic_output(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, metadata=png_metadata())
    plt.close(fig)
