"""``curate estimate``: P_t(y) over the SOURCE classes, from a source classifier run on the
unlabeled target (rank-sharded under torchrun), or from a ``--save-predictions`` file.
Writes prior.parquet: label, class_name, p_target (sums to 1)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from datl.core.errors import RunFailed, UserError
from datl.core.files import input_hashes, refuse_clobber
from datl.core.options import DEVICES, opt, validate
from datl.manifests import ManifestMeta, open_manifest, write_table

from .estimators import (
    METHODS,
    MULTI_LABEL_METHODS,
    NEEDS_CALIBRATION,
    SHIFTS,
    bootstrap,
    choose_method,
    default_temperature,
    estimate,
    estimate_multi_label,
    interval,
    multi_label_replicate_fn,
    replicate_fn,
)
from .predictions import read_predictions, write_predictions

logger = logging.getLogger(__name__)

MODEL_CLASSES = "estimate with a model trained on these classes"


@dataclass(kw_only=True)
class EstimateConfig:
    model: str | None = opt(None, help="Source classifier: a RUN_DIR of `pretrain`, or timm:ARCH with --weights.")
    weights: str | None = opt(None, help="Local state dict for --model timm:ARCH.")
    target: str | None = opt(None, help="Unlabeled target manifest.")
    out: str = opt(short="-o", help="prior.parquet to write (label, class_name, p_target).")
    method: str = opt(
        "mean",
        choices=METHODS,
        help="mean: the paper's; em: Saerens 2002; bbse: Lipton 2018; em-bcts: Alexandari 2020; "
        "pacc: Bella 2010; auto: the lowest L1 on simulated shifts of --calibration.",
    )
    temperature: float | None = opt(
        None,
        help="Smoothing: mean divides each image's logits by T; other methods "
        "flatten the result to P^(1/T) [default: 2.0 (the paper's) for mean; "
        "1, no flattening, for em, bbse, em-bcts].",
        bounds="(0, inf)",
    )
    calibration: str | None = opt(None, help="Held-out labeled source manifest (needed by bbse and em-bcts).")
    source: str | None = opt(
        None,
        help="Source manifest: its label counts are P_s(y) when the model recorded "
        "no training prior, or with --source-prior source.",
    )
    source_prior: str = opt(
        "checkpoint",
        choices=("checkpoint", "source"),
        noun="source prior",
        help="P_s(y) for em: the checkpoint's training prior (what its posteriors carry), "
        "or --source's label frequencies.",
    )
    save_predictions: str | None = opt(
        None, output=True, help="Also write per-image logits here, to re-estimate without the model."
    )
    predictions: str | None = opt(None, help="Re-estimate from a --save-predictions file instead of running the model.")
    bootstrap: int | None = opt(
        None,
        bounds="[0, inf)",
        help="Replicates of the target (Poisson bootstrap on the cached logits) for the 95% interval "
        "of each P_t(y): prior.parquet's p_low, p_high; 0: no interval [default: 100, fewer (at least 20) "
        "when the target times the classes is large: a rule of the sizes, never of the clock].",
    )
    seed: int = opt(0, bounds="[0, inf)", help="Seed of the bootstrap (and of the label-shift check).")
    shift_check: bool = opt(
        True,
        negatable=True,
        help="With --calibration and a model: test the label-shift assumption P_s(x|y) = P_t(x|y) by how well "
        "a domain classifier on the model's embeddings tells the target from the calibration split "
        "reweighted by w(y) (ROC AUC, 95% interval; 0.5 = the assumption holds as far as the model sees).",
    )
    batch_size: int = opt(256, bounds="[1, inf)")
    workers: int = opt(2, help="DataLoader workers.", bounds="[0, inf)")
    device: str = opt("auto", choices=DEVICES)
    quiet: bool = opt(False, short="-q")

    @property
    def t(self) -> float:
        """The temperature in force: the one given, or the method's default."""
        return self.temperature if self.temperature is not None else default_temperature(self.method)

    def check(self) -> None:
        validate(self)
        refuse_clobber(
            {"--out": self.out, "--save-predictions": self.save_predictions},
            {
                "--target": self.target,
                "--calibration": self.calibration,
                "--source": self.source,
                "--predictions": self.predictions,
            },
        )
        if self.method in NEEDS_CALIBRATION and not (self.calibration or self.predictions):
            raise UserError(
                f"--method {self.method}",
                "needs held-out labeled source images",
                "pass --calibration HELDOUT_SOURCE.parquet",
            )
        if not self.predictions and not (self.model and self.target):
            raise UserError(
                "curate estimate",
                "needs --model and --target (or --predictions FILE)",
                "pass the source classifier and the unlabeled target manifest",
            )


@dataclass
class Logits:
    classes: list[str]
    target: np.ndarray
    calibration: np.ndarray | None = None
    calibration_labels: np.ndarray | None = None
    class_prior: list[float] | None = None  # the checkpoint's training prior (multi-label: image shares)
    multi_label: bool = False  # a sigmoid classifier: per-label logits
    target_features: np.ndarray | None = None  # pooled embeddings, for the label-shift check
    calibration_features: np.ndarray | None = None


def run(cfg: EstimateConfig) -> Path:
    cfg.check()
    from datl.neural.engine import dist

    with dist.session(cfg.device) as d:
        logits = read_predictions_file(cfg.predictions) if cfg.predictions else model_logits(cfg, d)
        if d.main:
            write_prior(cfg, logits)
    return Path(cfg.out)


def read_predictions_file(path: str) -> Logits:
    classes, parts, params = read_predictions(path)
    return Logits(
        classes,
        parts["target"][0],
        *parts["calibration"],
        class_prior=params.get("class_prior"),
        multi_label=bool(params.get("multi_label")),
    )


def check_label_kind(m, multi_model: bool, flag: str) -> None:
    """A softmax model with a multi-label manifest, or a sigmoid one with a single-label
    manifest, is refused: the estimate would count the wrong thing."""
    if m.has_labels and m.multi_label != multi_model:
        model = "multi-label (sigmoid)" if multi_model else "single-label (softmax)"
        kind = "multi-label" if m.multi_label else "single-label"
        raise UserError(
            m.path,
            f"is a {kind} manifest, and the model is {model}",
            f"pass a {flag} manifest of the kind the model was trained on, or a model trained on this one",
        )


def model_logits(cfg: EstimateConfig, d) -> Logits:
    """Run the model over the target (and --calibration); full on rank 0, rank-sharded work."""
    from datl.neural.checkpoint import load_model
    from datl.neural.engine.inference import run_model

    tm = open_manifest(cfg.target)
    if tm.num_rows == 0:
        raise UserError(cfg.target, "is empty", "pass a target manifest with images")
    lm = load_model(cfg.model, cfg.weights)
    classes, multi = lm.config.classes, lm.config.multi_label
    if multi and cfg.method not in MULTI_LABEL_METHODS:  # before the model runs
        estimate_multi_label(cfg.method, np.zeros((0, len(classes))), None, cfg.t)
    if cfg.source:
        check_label_kind(open_manifest(cfg.source), multi, "--source")
    if multi and cfg.calibration:
        raise UserError(
            "--calibration",
            "is used by bbse and em-bcts, which a multi-label (sigmoid) model does not have",
            "drop --calibration (mean and em need none)",
        )
    check = cfg.shift_check and bool(cfg.calibration) and not multi
    what = "features+logits" if check else "logits"  # the embeddings come from the same pass
    rows, target, bad = run_model(lm, tm, d, what, cfg.batch_size, cfg.workers, not cfg.quiet)
    nf = lm.config.num_features
    target_features, target = (target[:, :nf], target[:, nf:]) if check else (None, target)
    if d.main and len(rows) == 0:
        raise UserError(
            cfg.target, f"has no readable image ({bad.summary()})", "check it with `datl manifest validate`"
        )
    if d.main:
        bad.report(str(cfg.target))
    out = Logits(classes, target, class_prior=lm.config.class_prior, multi_label=multi, target_features=target_features)
    parts = {"target": (tm.read(["id"]).column("id").take(pa.array(rows)).to_pylist(), target, [None] * len(rows))}
    if cfg.calibration:
        cm = open_manifest(cfg.calibration)
        check_label_kind(cm, multi, "--calibration")
        cm.require_classes(classes, "the model", MODEL_CLASSES)
        crow, out.calibration, cbad = run_model(lm, cm, d, what, cfg.batch_size, cfg.workers, not cfg.quiet)
        if check:
            out.calibration_features, out.calibration = out.calibration[:, :nf], out.calibration[:, nf:]
        if d.main:
            cbad.report(str(cfg.calibration))
        t = cm.read(["id", "label"])
        out.calibration_labels = t.column("label").to_numpy(zero_copy_only=False)[crow]
        parts["calibration"] = (
            t.column("id").take(pa.array(crow)).to_pylist(),
            out.calibration,
            out.calibration_labels.tolist(),
        )
    if cfg.save_predictions and d.main:
        write_predictions(
            cfg.save_predictions,
            classes,
            parts,
            {"model": cfg.model, "class_prior": lm.config.class_prior, "multi_label": multi},
        )
    return out


def source_prior(cfg: EstimateConfig, logits: Logits) -> np.ndarray | None:
    """P_s(y): the checkpoint's training prior (the prior its posteriors carry), unless it has
    none or --source-prior source; then --source's label frequencies. Says so when the two differ."""
    checkpoint = np.asarray(logits.class_prior) if logits.class_prior else None
    if not cfg.source:
        return checkpoint
    sm = open_manifest(cfg.source)
    check_label_kind(sm, logits.multi_label, "--source")
    sm.require_classes(logits.classes, "the model", MODEL_CLASSES, multi=logits.multi_label)
    counts, n_unlabeled = sm.label_counts()
    if not counts.sum():
        raise UserError(cfg.source, "has no labeled rows to count P_s(y) from", "pass the labeled source manifest")
    # multi-label: each label's share of the labeled images (per-label binary priors), as the checkpoint records
    counted = counts / (sm.num_rows - n_unlabeled) if logits.multi_label else counts / counts.sum()
    use_source = checkpoint is None or cfg.source_prior == "source"
    if checkpoint is not None and (gap := float(np.abs(counted - checkpoint).sum())) > 1e-3:
        used, other = (
            ("--source's label frequencies", "the checkpoint's training prior")
            if use_source
            else ("the checkpoint's training prior", "--source's label frequencies")
        )
        logger.warning(
            f"note: {cfg.source}'s label frequencies differ from the checkpoint's training prior "
            f"(L1 {gap:.3f}); using {used}, not {other} (--source-prior)"
        )
    return counted if use_source else checkpoint


BOOTSTRAP_BUDGET = 4e9  # element operations the default bootstrap may spend (seconds on a CPU core)


def replicates(asked: int | None, method: str, n: int, k: int) -> int:
    """--bootstrap: as asked, or by default 100 replicates, fewer (at least 20) when n x k x the
    method's passes would pass BOOTSTRAP_BUDGET (EM-type methods take about 30 passes a
    replicate). Deterministic: a rule of the sizes, so the same inputs give the same intervals."""
    if asked is not None:
        return asked
    passes = 1 if method in ("mean", "bbse", "pacc") else 30
    return int(min(100, max(20, BOOTSTRAP_BUDGET // max(n * k * passes, 1))))


def run_shift_check(logits: Logits, p: np.ndarray, seed: int) -> dict:
    """The label-shift check (shift_check.py) of this estimate: one line always, a warning when
    the assumption fails as far as the model can see."""
    from .shift_check import check_label_shift, warning_line

    labels = logits.calibration_labels.astype(np.int64)
    p_cal = np.bincount(labels, minlength=len(p)) / len(labels)
    w = np.divide(p, p_cal, out=np.zeros_like(p), where=p_cal > 0)
    chk = check_label_shift(
        logits.target_features, logits.calibration_features, labels, w, logits.target.argmax(1), logits.classes, seed
    )
    logger.info(
        f"label-shift check: a domain classifier on the model's embeddings tells the target from the "
        f"calibration split reweighted by w(y) at ROC AUC {chk.auc:.3f} [{chk.auc_low:.3f}, {chk.auc_high:.3f}] "
        f"(0.5: not at all; {chk.n_target:,} target, {chk.n_source:,} source images)"
    )
    if chk.fails:
        logger.warning(warning_line(chk))
    return chk.to_json()


def write_prior(cfg: EstimateConfig, logits: Logits) -> None:
    classes = logits.classes
    for name, z in (("target", logits.target), ("calibration", logits.calibration)):
        if z is not None and len(z) and not np.isfinite(z).all():
            n = int((~np.isfinite(z).all(axis=1)).sum())
            raise RunFailed(
                cfg.model,
                f"gives non-finite logits for {n:,} {name} image(s) (a diverged model?)",
                "retrain the model (e.g. a lower --lr), or pass another",
            )
    p_s = source_prior(cfg, logits)
    method, t, chosen = cfg.method, cfg.t, {}
    if method == "auto" and not logits.multi_label:
        if logits.calibration is None or not len(logits.calibration):
            raise UserError("--method auto", "needs held-out labeled source images", "pass --calibration")
        method, scores = choose_method(logits.calibration, logits.calibration_labels, p_s, cfg.seed)
        t = cfg.temperature if cfg.temperature is not None else default_temperature(method)
        chosen = {"auto_choice": method, "auto_scores": scores, "auto_shifts": SHIFTS}
        shown = ", ".join(f"{m} {v:.3f}" for m, v in sorted(scores.items(), key=lambda kv: kv[1]))
        logger.info(
            f"--method auto: mean L1 on {SHIFTS} simulated shifts of the calibration split: {shown}; using {method}"
        )
    if logits.multi_label:
        p, facts = estimate_multi_label(method, logits.target, p_s, t)
    else:
        p, facts = estimate(method, logits.target, p_s, t, logits.calibration, logits.calibration_labels)
    facts = {**chosen, **facts}
    if logits.target_features is not None and logits.calibration_features is not None and len(logits.calibration):
        facts["label_shift_check"] = run_shift_check(logits, p, cfg.seed)
    if not (np.isfinite(p).all() and (p >= 0).all() and p.sum() > 0):
        raise RunFailed(
            cfg.model,
            f"{method} gave a prior that is not a distribution (non-finite, negative or all zero)",
            "try --method mean, or check the model and the calibration split",
        )
    cols = {
        "label": pa.array(np.arange(len(classes), dtype=np.int32)),
        "class_name": pa.array(classes, pa.string()),
        "p_target": pa.array(p, pa.float64()),
    }
    n_boot = replicates(cfg.bootstrap, method, *logits.target.shape)
    if n_boot:
        if logits.multi_label:
            fn = multi_label_replicate_fn(method, logits.target, p_s, t)
        else:
            fn = replicate_fn(method, logits.target, p_s, t, logits.calibration, logits.calibration_labels, p, facts)
        low, high = interval(bootstrap(fn, len(logits.target), n_boot, cfg.seed))
        cols["p_low"], cols["p_high"] = pa.array(np.minimum(low, p), pa.float64()), pa.array(np.maximum(high, p))
    table = pa.table(cols)
    params = {
        "method": method,
        "method_asked": cfg.method,
        "temperature": t,
        "temperature_default": cfg.temperature is None,
        "model": cfg.model,
        "n_target": len(logits.target),
        "multi_label": logits.multi_label,
        "bootstrap": n_boot,
        "bootstrap_seed": cfg.seed,
        **facts,
    }
    write_table(
        cfg.out,
        table,
        ManifestMeta(
            classes=classes,
            stage="estimate",
            params=params,
            inputs=input_hashes(
                target=cfg.target, calibration=cfg.calibration, source=cfg.source, predictions=cfg.predictions
            ),
        ),
    )
    what = f" (95% interval over {n_boot} bootstrap replicates of the target)" if n_boot else ""
    logger.info(f"wrote {cfg.out}: P_t(y) over {len(classes):,} source classes by {method} (T={t:g}){what}; top:")
    for i in np.argsort(-p)[:10]:
        band = f"  [{table.column('p_low')[i].as_py():.4f}, {table.column('p_high')[i].as_py():.4f}]" if n_boot else ""
        logger.info(f"  {classes[i]:<24} {p[i]:.4f}{band}")
    if "em_iterations" in facts:
        if facts["em_converged"]:
            logger.info(f"EM converged after {facts['em_iterations']} iterations")
        else:
            logger.warning(
                f"warning: EM stopped at its cap of {facts['em_iterations']} iterations without converging "
                f"(last change {facts['em_last_change']:.2e} in L1); the estimate may be off"
            )
