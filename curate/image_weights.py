"""Per-image weights (``curate weight --per-image``): w(x) = w(y) * r~(x), for when the
paper's assumption P_s(x|y) = P_t(x|y) fails.

Invariant: within each class, the image weights average to the class weight w(y) over the
class's embedded source images, so a sample drawn by them has the paper's class shares
(P_t(y)); r~ only moves mass between images of one class, towards those that look like the
target. An image the store could not embed, or one without a label, gets weight 0.

The rule, from the two feature stores (source and target, one model):

- s(x): a domain classifier's log-odds that x is a target image: logistic regression (C = 1)
  on the L2-normalised embeddings, each dimension standardised, the target images (label 1)
  against a uniform sample of at most ``FIT_ROWS`` source images (label 0) weighted by w(y)
  of their class, both sides of equal total weight. With equal totals, exp(s(x)) estimates p_t(x) / q(x), where
  q(x) = sum_y P_t(y) p_s(x|y) is the source reweighted by class (Bickel, Brueckner & Scheffer
  2007, "Discriminative learning for differing training and test distributions").
- r(x) = clip(exp(temper * s(x)), 1 / clip, clip): tempered (temper < 1 flattens it: a ratio
  from a classifier fitted on a few thousand images is noisy and over-confident) and clipped
  both ways, so no image dominates and none is lost.
- r~(x) = r(x) / mean of r over the embedded source images of x's class, and
  w(x) = w(y(x)) * r~(x).

Why exp(s(x)) stands for the ratio within the class, p_t(x|y) / p_s(x|y): where x's class is
plain from x (one term of q's sum dominates), p_t(x) / q(x) = p_t(x|y) / p_s(x|y). Where
classes overlap it is an approximation; dividing by the class mean keeps the class's share
exact whatever the classifier does. One classifier for all classes, not one per class: a
target of a few thousand images has too few of most classes to fit one each.

Departures: DSIR (Xie et al. 2023) estimates the ratio from hashed n-gram densities, not a
classifier; KMM/KLIEP match moments or fit the ratio directly. Bickel et al. fit the domain
classifier jointly with the task; here it is fitted once on frozen embeddings.

Two streamed passes over the source store's embeddings (the class means of r, then the
weights), one chunk in memory at a time; the output is one row per source row, in manifest
order: ``id``, ``label``, ``log_odds`` s(x), ``ratio`` r~(x) and ``weight`` w(x).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from datl.core.errors import UserError
from datl.core.progress import bar
from datl.manifests import Manifest, ManifestMeta
from datl.manifests.schema import META_KEY

from .features.store import FeatureStore

logger = logging.getLogger(__name__)

FIT_ROWS = 20_000  # source images the domain classifier is fitted on (a uniform sample)
TARGET_ROWS = 50_000  # target images it is fitted on, at most (a uniform sample)
MIN_TARGET = 20  # fewer embedded target images than this cannot fit the classifier


@dataclass
class ImageWeights:
    rows: int  # source rows
    weighted: int  # rows with weight > 0
    ess: float  # (sum w)^2 / sum w^2 over the rows
    ess_class: float  # the same for the class weights alone
    auc: float  # the domain classifier's ROC AUC on its own fitting images (in-sample)
    fit_source: int
    fit_target: int
    temper: float
    clip: float

    def line(self) -> str:
        n = max(self.rows, 1)
        return (
            f"per-image weights: effective sample size {self.ess:,.0f} of {self.rows:,} source images "
            f"({self.ess / n:.1%}); the class weights alone: {self.ess_class:,.0f} ({self.ess_class / n:.1%}); "
            f"domain classifier fitted on {self.fit_target:,} target and {self.fit_source:,} source images, "
            f"in-sample ROC AUC {self.auc:.3f}"
        )


def open_stores(features: str, target_features: str, source: Manifest, source_sha256: str) -> tuple:
    """The source and target stores, refused (exit 2) unless both hold embeddings of one model
    and the source store describes ``source``."""
    src, tgt = FeatureStore.open(features), FeatureStore.open(target_features)
    if tgt.binding.model == "none":
        raise UserError(
            target_features,
            "holds no model embeddings (built without --model)",
            "build it with `curate features --source TARGET --model MODEL`, the model of --features",
        )
    tgt.check(tgt.binding.source_sha256, tgt.binding.model, True, tgt.binding.image_size)
    if src.binding.model != "none" and (src.binding.model, src.binding.image_size) != (
        tgt.binding.model,
        tgt.binding.image_size,
    ):
        raise UserError(
            features,
            "holds embeddings of another model than --target-features (their fingerprints differ)",
            "build both stores with the same `curate features --model`",
        )
    src.check(source_sha256, tgt.binding.model, True, tgt.binding.image_size)
    if src.binding.rows != source.num_rows:
        raise UserError(features, f"has {src.binding.rows:,} rows, {source.path} {source.num_rows:,}", "rebuild it")
    return src, tgt


def sample_rows(n: int, m: int, rng: np.random.Generator) -> np.ndarray:
    """m of n row numbers, uniform without replacement, sorted (all of them when m >= n)."""
    return np.arange(n) if m >= n else np.sort(rng.choice(n, m, replace=False))


def gather(store: FeatureStore, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(the given rows that are embedded, their vectors), reading only the parts that hold them."""
    size, keep, vecs = store.binding.chunk_size, [], []
    for c in np.unique(rows // size):
        lo, _ = store.binding.chunk(int(c))
        er, ev = store.read_embeddings(int(c))
        want = rows[(rows >= lo) & (rows < lo + size)] - lo
        hit = np.isin(er, want)
        keep.append(er[hit] + lo)
        vecs.append(ev[hit])
    if not keep:
        return np.zeros(0, np.int64), np.zeros((0, store.binding.embedding_dim), np.float32)
    return np.concatenate(keep), np.vstack(vecs)


def fit_domain_classifier(
    target: np.ndarray, source: np.ndarray, source_w: np.ndarray, seed: int
) -> tuple[np.ndarray, float, float]:
    """(coef, intercept, in-sample weighted AUC) of the module docstring's classifier on
    L2-normalised vectors; ``source_w``: w(y) of each source vector's class."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score

    from .estimate.shift_check import _normalise

    nt = len(target)
    ws = source_w * (nt / source_w.sum())
    x = np.vstack([_normalise(target), _normalise(source)])
    y = np.r_[np.ones(nt, dtype=int), np.zeros(len(source), dtype=int)]
    sw = np.r_[np.ones(nt), ws]
    mu, sd = x.mean(0), np.clip(x.std(0), 1e-6, None)  # standardised: C means the same for any model
    clf = LogisticRegression(C=1.0, max_iter=2000, random_state=seed).fit((x - mu) / sd, y, sample_weight=sw)
    auc = float(roc_auc_score(y, clf.decision_function((x - mu) / sd), sample_weight=sw))
    coef = clf.coef_[0].astype(np.float64) / sd  # folded back: s(x) = x' coef + intercept on unit vectors x'
    return coef, float(clf.intercept_[0] - mu @ coef), auc


def ratios(s: np.ndarray, temper: float, clip: float) -> np.ndarray:
    """r(x) = clip(exp(temper * s), 1 / clip, clip), computed in log space (no overflow)."""
    bound = np.log(clip)
    return np.exp(np.clip(temper * s, -bound, bound))


@dataclass
class DomainClassifier:
    coef: np.ndarray  # on unit-length embeddings
    intercept: float
    auc: float  # in-sample weighted ROC AUC
    fit_source: int
    fit_target: int


def fit(
    source: Manifest, src: FeatureStore, tgt: FeatureStore, class_weight: np.ndarray, seed: int
) -> DomainClassifier:
    """The module docstring's classifier, from samples of both stores; refused (exit 2) when
    either side is too small to fit it. Nothing is written."""
    rng = np.random.default_rng([seed, 0x1A6E])
    t_rows, t_vecs = gather(tgt, sample_rows(tgt.binding.rows, TARGET_ROWS, rng))
    if len(t_rows) < MIN_TARGET:
        raise UserError(
            tgt.folder,
            f"holds {len(t_rows)} embedded target image(s), too few to fit the domain classifier "
            f"(at least {MIN_TARGET})",
            "pass a larger target, or use the class weights alone (drop --per-image)",
        )
    s_rows = sample_rows(src.binding.rows, FIT_ROWS, rng)
    s_lab = source_labels(source, s_rows)
    s_rows, s_lab = s_rows[s_lab >= 0], s_lab[s_lab >= 0]
    e_rows, s_vecs = gather(src, s_rows)
    w_fit = class_weight[s_lab[np.searchsorted(s_rows, e_rows)]]  # the embedded ones among them
    if len(e_rows) < MIN_TARGET or w_fit.sum() <= 0:
        raise UserError(
            src.folder,
            "has too few embedded, labeled source images with a class weight above 0 to fit the domain classifier",
            "check the prior and the store (`curate features --model`)",
        )
    coef, intercept, auc = fit_domain_classifier(t_vecs, s_vecs, w_fit, seed)
    return DomainClassifier(coef, intercept, auc, len(e_rows), len(t_rows))


def compute_image_weights(
    source: Manifest,
    src: FeatureStore,
    clf: DomainClassifier,
    class_weight: np.ndarray,
    out: Path,
    meta: ManifestMeta,
    temper: float,
    clip: float,
    progress: bool = True,
) -> ImageWeights:
    """Stream the two passes and write ``out`` (a path the caller made atomic)."""
    coef, intercept = clf.coef, clf.intercept
    k = len(class_weight)
    sums, counts = np.zeros(k), np.zeros(k)
    chunks = range(src.binding.chunks)
    for _c, _ids, labels, rows, s in _scored(source, src, coef, intercept, chunks, progress, "per-image weights 1/2"):
        r = ratios(s, temper, clip)
        ok = labels[rows] >= 0
        sums += np.bincount(labels[rows][ok], weights=r[ok], minlength=k)
        counts += np.bincount(labels[rows][ok], minlength=k)
    mean_r = np.divide(sums, counts, out=np.ones(k), where=counts > 0)

    schema = pa.schema(
        [
            pa.field("id", source.schema.field("id").type),
            pa.field("label", pa.int32()),
            pa.field("log_odds", pa.float32()),
            pa.field("ratio", pa.float32()),
            pa.field("weight", pa.float64()),
        ],
        metadata={META_KEY: meta.to_json()},
    )
    sw = sw2 = cw = cw2 = 0.0
    weighted = 0
    with pq.ParquetWriter(out, schema) as writer:
        scored = _scored(source, src, coef, intercept, chunks, progress, "per-image weights 2/2", with_ids=True)
        for c, ids, labels, rows, s in scored:
            lo, hi = src.binding.chunk(c)
            n = hi - lo
            log_odds = np.full(n, np.nan, np.float32)
            log_odds[rows] = s
            ratio = np.zeros(n, np.float32)
            ok = labels[rows] >= 0
            ratio[rows[ok]] = ratios(s[ok], temper, clip) / mean_r[labels[rows][ok]]
            wc = np.where(labels >= 0, class_weight[np.maximum(labels, 0)], 0.0)
            w = wc * ratio
            sw, sw2, cw, cw2 = sw + w.sum(), sw2 + (w * w).sum(), cw + wc.sum(), cw2 + (wc * wc).sum()
            weighted += int((w > 0).sum())
            writer.write_table(
                pa.table(
                    [
                        ids,
                        pa.array(labels, pa.int32(), mask=labels < 0),
                        pa.array(log_odds, pa.float32(), mask=np.isnan(log_odds)),
                        pa.array(ratio, pa.float32()),
                        pa.array(w, pa.float64()),
                    ],
                    schema=schema,
                )
            )
    if weighted == 0:
        raise UserError(
            src.folder,
            "gives every source image weight 0 (none is embedded with a class weight above 0)",
            "check the prior and that the store was built with --model",
        )
    return ImageWeights(
        rows=src.binding.rows,
        weighted=weighted,
        ess=sw * sw / sw2 if sw2 > 0 else 0.0,
        ess_class=cw * cw / cw2 if cw2 > 0 else 0.0,
        auc=clf.auc,
        fit_source=clf.fit_source,
        fit_target=clf.fit_target,
        temper=temper,
        clip=clip,
    )


def _scored(
    source: Manifest,
    store: FeatureStore,
    coef,
    intercept,
    chunks: range,
    progress: bool,
    desc: str,
    with_ids: bool = False,
):
    """Per chunk: (chunk, its ids (None unless ``with_ids``), labels of its rows (-1: none),
    embedded rows, their log-odds s(x)); one read of the manifest and of the store a chunk."""
    with bar(total=store.binding.rows, desc=desc, unit="img", enabled=progress) as pb:
        for c in chunks:
            lo, hi = store.binding.chunk(c)
            t = source.read_range(lo, hi, ["label", "id"] if with_ids else ["label"])
            labels = t.column("label").fill_null(-1).to_numpy()
            rows, vecs = store.read_embeddings(c)
            norms = np.clip(np.linalg.norm(vecs, axis=1), 1e-12, None)
            s = (vecs @ coef) / norms + intercept
            yield c, t.column("id") if with_ids else None, labels.astype(np.int64), rows, s.astype(np.float32)
            pb.update(hi - lo)


def source_labels(source: Manifest, rows: np.ndarray) -> np.ndarray:
    """The labels (-1: none) of the given sorted source rows, in one streamed pass."""
    out = np.full(len(rows), -1, np.int64)
    pos = 0
    for t in source.iter_take(rows, ["label"]):
        v = t.column("label").fill_null(-1).to_numpy()
        out[pos : pos + len(v)] = v
        pos += len(v)
    return out
