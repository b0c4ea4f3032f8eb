"""The manifests' own commands, mounted under `datl`: `datl manifest build|show|validate`
and `datl demo-data`."""

from __future__ import annotations

from pathlib import Path

import click

from datl.core.cli import CONTEXT
from datl.core.errors import UserError
from datl.core.files import refuse_clobber
from datl.core.options import Number
from datl.manifests.io import Manifest
from datl.manifests.show import describe, family_line, summary_table


@click.group(context_settings=CONTEXT)
def manifest() -> None:
    """Build, inspect and validate Parquet manifests (one row per image)."""


@manifest.command("build")
@click.argument("folder", type=click.Path(path_type=Path))
@click.option("--out", "-o", required=True, type=click.Path(path_type=Path), help="Manifest to write (.parquet).")
@click.option(
    "--image-column",
    default="image",
    show_default=True,
    help="Image Parquet files: the column holding the encoded image ({bytes, path} struct or binary).",
)
@click.option(
    "--labels",
    type=click.Path(path_type=Path),
    metavar="CSV",
    help="Loose images, multi-label: a CSV of image path (relative to FOLDER), then class names "
    "separated by | (e.g. a/x.jpg,cat|dog). Gives a 'labels' list column.",
)
def manifest_build(folder: Path, out: Path, image_column: str, labels: Path | None) -> None:
    """Build a manifest from FOLDER: loose images, *.tar shards, or image *.parquet files.

    \b
    Loose images: class sub-folders (FOLDER/cat/*.jpg) give a labeled manifest, classes
      sorted; a flat folder an unlabeled one; --labels CSV a multi-label one.
      Id: the path relative to FOLDER.
    Tar shards (WebDataset): key.jpg/.png/... per sample, key.cls the class index,
      classes.txt beside the shards the class names. Multi-label: key.cls with several
      indexes, or key.json with a "labels" list (indexes or names). Id: shard/key.
    Image Parquet (HuggingFace layout): one image per row in --image-column, an
      integer 'label' column (or a list-of-int 'labels' column: multi-label), ClassLabel
      names from the file's metadata. Id: file/row.
    Paths are stored relative to the manifest's folder.
    """
    from datl.manifests.build import build_manifest

    if labels is not None:
        refuse_clobber({"--out": out}, {"--labels": labels})
    rows, classes = build_manifest(folder, out, image_column, labels)
    kind = f"{len(classes)} classes" if classes else "unlabeled"
    if labels is not None:
        kind += ", multi-label"
    click.echo(f"wrote {out}: {rows:,} images, {kind}")


@manifest.command("show")
@click.argument("path", type=click.Path(path_type=Path))
@click.option("--top", default=40, show_default=True, help="Show the largest N classes; 0 for all.")
def manifest_show(path: Path, top: int) -> None:
    """Rows, columns, metadata and per-class counts (with a histogram) of a manifest."""
    click.echo(describe(Manifest(path), top=top or None))


@manifest.command("validate")
@click.argument("path", type=click.Path(path_type=Path))
@click.option(
    "--files/--no-files", default=True, show_default=True, help="Also check that every image file exists and decodes."
)
@click.option(
    "--list",
    "listing",
    type=click.Path(path_type=Path),
    metavar="CSV",
    help="Write every unreadable or warned image to CSV (columns id, kind, problem), e.g. to drop "
    "those rows; the screen shows the first 20 of each kind.",
)
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
def manifest_validate(path: Path, files: bool, listing: Path | None, quiet: bool) -> None:
    """Check the schema, labels in range, unique ids and (by default) every image file."""
    from datl.manifests.validate import validate_manifest

    if listing is not None:
        refuse_clobber({"--list": listing}, {"PATH": path})
    report = validate_manifest(path, check_files=files, progress=not quiet, listing=listing if files else None)
    more = f"; all of them in {listing}" if listing is not None and files else "; --list CSV writes all of them"
    for line in report.warnings.examples:
        click.echo(f"  decoded with a warning: {line}")
    if report.warnings.count:
        click.echo(
            f"warning: {report.warnings.count:,} image(s) decode with a warning from PIL; they are used as "
            f"decoded (look at them if the warning says the file is damaged){more}",
            err=True,
        )
    if report.unreadable.count:
        for line in report.unreadable.examples:
            click.echo(f"  unreadable: {line}")
        raise UserError(
            path,
            f"{report.unreadable.count:,} of {report.files_checked:,} image file(s) are missing or "
            f"unreadable (first: {report.unreadable.first})",
            f"restore those files or drop their rows (every stage skips and counts them){more}",
        )
    what = f"{report.files_checked:,} images checked" if files else "image files not checked"
    classes = f", {report.classes} classes" if report.classes else ", unlabeled"
    if report.multi_label:
        classes += f", multi-label ({report.occurrences:,} label occurrences)"
    click.echo(f"ok: {path}: {report.rows:,} rows{classes}, ids unique, {what}")
    if report.unlabeled:
        click.echo(
            f"note: {report.unlabeled:,} row(s) have no label{' (an empty label set)' if report.multi_label else ''}: "
            "fine for a target or a source to curate, "
            "refused as a pretrain/finetune training, validation or test manifest"
        )


@click.command("demo-data", context_settings=CONTEXT)
@click.option(
    "--out",
    "-o",
    default="demo/data",
    show_default=True,
    type=click.Path(path_type=Path),
    help="Folder for the images and the four manifests.",
)
@click.option(
    "--seed",
    default=0,
    show_default=True,
    type=Number(int, "[0, inf)"),
    help="Seed for glyph augmentation and the target split.",
)
@click.option(
    "--fraction",
    default=1.0,
    show_default=True,
    type=Number(float, "(0, 1]"),
    help="Keep this fraction of every class (for quick trials and tests).",
)
@click.option("--force", is_flag=True, help="Rebuild even if OUT already holds this demo.")
@click.option(
    "--shards",
    is_flag=True,
    help="Also write the source as WebDataset tar shards (OUT/shards/) and their manifest OUT/source_shards.parquet.",
)
@click.option(
    "--multi-label",
    is_flag=True,
    help="A multi-label source: canvases of 2-3 of the pool's images overlaid, labelled with their classes.",
)
@click.option("--quiet", "-q", is_flag=True, help="No progress bars.")
def demo_data(out: Path, seed: int, fraction: float, force: bool, shards: bool, multi_label: bool, quiet: bool) -> None:
    """Build the bundled, offline demo: a labeled source pool and a target domain.

    Source (82 classes): real MNIST digits, Animal-MNIST silhouettes and glyphs
    rendered from matplotlib's fonts. Target: scikit-learn's real handwritten
    digits. Writes under OUT: source.parquet (the pool to draw from), split into
    source_train.parquet and source_calibration.parquet (held out, for em-bcts);
    target_train, target_val and target_test (labeled, disjoint), target_unlabeled
    (every target image but the test images) and target_all (every one, for
    dedup). A no-op when OUT already holds the demo built with the same seed and
    fraction.
    """
    from datl.demo import MANIFESTS, build_demo

    built = build_demo(out, seed=seed, fraction=fraction, progress=not quiet, force=force, multi_label=multi_label)
    state = "built" if built else "up to date"
    if shards and (built or not (out / "source_shards.parquet").exists()):
        from datl.manifests.build import build_manifest
        from datl.manifests.export import write_tar_shards

        n = len(write_tar_shards(Manifest(out / "source.parquet"), out / "shards", prefix="source"))
        rows, _ = build_manifest(out / "shards", out / "source_shards.parquet")
        click.echo(f"source as {n} tar shard(s) in {out / 'shards'}: {out / 'source_shards.parquet'} ({rows:,} rows)")
    click.echo(f"demo data {state} in {out} (seed {seed}, fraction {fraction})")
    paths = [out / f"{n}.parquet" for n in MANIFESTS]
    click.echo(summary_table(paths))
    click.echo(f"source families: {family_line(Manifest(paths[0]))}")
    if multi_label:
        counts, _, sizes = Manifest(paths[0]).label_set_counts()
        click.echo(f"multi-label source: {int(counts.sum()):,} labels on {int(sizes.sum()):,} canvases")
