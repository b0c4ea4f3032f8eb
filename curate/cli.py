"""`curate`: estimate P_t(y), weight the source classes, dedup against the target, sample."""
from __future__ import annotations

from pathlib import Path

import click

from manifests import ManifestMeta, UserError, file_sha256, open_manifest, write_table
from manifests.cli import run_cli

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


def _hashes(**paths) -> dict[str, str]:
    return {k: file_sha256(v) for k, v in paths.items() if v is not None and Path(v).is_file()}


@click.group(context_settings=CONTEXT)
def cli() -> None:
    """Curate a target-matched pretraining set (Ngiam et al. 2018).

    \b
    curate estimate  P_t(y) over the source classes, from a classifier run on the unlabeled target
    curate weight    w(y) = P_t(y) / P_s(y) per source class, with a plot
    curate dedup     source images that are near-duplicates of target images
    curate sample    the pretraining set, drawn by weight
    """


@cli.command()
@click.option("--model", help="Source classifier: a RUN_DIR of `pretrain`, or timm:ARCH with --weights.")
@click.option("--weights", help="Local state dict for --model timm:ARCH.")
@click.option("--target", help="Unlabeled target manifest.")
@click.option("--out", "-o", required=True, help="prior.parquet to write (label, class_name, p_target).")
@click.option("--method", type=click.Choice(["mean", "em", "bbse", "em-bcts"]), default="mean", show_default=True,
              help="mean: the paper's; em: Saerens 2002; bbse: Lipton 2018; em-bcts: Alexandari 2020.")
@click.option("--temperature", default=2.0, show_default=True,
              help="Smoothing: mean divides each image's logits by T; other methods flatten the result to P^(1/T).")
@click.option("--calibration", help="Held-out labeled source manifest (needed by bbse and em-bcts).")
@click.option("--source", help="Source manifest: P_s(y) from its label counts (default: the checkpoint's prior).")
@click.option("--save-predictions", help="Also write per-image logits here, to re-estimate without the model.")
@click.option("--predictions", help="Re-estimate from a --save-predictions file instead of running the model.")
@click.option("--batch-size", default=256, show_default=True)
@click.option("--workers", default=2, show_default=True, help="DataLoader workers.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--quiet", "-q", is_flag=True)
def estimate(model, weights, target, out, method, temperature, calibration, source, save_predictions, predictions,
             batch_size, workers, device, quiet) -> None:
    """Estimate P_t(y) over the SOURCE classes on the unlabeled target. Rank-sharded under torchrun."""
    import numpy as np
    import pyarrow as pa

    from pretrain import dist

    from . import estimate as est

    if temperature <= 0:
        raise UserError("--temperature", f"{temperature} is not positive", "pass T > 0 (1 = no smoothing)")
    if method in est.NEEDS_CALIBRATION and not (calibration or predictions):
        raise UserError(f"--method {method}", "needs held-out labeled source images",
                        "pass --calibration HELDOUT_SOURCE.parquet")
    d = dist.setup(device)
    try:
        if predictions:
            classes, parts = est.read_predictions(predictions)
            target_logits = parts["target"][0]
            cal_logits, cal_labels = parts["calibration"]
            prior = None
        else:
            if not model or not target:
                raise UserError("curate estimate", "needs --model and --target (or --predictions FILE)",
                                "pass the source classifier and the unlabeled target manifest")
            from pretrain.models import load_model

            from .infer import run_model

            tm = open_manifest(target)
            if tm.num_rows == 0:
                raise UserError(target, "is empty", "pass a target manifest with images")
            lm = load_model(model, weights)
            classes, prior = lm.config.classes, lm.config.class_prior
            rows, target_logits, bad = run_model(lm, tm, d, "logits", batch_size, workers, not quiet)
            if d.main and len(rows) == 0:
                raise UserError(target, f"has no readable image ({bad.summary()})",
                                "check it with `datl manifest validate`")
            cal_logits = cal_labels = None
            parts = {"target": (tm.read(["id"]).column("id").take(pa.array(rows)).to_pylist(), target_logits,
                                [None] * len(rows))}
            if calibration:
                cm = open_manifest(calibration)
                from .weight import check_same_classes

                check_same_classes(classes, cm.require_labels(), "the model", calibration)
                crow, cal_logits, _ = run_model(lm, cm, d, "logits", batch_size, workers, not quiet)
                t = cm.read(["id", "label"])
                cal_labels = t.column("label").to_numpy(zero_copy_only=False)[crow]
                parts["calibration"] = (t.column("id").take(pa.array(crow)).to_pylist(), cal_logits,
                                        cal_labels.tolist())
            if save_predictions and d.main:
                est.write_predictions(save_predictions, classes, parts, {"model": model})
        if not d.main:
            return
        p_source = np.asarray(prior) if prior else None
        if source:
            sm = open_manifest(source)
            from .weight import check_same_classes

            check_same_classes(classes, sm.require_labels(), "the model", source)
            counts, _ = sm.label_counts()
            p_source = counts / counts.sum()
        p, facts = est.estimate(method, target_logits, p_source, temperature, cal_logits, cal_labels)
        table = pa.table({"label": pa.array(np.arange(len(classes), dtype=np.int32)),
                          "class_name": pa.array(classes, pa.string()), "p_target": pa.array(p, pa.float64())})
        params = {"method": method, "temperature": temperature, "model": model, "n_target": len(target_logits),
                  **facts}
        write_table(out, table, ManifestMeta(classes=classes, stage="estimate", params=params,
                                             inputs=_hashes(target=target, calibration=calibration, source=source,
                                                            predictions=predictions)))
        top = np.argsort(-p)[:10]
        click.echo(f"wrote {out}: P_t(y) over {len(classes):,} source classes by {method} (T={temperature}); top:")
        for i in top:
            click.echo(f"  {classes[i]:<24} {p[i]:.4f}")
    finally:
        dist.cleanup(d)


@cli.command()
@click.option("--source", required=True, help="Labeled source manifest.")
@click.option("--prior", required=True, help="prior.parquet from `curate estimate`.")
@click.option("--out", "-o", required=True, help="weights.parquet to write.")
@click.option("--plot", help="PNG of the weights to write (default: next to --out).")
@click.option("--no-plot", is_flag=True, help="Skip the plot.")
@click.option("--exclude", help="duplicates.parquet from `curate dedup`: count excluded images per class.")
def weight(source, prior, out, plot, no_plot, exclude) -> None:
    """Importance weight w(y) = P_t(y) / P_s(y) per source class, and a plot to inspect.

    Columns: label, class_name, n_source, p_source, p_target, weight (+ n_excluded
    with --exclude). Classes with target mass but no source image are dropped and
    P_t renormalised over the rest.
    """
    from .weight import compute_weights, plot_weights, read_excluded_ids, read_prior

    sm = open_manifest(source)
    classes, p_target = read_prior(prior)
    result = compute_weights(sm, classes, p_target, read_excluded_ids(exclude))
    meta = ManifestMeta(classes=sm.classes, stage="weight", params={"exclude": exclude},
                        inputs=_hashes(source=source, prior=prior, exclude=exclude))
    write_table(out, result.table, meta)
    if result.dropped:
        shown = ", ".join(result.dropped[:5]) + (" ..." if len(result.dropped) > 5 else "")
        click.echo(f"warning: {len(result.dropped)} class(es) have target mass but no source image; "
                   f"dropped and P_t renormalised: {shown}", err=True)
    t = result.table
    msg = f"wrote {out}: {t.num_rows:,} classes"
    if "n_excluded" in t.column_names:
        msg += f", {sum(t.column('n_excluded').to_pylist()):,} source images excluded as duplicates"
    click.echo(msg)
    if not no_plot:
        plot = plot or str(Path(out).with_suffix(".png"))
        plot_weights(t, plot, title=f"{Path(source).name}: importance weights from {Path(prior).name}")
        click.echo(f"plot: {plot}")


@cli.command()
@click.option("--source", required=True, help="Labeled source manifest.")
@click.option("--weights", "weights_path", help="weights.parquet from `curate weight` (or --uniform).")
@click.option("--uniform", is_flag=True,
              help="Every source image equally likely (the baseline): class shares as in the source.")
@click.option("--size", required=True, help="Number of draws N, or 'all' (with --no-replacement: every eligible row).")
@click.option("--out", "-o", required=True, help="Sample manifest to write.")
@click.option("--replacement/--no-replacement", default=True, show_default=True,
              help="With: class counts ~ Multinomial(N, P_t), the paper's. Without: N distinct rows ('elastic').")
@click.option("--exclude", help="duplicates.parquet from `curate dedup`: never draw these ids.")
@click.option("--seed", default=0, show_default=True)
def sample(source, weights_path, uniform, size, out, replacement, exclude, seed) -> None:
    """Sample the pretraining set by weight into a manifest (source columns + weight + draw).

    Relative image paths are rewritten relative to OUT's folder, so the sample can live
    anywhere."""
    import numpy as np

    from manifests import write_manifest

    from .sample import run_sample, uniform_weights
    from .weight import check_same_classes, read_excluded_ids, read_weights

    if (weights_path is None) == (not uniform):
        raise UserError("--weights", "pass either --weights or --uniform" if not uniform
                        else "--weights and --uniform both given", "pass exactly one of them")
    sm = open_manifest(source)
    if uniform:
        classes, wt = sm.require_labels(), uniform_weights(sm)
    else:
        classes, wt = read_weights(weights_path)
        check_same_classes(sm.require_labels(), classes, source, weights_path)
    excluded = read_excluded_ids(exclude)
    if size == "all":
        if replacement:
            raise UserError("--size", "'all' needs --no-replacement", "add --no-replacement, or pass a number")
        n = sm.num_rows
    else:
        try:
            n = int(size)
        except ValueError:
            raise UserError("--size", f"'{size}' is not a number", "pass the number of draws, or 'all'") from None
    out_folder = str(Path(out).resolve().parent)
    plan, batches, schema = run_sample(sm, classes, wt, n, replacement, excluded, seed, out_folder,
                                       clip=size == "all")
    meta = ManifestMeta(classes=classes, stage="sample",
                        params={"size": size, "replacement": replacement, "seed": seed, "exclude": exclude,
                                "uniform": uniform},
                        inputs=_hashes(source=source, weights=weights_path, exclude=exclude))
    write_manifest(out, batches, meta, schema=schema)
    n_unique = int((np.diff(plan.rows) != 0).sum()) + 1 if len(plan.rows) else 0  # rows are sorted
    click.echo(f"wrote {out}: {len(plan.rows):,} draws, {n_unique:,} distinct, from {plan.eligible:,} eligible source images"
               + (f" ({plan.excluded:,} excluded)" if exclude else ""))


@cli.command()
@click.option("--source", required=True, help="Source manifest.")
@click.option("--target", required=True, help="Target manifest (every image of the target domain).")
@click.option("--model", required=True, help="Feature extractor: a RUN_DIR, or timm:ARCH with --weights.")
@click.option("--weights", help="Local state dict for --model timm:ARCH.")
@click.option("--out", "-o", required=True,
              help="duplicates.parquet to write (id, target_id, similarity, match, exact).")
@click.option("--threshold", type=float, default=None,
              help="Model-feature cosine similarity at or above which a source image is a near copy "
                   "[default: 0.96].")
@click.option("--pixel-threshold", type=float, default=None,
              help="Pixel-descriptor cosine similarity at or above which a source image is a near copy "
                   "[default: 0.96]; 1 keeps only pixel-perfect copies.")
@click.option("--index", "index_kind", type=click.Choice(["auto", "flat", "ivf"]), default="auto", show_default=True,
              help="FAISS index over the target: flat (exact) below 50k vectors with auto, ivf above.")
@click.option("--cache", "cache_dir", help="Folder for cached embeddings [default: OUT's folder/embeddings].")
@click.option("--calibrate", is_flag=True,
              help="Also plant edited copies of target images and print recall / false positives per threshold.")
@click.option("--plant", default=500, show_default=True, help="How many copies --calibrate plants.")
@click.option("--image-size", type=int, help="Feature extractor input size (timm: models; default 224).")
@click.option("--batch-size", default=256, show_default=True)
@click.option("--workers", default=2, show_default=True)
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--quiet", "-q", is_flag=True)
def dedup(source, target, model, weights, out, threshold, pixel_threshold, index_kind, cache_dir, calibrate, plant,
          image_size, batch_size, workers, device, quiet) -> None:
    """Find source images that are copies or near copies of target images.

    Three checks: byte-identical files (content hash, whatever the model); pixel
    descriptors (a 16x16 thumbnail correlation against 76 crop views of each target
    image); and the model's pooled features. The target is indexed with FAISS, the
    source streamed through it. Everything is cached, so new thresholds are instant.
    """
    import pyarrow as pa

    from pretrain import dist
    from pretrain.models import load_model

    from . import dedup as dd

    threshold = dd.DEFAULT_THRESHOLD if threshold is None else threshold
    pixel_threshold = dd.DEFAULT_PIXEL_THRESHOLD if pixel_threshold is None else pixel_threshold
    for name, t in (("--threshold", threshold), ("--pixel-threshold", pixel_threshold)):
        if not 0.0 < t <= 1.0:
            raise UserError(name, f"{t} is outside (0, 1]", "pass a cosine similarity such as 0.96")
    sm, tm = open_manifest(source), open_manifest(target)
    lm = load_model(model, weights, image_size=image_size)
    fp = dd.model_fingerprint(model, weights)
    cache = Path(cache_dir) if cache_dir else Path(out).resolve().parent / "embeddings"
    d = dist.setup(device)
    try:
        temb = dd.embed(lm, tm, d, cache, fp, batch_size, workers, not quiet)
        semb = dd.embed(lm, sm, d, cache, fp, batch_size, workers, not quiet)
        pm = planted_emb = None
        if calibrate:
            import tempfile

            tmpdir = Path(tempfile.mkdtemp(prefix="datl-plant-"))
            pm = open_manifest(dd.plant_copies(tm, tmpdir, plant))
            planted_emb = dd.embed(lm, pm, d, None, fp, batch_size, workers, not quiet)
        if not d.main:
            return
        if len(temb.rows) == 0:
            raise UserError(target, "has no readable image", "check it with `datl manifest validate`")
        if temb.rebuilt or semb.rebuilt:
            click.echo("note: cached embeddings from another model were rebuilt, not mixed", err=True)
        tc = dd.content(tm, cache, True, not quiet)
        sc = dd.content(sm, cache, False, not quiet)
        pindex, pdesc = dd.pixel_index(tc, index_kind)
        findex, fdesc = dd.build_index(temb.vecs, index_kind)
        exact = dd.exact_matches(sc, tc)
        pixel = dd.pixel_best(pindex, sc)
        feature = dd.feature_best(findex, semb, temb, sm.num_rows)
        dup = dd.find_duplicates(exact, pixel, feature, pixel_threshold, threshold)
        sid = pa.concat_tables(sm.iter_take(dup.rows, ["id"]), promote_options="none") if len(dup.rows) else None
        tid = tm.read(["id"]).column("id")  # the target is the small side
        table = pa.table({"id": sid.column("id") if sid is not None else pa.array([], pa.string()),
                          "target_id": tid.take(pa.array(dup.target_rows)),
                          "similarity": pa.array(dup.similarity, pa.float32()),
                          "match": pa.array(dup.match.tolist(), pa.string()),
                          "exact": pa.array(dup.match == "exact")})
        write_table(out, table, ManifestMeta(stage="dedup", params={
            "threshold": threshold, "pixel_threshold": pixel_threshold, "model": model,
            "index": {"pixel": pdesc, "feature": fdesc}}, inputs=_hashes(source=source, target=target)))
        counts = {k: int((dup.match == k).sum()) for k in ("exact", "pixel", "feature")}
        click.echo(f"wrote {out}: {len(dup.rows):,} of {sm.num_rows:,} source images duplicate a target image "
                   f"({counts['exact']:,} byte-identical, {counts['pixel']:,} pixel >= {pixel_threshold}, "
                   f"{counts['feature']:,} feature >= {threshold}); index: pixel {pdesc}; feature {fdesc}")
        if pm is not None:
            _report_calibration(dd, pm, planted_emb, exact, pixel, feature, pindex, findex, temb,
                                pixel_threshold, threshold, out, quiet)
    finally:
        dist.cleanup(d)


def _report_calibration(dd, pm, planted_emb, exact, pixel, feature, pindex, findex, temb,
                        pixel_threshold, threshold, out, quiet) -> None:
    """Recall on the planted copies and false positives on ordinary source images, per check."""
    pc = dd.content(pm, None, False, not quiet)
    pp, _ = dd.pixel_best(pindex, pc)
    pf, _ = dd.feature_best(findex, planted_emb, temb, pm.num_rows)
    ordinary = ~exact[0]
    op, of = pixel[0][ordinary], feature[0][ordinary]
    click.echo(f"calibration: {len(pp):,} planted edited copies ({', '.join(dd.AUGMENTATIONS)}) "
               f"vs {int(ordinary.sum()):,} ordinary source images")
    click.echo("  threshold   pixel: recall  false-pos   feature: recall  false-pos")
    for (t, pr, pfp), (_, fr, ffp) in zip(dd.calibration_table(pp, op), dd.calibration_table(pf, of)):
        click.echo(f"  {t:9.2f}  {pr:14.4f}  {pfp:9.4%}  {fr:16.4f}  {ffp:9.4%}")
    rec, fpr = dd.rates((pp >= pixel_threshold) | (pf >= threshold), (op >= pixel_threshold) | (of >= threshold))
    click.echo(f"  combined at --pixel-threshold {pixel_threshold} and --threshold {threshold}: "
               f"recall {rec:.4f}, false-positive rate {fpr:.4%}")
    png = Path(out).with_suffix(".calibration.png")
    dd.plot_calibration({"pixel": (pp, op, pixel_threshold), "feature": (pf, of, threshold)}, png)
    click.echo(f"histogram: {png}")


def main() -> None:
    run_cli(cli, "curate")
