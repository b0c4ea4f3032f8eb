"""The stage kinds ``datl run`` knows: which command each runs, its inputs and outputs.

A stage runs one CLI command (``pretrain``, ``curate estimate``, ...) as its own process,
so a stage behaves exactly as its command does by hand, a crash never takes the runner
down, and ``--launcher torchrun`` can wrap the torch stages. Its outputs go to
``OUT/<stage name>/``.
"""

from __future__ import annotations

import importlib
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .demo import MANIFESTS as DEMO_MANIFESTS
from .launch import Launcher


@dataclass(frozen=True, kw_only=True)
class Kind:
    command: tuple[str, ...]  # console script and subcommand
    cli: str  # "module:object": the click command, whose options check the stage's params
    inputs: dict[str, str]  # input key -> CLI flag
    required: tuple[str, ...]  # input keys that must be given
    outputs: tuple[str, ...]  # files in the stage folder that exist once it is done
    out_file: str | None  # --out names this file in the folder; None: --out is the folder itself
    torch: bool = False  # runs a model: gets --device, and torchrun under --launcher torchrun
    extra: tuple[str, ...] = ()  # fixed flags; {dir} is the stage folder, {cache} OUT/cache
    resumes: bool = False  # an unfinished run continues with --resume from its saved state
    flag_outputs: tuple[tuple[str, str], ...] = ()  # (param, file): the file is an output when the param is true

    def outputs_for(self, params: dict[str, Any]) -> tuple[str, ...]:
        """The files a stage of this kind with ``params`` writes."""
        return self.outputs + tuple(f for p, f in self.flag_outputs if params.get(p))


KINDS: dict[str, Kind] = {
    "demo-data": Kind(
        command=("datl", "demo-data"),
        cli="datl.commands:demo_data",
        inputs={},
        required=(),
        outputs=tuple(f"{name}.parquet" for name in DEMO_MANIFESTS),
        out_file=None,
        extra=("--quiet",),
    ),
    "pretrain": Kind(
        command=("pretrain",),
        cli="datl.pretrain.cli:cli",
        inputs={"train": "--manifest", "init": "--init"},
        required=("train",),
        outputs=("model.safetensors", "config.json", "metrics.jsonl"),
        out_file=None,
        torch=True,
        extra=("--quiet",),
        resumes=True,
    ),
    "estimate": Kind(
        command=("curate", "estimate"),
        cli="datl.curate.cli:estimate",
        inputs={"model": "--model", "target": "--target", "source": "--source", "calibration": "--calibration"},
        required=("model", "target"),
        outputs=("prior.parquet",),
        out_file="prior.parquet",
        torch=True,
        extra=("--quiet",),
    ),
    "features": Kind(  # the source described once; any number of dedup stages read it
        command=("curate", "features"),
        cli="datl.curate.cli:features",
        inputs={"source": "--source", "model": "--model"},
        required=("source",),
        outputs=("store.json",),
        out_file=None,
        torch=True,
        extra=("--quiet",),
    ),
    "dedup": Kind(
        command=("curate", "dedup"),
        cli="datl.curate.cli:dedup",
        inputs={"source": "--source", "target": "--target", "model": "--model", "source_features": "--source-features"},
        required=("source", "target", "model"),
        outputs=("duplicates.parquet",),
        out_file="duplicates.parquet",
        torch=True,
        extra=("--quiet", "--cache", "{cache}/embeddings"),
    ),
    "weight": Kind(
        command=("curate", "weight"),
        cli="datl.curate.cli:weight",
        inputs={
            "source": "--source",
            "prior": "--prior",
            "exclude": "--exclude",
            "features": "--features",
            "target_features": "--target-features",
        },
        required=("source", "prior"),
        outputs=("weights.parquet", "weights.png"),
        out_file="weights.parquet",
        extra=("--plot", "{dir}/weights.png", "--quiet"),
        flag_outputs=(("per_image", "image_weights.parquet"),),  # written next to --out
    ),
    "sample": Kind(
        command=("curate", "sample"),
        cli="datl.curate.cli:sample",
        inputs={
            "source": "--source",
            "weights": "--weights",
            "image_weights": "--image-weights",
            "exclude": "--exclude",
            "hierarchy": "--hierarchy",  # --classes is a param: a glob, or a file of names
        },
        required=("source",),
        outputs=("sample.parquet",),
        out_file="sample.parquet",
    ),
    "finetune": Kind(
        command=("finetune",),
        cli="datl.finetune.cli:cli",
        inputs={
            "train": "--train",
            "test": "--test",
            "val": "--val",
            "checkpoint": "--checkpoint",
            "unlabeled": "--unlabeled",
            "train_target": "--train-target",
        },
        required=("train", "test"),
        outputs=("metrics.json", "predictions.parquet"),
        out_file=None,
        torch=True,
        extra=("--quiet",),
        resumes=True,
    ),
}
SEEDED = {"demo-data", "pretrain", "sample", "finetune"}  # commands that take --seed


def click_command(kind: str):
    """The click command behind a kind (``Kind.cli``), to check parameter names before anything runs."""
    module, name = KINDS[kind].cli.split(":")
    return getattr(importlib.import_module(module), name)


def negatable(kind: str) -> set[str]:
    """Params of the kind whose flag is a --x/--no-x pair: False becomes --no-x."""
    return {p.name for p in click_command(kind).params if getattr(p, "secondary_opts", None)}


def option_names(kind: str) -> set[str]:
    """Parameter names (as in pipeline.yaml: snake_case) the kind's command accepts."""
    names = set()
    for p in click_command(kind).params:
        for opt in list(p.opts) + list(getattr(p, "secondary_opts", [])):
            if opt.startswith("--"):
                names.add(
                    opt[2:].replace("-", "_").removeprefix("no_")
                    if opt.startswith("--no-")
                    else opt[2:].replace("-", "_")
                )
    flags = set(KINDS[kind].inputs.values()) | {"--out", "--device", "--quiet", "--help", "--cache", "--plot"}
    return names - {f[2:].replace("-", "_") for f in flags}


def script(name: str) -> str:
    """The installed console script next to this Python (the same venv)."""
    return str(Path(sys.executable).parent / name)


def param_flags(params: dict[str, Any], negatable: set[str] = frozenset()) -> list[str]:
    args: list[str] = []
    for key, value in params.items():
        flag = "--" + key.replace("_", "-")
        if value is None:
            continue
        if value is True:
            args.append(flag)
        elif value is False:
            if key in negatable:
                args.append("--no-" + key.replace("_", "-"))
        else:
            args.append(f"{flag}={value}")  # one token: a value such as "--out=/x" stays a value
    return args


def command_line(
    kind: str,
    folder: Path,
    inputs: dict[str, str],
    params: dict[str, Any],
    device: str,
    cache: Path,
    launcher: Launcher | None,
    resume: bool = False,
) -> list[str]:
    """The full argv that runs one stage."""
    k = KINDS[kind]
    args = list(k.command[1:])
    for key, path in inputs.items():
        args.append(f"{k.inputs[key]}={path}")
    args += ["--out", str(folder / k.out_file) if k.out_file else str(folder)]
    written = {p.name for p in click_command(kind).params if getattr(p, "writes_file", False)}
    params = {k: str(folder / v) if k in written and isinstance(v, str) else v for k, v in params.items()}
    args += param_flags(params, negatable(kind))  # a file a param names is written in the stage's folder
    args += [a.format(dir=folder, cache=cache) for a in k.extra]
    if k.torch:
        args += ["--device", device]
    if resume:
        args.append("--resume")
    if k.torch and launcher is not None:
        return [sys.executable, "-m", "torch.distributed.run", *launcher.prefix(), script(k.command[0]), *args]
    return [script(k.command[0]), *args]
