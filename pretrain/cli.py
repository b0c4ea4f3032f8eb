"""`pretrain`: train any timm architecture on a labeled manifest."""
from __future__ import annotations

import os

import click

from manifests.cli import run_cli

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


def default_workers() -> int:
    return max(1, min(8, (os.cpu_count() or 2)))


def training_options(f):
    """Options shared by pretrain and finetune (the recipe, devices, run-folder handling)."""
    opts = [
        click.option("--epochs", type=float, help="Training budget in passes over the manifest."),
        click.option("--steps", type=int, help="Training budget in optimizer steps (instead of --epochs)."),
        click.option("--batch-size", default=128, show_default=True, help="Images per step per process."),
        click.option("--momentum", default=0.9, show_default=True, help="SGD momentum (Nesterov)."),
        click.option("--weight-decay", default=1e-4, show_default=True, help="On weights, not biases/norms."),
        click.option("--warmup", default=0.05, show_default=True, help="Fraction of steps of linear warm-up."),
        click.option("--label-smoothing", default=0.0, show_default=True),
        click.option("--seed", default=0, show_default=True),
        click.option("--workers", default=default_workers(), show_default=True, help="DataLoader workers."),
        click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True,
                     help="auto takes CUDA when present (bf16 autocast, channels_last)."),
        click.option("--hflip", default=0.0, show_default=True,
                     help="Horizontal-flip probability (0 for digits/glyphs; 0.5 for photos)."),
        click.option("--save-every", default=500, show_default=True, help="Save resumable state every N steps."),
        click.option("--log-every", default=20, show_default=True, help="Append to metrics.jsonl every N steps."),
        click.option("--resume", is_flag=True, help="Continue the run in --out from its saved state."),
        click.option("--stop-after-steps", type=int,
                     help="Stop (saving state) after N steps of this invocation, e.g. to fit a job slot."),
        click.option("--quiet", "-q", is_flag=True, help="No progress bar."),
    ]
    for o in reversed(opts):
        f = o(f)
    return f


@click.command(context_settings=CONTEXT)
@click.option("--manifest", "-m", required=True, help="Labeled manifest to train on.")
@click.option("--model", required=True, help="timm architecture, e.g. resnet18, mobilenetv2_100.")
@click.option("--out", "-o", required=True, help="Run folder to write.")
@click.option("--lr", default=0.1, show_default=True, help="Peak learning rate.")
@click.option("--image-size", type=int, help="Train at this size (default: the manifest's images).")
@click.option("--in-chans", type=int, help="Model input channels (default: 1 for grey images, else 3).")
@click.option("--init", help="Start from a RUN_DIR (same classes), or timm:ARCH with --weights.")
@click.option("--weights", help="Local state dict for --init timm:ARCH (.pth or .safetensors).")
@training_options
def cli(**kw) -> None:
    """Pretrain a timm model on a labeled manifest into a run folder.

    Writes OUT/model.safetensors, config.json (arch, classes, image size, channels,
    mean/std, class prior, params), metrics.jsonl and state.pt (for --resume).
    Runs alone or under `torchrun --nproc_per_node N` (DDP; nccl on CUDA, gloo on CPU).
    """
    from .train import TrainConfig, run

    out = run(TrainConfig(**kw))
    click.echo(f"wrote {out}")


def main() -> None:
    run_cli(cli, "pretrain")
