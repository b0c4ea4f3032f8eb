"""pipeline.yaml: parse, check and expand into the stages ``datl run`` executes.

The file (see the repository's pipeline.yaml, and the README)::

    out: demo/run                 # every stage writes OUT/<stage name>/
    device: auto                  # auto | cpu | cuda, given to every torch stage
    seeds: 3                      # or a list, e.g. [0, 1, 2]
    sizes: [1500, 6000]           # optional: a sweep over pretraining-set sizes (see below)
    launcher: {torchrun: 2}       # optional: torch stages under torchrun --nproc-per-node 2
    stages:
      NAME: {run: KIND, inputs: {KEY: REF}, params: {FLAG: VALUE}, per_seed: false, per_size: false}
    compare:
      pretrain: {FLAG: VALUE}     # one recipe and budget for every arm
      finetune: {inputs: {train: REF, test: REF, val: REF}, params: {FLAG: VALUE}}
      arms: {ARM: REF or null}    # the manifest each arm pretrains on; null = from scratch
      baseline: ARM               # optional (default: uniform): paired differences against it
      select: [ARM, ARM]          # optional: the report chooses among these on val accuracy
      plot: REF                   # optional: the weight plot the report links

A REF is ``@stage`` (that stage's folder), ``@stage/file`` (a file in it), a path
relative to the pipeline file, or (for a model input) ``timm:ARCH``. A ``per_seed`` stage
runs once per seed, as ``NAME.s0``, ``NAME.s1``, ...: ``{seed}`` in its refs and params is
replaced, and it gets ``--seed``. Refs of arms and of the fine-tuning may use ``{seed}`` too. Arms expand to
``pretrain.ARM.sN`` and ``finetune.ARM.sN``; ``compare`` reads every fine-tuning result.

A size sweep: with ``sizes:``, a ``per_size`` stage runs once per size, as ``NAME.z1500``
(``NAME.z1500.s0`` when per seed too), with ``{size}`` replaced in its refs and params; an arm
whose ref holds ``{size}`` becomes one arm per size, ``ARM@1500``, ... The baseline is then
taken at the same size (``uniform@1500`` for ``adaptive@1500``), and the report plots test
accuracy against size for every swept arm, with 95% intervals (``compare/sweep.png``).

Everything is checked before anything runs: unknown kinds, keys and parameters, refs
to stages that do not exist, missing input files and cycles are user errors naming
the stage and the key.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from datl.core.errors import UserError
from datl.core.options import DEVICES
from datl.core.specs import is_timm_spec

from .launch import Launcher
from .stages import KINDS, SEEDED, click_command, option_names

COMPARE = "compare"


@dataclass
class Stage:
    name: str
    kind: str  # a KINDS key, or "compare"
    inputs: dict[str, str]  # key -> REF
    params: dict[str, Any]
    arm: str | None = None
    seed: int | None = None
    deps: list[str] = field(default_factory=list)


@dataclass
class Pipeline:
    path: Path
    out: Path
    device: str
    seeds: list[int]
    launcher: Launcher | None
    stages: dict[str, Stage]  # in an order where every stage follows what it reads
    arms: list[str]
    plot: str | None = None

    def ref_path(self, ref: str) -> Path:
        """Where a REF points: OUT/stage[/file], or a path relative to the pipeline file."""
        if ref.startswith("@"):
            return self.out / ref[1:]
        p = Path(ref).expanduser()
        return p if p.is_absolute() else self.path.parent / p

    def downstream(self, names: set[str]) -> set[str]:
        """The stages named and every stage that reads from them, directly or not."""
        out = set(names)
        for s in self.stages.values():  # topological order: one pass suffices
            if any(d in out for d in s.deps):
                out.add(s.name)
        return out


def ref_stage(ref: str) -> str | None:
    """'@stage/file' -> 'stage'; None for a path."""
    return ref[1:].split("/", 1)[0] if isinstance(ref, str) and ref.startswith("@") else None


def ref_file(ref: str) -> str | None:
    """'@stage/file' -> 'file'; None for '@stage' (the folder) or a path."""
    parts = ref[1:].split("/", 1) if ref.startswith("@") else []
    return parts[1] if len(parts) == 2 else None


def _err(path: Path, where: str, problem: str, fix: str) -> UserError:
    return UserError(f"{path}: {where}", problem, fix)


def _fill(value: Any, seed: int | None, size: int | None = None) -> Any:
    if isinstance(value, str) and seed is not None:
        value = value.replace("{seed}", str(seed))
    if isinstance(value, str) and size is not None:
        value = value.replace("{size}", str(size))
        return int(value) if value.isdigit() else value  # `size: "{size}"` is a number once filled
    return value


def _mapping(path: Path, where: str, value: Any) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise _err(path, where, f"must be a mapping, not {type(value).__name__}", "write KEY: VALUE lines under it")
    return value


def _check_stage(path: Path, name: str, spec: Any) -> tuple[str, dict, dict, bool]:
    spec = _mapping(path, f"stage '{name}'", spec)
    unknown = set(spec) - {"run", "inputs", "params", "per_seed", "per_size"}
    if unknown:
        raise _err(
            path,
            f"stage '{name}'",
            f"unknown key '{sorted(unknown)[0]}'",
            "use run, inputs, params, per_seed and per_size",
        )
    kind = spec.get("run")
    if kind not in KINDS:
        raise _err(path, f"stage '{name}'", f"unknown stage kind '{kind}'", f"run: one of {', '.join(KINDS)}")
    inputs = _mapping(path, f"stage '{name}' inputs", spec.get("inputs"))
    for key in inputs:
        if key not in KINDS[kind].inputs:
            raise _err(
                path,
                f"stage '{name}' input '{key}'",
                f"{kind} takes no such input",
                f"use {', '.join(KINDS[kind].inputs) or 'none'}",
            )
    for key in KINDS[kind].required:
        if key not in inputs:
            raise _err(path, f"stage '{name}' input '{key}'", "is required", f"add inputs: {{{key}: REF}}")
    params = _mapping(path, f"stage '{name}' params", spec.get("params"))
    _check_params(path, f"stage '{name}'", kind, params)
    return kind, inputs, params, bool(spec.get("per_seed", False)), bool(spec.get("per_size", False))


def _check_params(path: Path, where: str, kind: str, params: dict) -> None:
    """Names the stage's command accepts, and values its option types accept (a number out of
    its interval, an unknown choice), so a bad value stops the run before anything runs."""
    import click

    allowed = option_names(kind)
    options = {p.name: p for p in click_command(kind).params}
    for key, value in params.items():
        if key not in allowed:
            raise _err(
                path,
                f"{where} param '{key}'",
                f"{' '.join(KINDS[kind].command)} has no --{key.replace('_', '-')}",
                f"use one of {', '.join(sorted(allowed))}",
            )
        option = options.get(key)
        if getattr(option, "writes_file", False) and isinstance(value, str) and not _inside(value):
            raise _err(
                path,
                f"{where} param '{key}'",
                f"'{value}' is a path outside the stage's folder: a stage writes only into OUT/<stage>/",
                f"give a file name (e.g. {Path(value).name or 'out.parquet'}); it is written in the stage's folder",
            )
        if option is None or isinstance(value, bool) or value is None or (isinstance(value, str) and "{" in value):
            continue  # flags, and values filled per seed or size
        try:
            option.type.convert(value, option, None)
        except click.BadParameter as e:
            raise _err(
                path,
                f"{where} param '{key}'",
                e.format_message(),
                f"fix the value (see `{' '.join(KINDS[kind].command)} --help`)",
            ) from None


def _inside(value: str) -> bool:
    """A relative path that stays below the folder it is relative to."""
    p = Path(value)
    return not p.is_absolute() and ".." not in p.parts and not value.startswith("~")


RESERVED = {COMPARE, "logs", "cache", "report_files"}  # OUT's own folders: no stage may be named so


def load(path: str | Path, out: str | None = None) -> Pipeline:
    import yaml

    path = Path(path)
    if not path.exists():
        raise UserError(path, "does not exist", "pass a pipeline file, e.g. `datl run pipeline.yaml`")
    if not path.is_file():
        raise UserError(path, "is not a file", "pass a pipeline file, e.g. `datl run pipeline.yaml`")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        line = getattr(getattr(e, "problem_mark", None), "line", None)
        raise UserError(
            path, f"is not valid YAML{f' (line {line + 1})' if line is not None else ''}", "fix the syntax"
        ) from None
    raw = _mapping(path, "the file", raw)
    unknown = set(raw) - {"out", "device", "seeds", "sizes", "launcher", "stages", "compare"}
    if unknown:
        raise _err(
            path,
            f"key '{sorted(unknown)[0]}'",
            "is not a pipeline key",
            "use out, device, seeds, sizes, launcher, stages, compare",
        )
    out_dir = Path(out) if out else path.parent / str(raw.get("out", "runs/pipeline"))
    device = str(raw.get("device", "auto"))
    if device not in DEVICES:
        raise _err(path, "device", f"'{device}' is not a device", "use auto, cpu or cuda")
    seeds = raw.get("seeds", 3)
    seeds = list(range(seeds)) if isinstance(seeds, int) else seeds
    if not (isinstance(seeds, list) and seeds and all(isinstance(s, int) for s in seeds)):
        raise _err(path, "seeds", "must be a count or a list of integers", "e.g. seeds: 3")
    sizes = raw.get("sizes") or []
    if not (
        isinstance(sizes, list)
        and all(isinstance(z, int) and not isinstance(z, bool) and z > 0 for z in sizes)
        and len(set(sizes)) == len(sizes)
    ):
        raise _err(path, "sizes", "must be a list of distinct positive integers", "e.g. sizes: [1500, 3000, 6000]")
    launcher = None
    if raw.get("launcher"):
        lm = _mapping(path, "launcher", raw["launcher"])
        if set(lm) != {"torchrun"} or not isinstance(lm["torchrun"], int) or lm["torchrun"] < 1:
            raise _err(path, "launcher", "must be {torchrun: N} with N processes per node", "e.g. {torchrun: 8}")
        launcher = Launcher(lm["torchrun"])

    stages: dict[str, Stage] = {}
    if not raw.get("stages"):
        raise _err(
            path,
            "stages",
            "is missing or empty: there is nothing to run",
            "add stages (see the repository's pipeline.yaml)",
        )
    for name, spec in _mapping(path, "stages", raw.get("stages")).items():
        name = str(name)
        if "." in name or "/" in name or name in RESERVED:
            raise _err(
                path,
                f"stage '{name}'",
                f"names may not hold '.' or '/' or be one of OUT's own folders ({', '.join(sorted(RESERVED))})",
                "rename it, e.g. sample_uniform",
            )
        kind, inputs, params, per_seed, per_size = _check_stage(path, name, spec)
        if per_size and not sizes:
            raise _err(
                path,
                f"stage '{name}'",
                "is per_size but the pipeline has no sizes",
                "add sizes: [...] at the top, or drop per_size",
            )
        for size in sizes if per_size else [None]:
            for seed in seeds if per_seed else [None]:
                full = name + (f".z{size}" if size is not None else "") + (f".s{seed}" if seed is not None else "")
                p = {k: _fill(v, seed, size) for k, v in params.items()}
                if seed is not None and kind in SEEDED:
                    p.setdefault("seed", seed)
                stages[full] = Stage(
                    full, kind, {k: str(_fill(str(v), seed, size)) for k, v in inputs.items()}, p, seed=seed
                )

    arms: list[str] = []
    plot = None
    if raw.get("compare") is not None:
        arms, plot = _expand_compare(path, _mapping(path, COMPARE, raw["compare"]), seeds, sizes, stages)
    pipe = Pipeline(path, out_dir, device, seeds, launcher, stages, arms, plot)
    _link(pipe)
    return pipe


def _swept_arms(arms: dict, sizes: list[int]) -> dict:
    """ARM -> ref, with every arm whose ref holds {size} replaced by ARM@SIZE for each size."""
    out = {}
    for arm, ref in arms.items():
        if sizes and ref is not None and "{size}" in str(ref):
            out.update({f"{arm}@{z}": str(_fill(str(ref), None, z)) for z in sizes})
        else:
            out[arm] = ref
    return out


def _expand_compare(path: Path, spec: dict, seeds: list[int], sizes: list[int], stages: dict[str, Stage]):
    unknown = set(spec) - {"pretrain", "finetune", "arms", "plot", "baseline", "select"}
    if unknown:
        raise _err(
            path,
            f"compare key '{sorted(unknown)[0]}'",
            "is not a compare key",
            "use pretrain, finetune, arms, plot, baseline, select",
        )
    recipe = dict(_mapping(path, "compare pretrain", spec.get("pretrain")))
    _check_params(path, "compare pretrain", "pretrain", recipe)
    if "model" not in recipe:
        raise _err(path, "compare pretrain param 'model'", "is required", "e.g. model: resnet18")
    ft = _mapping(path, "compare finetune", spec.get("finetune"))
    ft_inputs = _mapping(path, "compare finetune inputs", ft.get("inputs"))
    for key in ("train", "test"):
        if key not in ft_inputs:
            raise _err(path, f"compare finetune input '{key}'", "is required", f"add inputs: {{{key}: REF}}")
    ft_params = dict(_mapping(path, "compare finetune params", ft.get("params")))
    _check_params(path, "compare finetune", "finetune", ft_params)
    named = _mapping(path, "compare arms", spec.get("arms"))
    if not named:
        raise _err(path, "compare arms", "is empty", "name at least one arm, e.g. adaptive: '@sample/sample.parquet'")
    arms = _swept_arms(named, sizes)
    report_inputs = {}
    for arm, ref in arms.items():
        for seed in seeds:
            pre = f"pretrain.{arm}.s{seed}"
            fin = f"finetune.{arm}.s{seed}"
            inputs = {k: _fill(str(v), seed) for k, v in ft_inputs.items()}
            fparams = {k: _fill(v, seed) for k, v in ft_params.items()} | {"seed": seed}
            if ref is None:  # scratch: the same architecture from random init
                fparams["model"] = recipe["model"]
            else:
                p = {k: _fill(v, seed) for k, v in copy.deepcopy(recipe).items()} | {"seed": seed}
                stages[pre] = Stage(pre, "pretrain", {"train": _fill(str(ref), seed)}, p, arm=arm, seed=seed)
                inputs["checkpoint"] = f"@{pre}"
            stages[fin] = Stage(fin, "finetune", inputs, fparams, arm=arm, seed=seed)
            report_inputs[f"{arm}.s{seed}"] = f"@{fin}/metrics.json"
            if ref is not None:
                report_inputs[f"{arm}.s{seed}.pretrain_set"] = _fill(str(ref), seed)
    plot = spec.get("plot")
    if plot:
        report_inputs["plot"] = str(plot)
    baseline = spec.get("baseline", "uniform" if "uniform" in named else None)
    if baseline is not None and baseline not in named:
        raise _err(path, "compare baseline", f"'{baseline}' is not one of the arms", f"name one of {', '.join(named)}")
    select = spec.get("select")
    if select is not None:
        if not (isinstance(select, list) and len(select) >= 2 and all(a in arms for a in select)):
            raise _err(
                path,
                "compare select",
                "must list two or more of the arms",
                f"e.g. select: [{', '.join(list(arms)[:2])}]",
            )
        if "val" not in ft_inputs:
            raise _err(
                path,
                "compare select",
                "chooses on validation accuracy, and the fine-tuning has no val input",
                "add finetune inputs: {val: REF} (a labeled target split disjoint from test)",
            )
    stages[COMPARE] = Stage(
        COMPARE,
        COMPARE,
        report_inputs,
        {"seeds": seeds, "arms": list(arms), "baseline": baseline, "select": select, "sizes": sizes},
    )
    return list(arms), plot


def _link(pipe: Pipeline) -> None:
    """Resolve refs into dependencies, check every external input exists, order the stages."""
    for s in pipe.stages.values():
        for key, ref in s.inputs.items():
            dep = ref_stage(ref)
            if dep is None:
                if is_timm_spec(ref):
                    continue  # a timm architecture (its weights come as a param)
                if not pipe.ref_path(ref).exists():
                    raise _err(
                        pipe.path,
                        f"stage '{s.name}' input '{key}'",
                        f"'{ref}' does not exist",
                        "fix the path (relative to the pipeline file), or produce it with a stage ('@stage/file')",
                    )
            elif dep not in pipe.stages:
                known = ", ".join(sorted(n for n in pipe.stages if "." not in n)) or "none"
                raise _err(
                    pipe.path,
                    f"stage '{s.name}' input '{key}'",
                    f"no stage '{dep}' produces '{ref}'",
                    f"name one of the stages ({known}), or a per-seed one as NAME.s{{seed}}",
                )
            else:
                d = pipe.stages[dep]
                outs = KINDS[d.kind].outputs_for(d.params) if d.kind in KINDS else ()
                file = ref_file(ref)
                if file is not None and file not in outs:
                    raise _err(
                        pipe.path,
                        f"stage '{s.name}' input '{key}'",
                        f"stage '{dep}' writes no '{file}'",
                        f"it writes {', '.join(outs)}",
                    )
                if dep not in s.deps:
                    s.deps.append(dep)
    order: list[str] = []
    state: dict[str, int] = {}  # 1 visiting, 2 done

    def visit(name: str, trail: list[str]) -> None:
        if state.get(name) == 2:
            return
        if state.get(name) == 1:
            cycle = trail[trail.index(name) :] + [name]
            raise _err(
                pipe.path,
                f"stage '{name}'",
                f"is in a cycle: {' -> '.join(cycle)}",
                "a stage may only read what earlier stages write",
            )
        state[name] = 1
        for d in pipe.stages[name].deps:
            visit(d, trail + [name])
        state[name] = 2
        order.append(name)

    for name in pipe.stages:
        visit(name, [])
    pipe.stages = {n: pipe.stages[n] for n in order}
