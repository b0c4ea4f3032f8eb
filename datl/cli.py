"""`datl`: the batch runner, manifest tools and the bundled demo data."""

from __future__ import annotations

from pathlib import Path

import click

from datl.commands import demo_data, manifest
from datl.core.cli import CONTEXT, run_cli
from datl.core.options import DEVICES, Number


@click.group(context_settings=CONTEXT)
@click.version_option(package_name="datl")
def cli() -> None:
    """datl: curate a target-matched pretraining set out of a large labeled source
    (Ngiam et al. 2018), then pretrain and fine-tune on it.

    The stages are their own commands (`curate`, `pretrain`, `finetune`); `datl`
    runs them all from a pipeline file and handles manifests.
    """


@cli.command("run")
@click.argument("pipeline", required=False, default="pipeline.yaml")
@click.option("--force", is_flag=True, help="Rerun every stage, up to date or not.")
@click.option(
    "--from",
    "start",
    multiple=True,
    help="Rerun this stage and everything downstream of it (repeatable): a stage name, a per-seed "
    "stage without .sN, or pretrain.ARM / finetune.ARM.",
)
@click.option("--out", help="Output folder instead of the file's out:.")
@click.option("--device", type=click.Choice(DEVICES), help="Instead of the file's device:.")
@click.option(
    "--launcher",
    type=click.Choice(["none", "torchrun"]),
    help="torchrun: run every torch stage distributed (instead of the file's launcher:).",
)
@click.option("--nproc-per-node", type=int, default=1, show_default=True, help="Processes per node with torchrun.")
@click.option("--nnodes", type=int, help="Nodes, each running this same command [default: SLURM_NNODES, or 1].")
@click.option("--node-rank", type=int, help="This node's rank, 0..nnodes-1 [default: SLURM_NODEID, or 0].")
@click.option(
    "--rdzv-endpoint",
    help="Node 0's HOST:PORT for torchrun's rendezvous [default under SLURM: the job's first node, port 29500].",
)
@click.option("--dry-run", is_flag=True, help="List the stages and whether each is up to date; run nothing.")
@click.option("--quiet", "-q", is_flag=True)
def run(
    pipeline: str,
    force: bool,
    start: tuple[str, ...],
    out: str | None,
    device: str | None,
    launcher: str | None,
    nproc_per_node: int,
    nnodes: int | None,
    node_rank: int | None,
    rdzv_endpoint: str | None,
    dry_run: bool,
    quiet: bool,
) -> None:
    """Run every stage of PIPELINE (default: pipeline.yaml) that is not up to date.

    Each stage runs its own command (pretrain, curate ..., finetune) with its log in
    OUT/logs/; a stage whose inputs, parameters and code are unchanged is skipped,
    a killed run resumes where it stopped. Prints the comparison table at the end.
    On several nodes, run the same command on each (--nnodes, --node-rank,
    --rdzv-endpoint, or SLURM's environment): node 0 runs the pipeline, the others
    join its torch stages.
    """
    from . import pipeline as pl
    from . import runner
    from .launch import from_environment
    from .process import StageFailed

    pipe = pl.load(pipeline, out)
    pipe.device = device or pipe.device
    if launcher == "torchrun" or (launcher is None and pipe.launcher is not None):
        nproc = nproc_per_node if launcher == "torchrun" else pipe.launcher.nproc
        pipe.launcher = from_environment(nproc, nnodes, node_rank, rdzv_endpoint)
    elif launcher == "none":
        pipe.launcher = None
    if dry_run:
        for name, kind, fresh in runner.plan(pipe):
            click.echo(f"{name:32s} {kind:10s} {'up to date' if fresh else 'would run'}")
        return
    try:
        runner.run(pipe, force=force, start=list(start), quiet=quiet)
    except StageFailed as e:
        click.echo(f"error: {e}", err=True)
        raise SystemExit(2 if e.rc == 2 else 1) from None
    if pipe.launcher is None or pipe.launcher.node_rank == 0:
        results = print_results(pipe)
        from .report import build

        click.echo(f"report: {build(pipe.out, pipeline=str(pipe.path), device=pipe.device)}")
        if results is not None and results.get("baseline"):
            from .compare import verdict_line

            click.echo(verdict_line(results))  # the last line: what this run's intervals establish


@cli.command("report")
@click.argument("out", type=click.Path(path_type=Path))
@click.option("--pipeline", help="The pipeline file, for the command line the page shows to reproduce the run.")
@click.option(
    "--evidence-classes",
    type=Number(int, "[0, inf)"),
    default=100,
    show_default=True,
    help="Classes of highest weight that get thumbnails (source images, target images assigned to them).",
)
@click.option(
    "--per-class", type=Number(int, "[1, 64]"), default=8, show_default=True, help="Thumbnails per class and side."
)
@click.option(
    "--pairs",
    type=Number(int, "[0, inf)"),
    default=100,
    show_default=True,
    help="Duplicate pairs shown per dedup stage, borderline ones first.",
)
@click.option(
    "--device",
    type=click.Choice(DEVICES),
    default="auto",
    show_default=True,
    help="Where the source classifier scores the target images for the evidence strips.",
)
def report(out: Path, pipeline: str | None, evidence_classes: int, per_class: int, pairs: int, device: str) -> None:
    """Write OUT/report.html: the curation of a `datl run` output folder on one page.

    Every source class with its weight (sortable, filterable), the images behind the
    weight of the top classes, the estimators side by side, the duplicate pairs
    (borderline first), the results with their intervals and the stage timings.
    Self-contained: open it offline; thumbnails lie in OUT/report_files/.
    """
    from .report import build

    click.echo(f"wrote {build(out, pipeline, evidence_classes, per_class, pairs, device)}")


def print_results(pipe) -> dict | None:
    """The comparison table, if the pipeline has a compare stage that wrote one; its results."""
    import json

    from .compare import table
    from .pipeline import COMPARE

    results = pipe.out / "results.json"
    if COMPARE in pipe.stages and results.exists():
        data = json.loads(results.read_text())
        click.echo("")
        click.echo(table(data, verdict=False))
        click.echo(f"\nresults: {results}  report: {pipe.out / 'report.md'}")
        return data
    return None


cli.add_command(manifest)
cli.add_command(demo_data)


def main() -> None:
    run_cli(cli, "datl")
