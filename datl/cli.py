"""`datl`: the batch runner, manifest tools and the bundled demo data."""
from __future__ import annotations

from pathlib import Path

import click

from manifests import Manifest, UserError
from manifests.cli import run_cli

from .show import describe, family_line, summary_table

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


@click.group(context_settings=CONTEXT)
@click.version_option(package_name="datl")
def cli() -> None:
    """datl: curate a target-matched pretraining set out of a large labeled source
    (Ngiam et al. 2018), then pretrain and fine-tune on it.

    The stages are their own commands (`curate`, `pretrain`, `finetune`); `datl`
    runs them all from a pipeline file and handles manifests.
    """


@cli.group()
def manifest() -> None:
    """Build, inspect and validate Parquet manifests (one row per image)."""


@manifest.command("build")
@click.argument("folder", type=click.Path(path_type=Path))
@click.option("--out", "-o", required=True, type=click.Path(path_type=Path), help="Manifest to write (.parquet).")
def manifest_build(folder: Path, out: Path) -> None:
    """Build a manifest from FOLDER.

    Class sub-folders (FOLDER/cat/*.jpg, FOLDER/dog/*.jpg) give a labeled manifest,
    classes in sorted order; a flat folder of images gives an unlabeled one. The id
    of an image is its path relative to FOLDER; paths are stored relative to the
    manifest's folder.
    """
    from manifests.build import build_manifest

    rows, classes = build_manifest(folder, out)
    kind = f"{len(classes)} classes" if classes else "unlabeled"
    click.echo(f"wrote {out}: {rows:,} images, {kind}")


@manifest.command("show")
@click.argument("path", type=click.Path(path_type=Path))
@click.option("--top", default=40, show_default=True, help="Show the largest N classes; 0 for all.")
def manifest_show(path: Path, top: int) -> None:
    """Rows, columns, metadata and per-class counts (with a histogram) of a manifest."""
    click.echo(describe(Manifest(path), top=top or None))


@manifest.command("validate")
@click.argument("path", type=click.Path(path_type=Path))
@click.option("--files/--no-files", default=True, show_default=True,
              help="Also check that every image file exists and decodes.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
def manifest_validate(path: Path, files: bool, quiet: bool) -> None:
    """Check the schema, labels in range, unique ids and (by default) every image file."""
    from manifests import UserError
    from manifests.validate import validate_manifest

    report = validate_manifest(path, check_files=files, progress=not quiet)
    if report.bad_files:
        for line in report.bad_files[:20]:
            click.echo(f"  unreadable: {line}")
        raise UserError(path, f"{len(report.bad_files)} of {report.files_checked} image file(s) are missing or "
                              f"unreadable (first: {report.bad_files[0]})",
                        "restore those files or drop their rows")
    what = f"{report.files_checked:,} images checked" if files else "image files not checked"
    classes = f", {report.classes} classes" if report.classes else ", unlabeled"
    click.echo(f"ok: {path}: {report.rows:,} rows{classes}, ids unique, {what}")


@cli.command("demo-data")
@click.option("--out", "-o", default="demo/data", show_default=True, type=click.Path(path_type=Path),
              help="Folder for the images and the four manifests.")
@click.option("--seed", default=0, show_default=True, help="Seed for glyph augmentation and the target split.")
@click.option("--fraction", default=1.0, show_default=True,
              help="Keep this fraction of every class (for quick trials and tests).")
@click.option("--force", is_flag=True, help="Rebuild even if OUT already holds this demo.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bars.")
def demo_data(out: Path, seed: int, fraction: float, force: bool, quiet: bool) -> None:
    """Build the bundled, offline demo: a labeled source pool and a target domain.

    Source (82 classes): real MNIST digits, Animal-MNIST silhouettes and glyphs
    rendered from matplotlib's fonts. Target: scikit-learn's real handwritten
    digits. Writes source.parquet, target_unlabeled.parquet, target_train.parquet
    and target_test.parquet under OUT. A no-op when OUT already holds the demo
    built with the same seed and fraction.
    """
    from manifests.demo import MANIFESTS, build_demo

    built = build_demo(out, seed=seed, fraction=fraction, progress=not quiet, force=force)
    state = "built" if built else "up to date"
    click.echo(f"demo data {state} in {out} (seed {seed}, fraction {fraction})")
    paths = [out / f"{n}.parquet" for n in MANIFESTS]
    click.echo(summary_table(paths))
    click.echo(f"source families: {family_line(Manifest(paths[0]))}")


@cli.command("run")
@click.argument("pipeline", required=False, default="pipeline.yaml")
@click.option("--force", is_flag=True, help="Rerun every stage, up to date or not.")
@click.option("--from", "start", multiple=True,
              help="Rerun this stage and everything downstream of it (repeatable): a stage name, a per-seed "
                   "stage without .sN, or pretrain.ARM / finetune.ARM.")
@click.option("--out", help="Output folder instead of the file's out:.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), help="Instead of the file's device:.")
@click.option("--launcher", type=click.Choice(["none", "torchrun"]),
              help="torchrun: run every torch stage distributed (instead of the file's launcher:).")
@click.option("--nproc-per-node", type=int, default=1, show_default=True, help="Processes per node with torchrun.")
@click.option("--dry-run", is_flag=True, help="List the stages and whether each is up to date; run nothing.")
@click.option("--quiet", "-q", is_flag=True)
def run(pipeline: str, force: bool, start: tuple[str, ...], out: str | None, device: str | None,
        launcher: str | None, nproc_per_node: int, dry_run: bool, quiet: bool) -> None:
    """Run every stage of PIPELINE (default: pipeline.yaml) that is not up to date.

    Each stage runs its own command (pretrain, curate ..., finetune) with its log in
    OUT/logs/; a stage whose inputs, parameters and code are unchanged is skipped,
    a killed run resumes where it stopped. Prints the comparison table at the end.
    """
    from . import pipeline as pl
    from . import runner

    pipe = pl.load(pipeline, out)
    if device:
        pipe.device = device
    if launcher == "torchrun":
        if nproc_per_node < 1:
            raise UserError("--nproc-per-node", f"{nproc_per_node} is not positive", "pass 1 or more")
        pipe.launcher = ("torchrun", nproc_per_node)
    elif launcher == "none":
        pipe.launcher = None
    if dry_run:
        for name, stage in pipe.stages.items():
            key, _ = runner.stage_key(pipe, stage) if all(
                pipe.ref_path(r).exists() for r in stage.inputs.values()) else ("", None)
            fresh = bool(key) and runner.up_to_date(pipe.out / name, key, runner.outputs_of(stage))
            click.echo(f"{name:32s} {stage.kind:10s} {'up to date' if fresh else 'would run'}")
        return
    try:
        runner.run(pipe, force=force, start=list(start), quiet=quiet)
    except runner.StageFailed as e:
        click.echo(f"error: {e}", err=True)
        raise SystemExit(2 if e.rc == 2 else 1) from None
    results = pipe.out / "results.json"
    if pl.COMPARE in pipe.stages and results.exists():
        import json

        from .report import table

        click.echo("")
        click.echo(table(json.loads(results.read_text())))
        click.echo(f"\nresults: {results}  report: {pipe.out / 'report.md'}")


def main() -> None:
    run_cli(cli, "datl")
