"""Training a timm classifier on a manifest: the loop shared by ``pretrain`` and ``finetune``.

Recipe (defaults; every one is a flag): SGD with Nesterov momentum 0.9, weight decay
1e-4 on weights (not on biases and norms), linear warm-up over the first 5% of steps
then cosine decay to 0, optional label smoothing. On CUDA: bf16 autocast and
channels_last. Under torchrun: DistributedDataParallel, rank-sharded data, rank 0 writes.
"""
from __future__ import annotations

import json
import math
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from manifests import BadImageLog, Manifest, UserError, atomic_output, open_manifest, probe_images

from . import dist
from .data import build_transform, image_mode, make_loader
from .models import (METRICS, STATE, ModelConfig, create, default_norm, load_foreign_weights, load_run,
                     save_run, unwrap)


@dataclass
class TrainConfig:
    manifest: str
    model: str
    out: str
    epochs: float | None = None
    steps: int | None = None
    batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 1e-4
    warmup: float = 0.05
    label_smoothing: float = 0.0
    seed: int = 0
    workers: int = 2
    device: str = "auto"
    image_size: int | None = None
    in_chans: int | None = None
    init: str | None = None
    weights: str | None = None
    hflip: float = 0.0
    save_every: int = 500
    log_every: int = 20
    resume: bool = False
    stop_after_steps: int | None = None
    quiet: bool = False


# Hook for finetune's domain adaptation: (model, images, labels, progress in [0, 1]) -> the step's whole loss.
# It may also have state_dict()/load_state_dict() (saved with the run's state for --resume)
# and seek(step) (called on resume, to continue its own data where the run stopped).
LossHook = Callable[[nn.Module, torch.Tensor, torch.Tensor, float], torch.Tensor]


def run(cfg: TrainConfig) -> Path:
    """``pretrain``: train cfg.model on the labeled manifest; returns the run folder."""
    check_budget(cfg)
    d = dist.setup(cfg.device)
    try:
        manifest = open_manifest(cfg.manifest)
        classes = manifest.require_labels()
        counts, _ = manifest.label_counts()
        size, in_chans = image_spec(manifest, cfg.image_size, cfg.in_chans)
        torch.manual_seed(cfg.seed)
        model = create(cfg.model, len(classes), in_chans)
        init_from(model, cfg, classes)
        mean, std = default_norm(in_chans)
        model_cfg = ModelConfig(arch=cfg.model, classes=classes, image_size=list(size), in_chans=in_chans,
                                mean=mean, std=std, num_features=int(model.num_features),
                                class_prior=(counts / max(counts.sum(), 1)).tolist(), params=params_of(cfg))
        return fit(model, model_cfg, manifest, cfg, d, decay_groups(model, cfg.lr, cfg.weight_decay))
    finally:
        dist.cleanup(d)


# -- pieces, in the order run() uses them -----------------------------------------------
def check_budget(cfg: TrainConfig) -> None:
    if (cfg.epochs is None) == (cfg.steps is None):
        raise UserError("--epochs/--steps", "give exactly one training budget", "pass --epochs N or --steps N")
    if (cfg.epochs is not None and cfg.epochs <= 0) or (cfg.steps is not None and cfg.steps <= 0):
        raise UserError("--epochs/--steps", "the training budget must be positive", "pass a positive number")
    if cfg.batch_size <= 0:
        raise UserError("--batch-size", f"{cfg.batch_size} is not positive", "pass a positive batch size")


def image_spec(manifest: Manifest, size: int | None, in_chans: int | None) -> tuple[tuple[int, int], int]:
    """Image size and channels: what the manifest's images are, unless overridden."""
    probed_size, probed_chans = probe_images(manifest)
    return ((size, size) if size else probed_size), (in_chans or probed_chans)


def init_from(model: nn.Module, cfg: TrainConfig, classes: list[str]) -> None:
    """--init RUN_DIR (same classes) or --init timm:ARCH --weights FILE (backbone only)."""
    if not cfg.init:
        return
    if cfg.init.startswith("timm:"):
        arch = cfg.init.removeprefix("timm:")
        if arch != cfg.model:
            raise UserError("--init", f"{cfg.init} is another architecture than --model {cfg.model}",
                            f"pass --model {arch}")
        if not cfg.weights:
            raise UserError("--init", f"{cfg.init} needs --weights FILE (a local state dict)",
                            "pass --weights; nothing is downloaded")
        load_foreign_weights(model, cfg.weights, keep_head=False)
        return
    src, src_cfg = load_run(cfg.init)
    if src_cfg.arch != cfg.model:
        raise UserError(cfg.init, f"holds a {src_cfg.arch}, not the --model {cfg.model}", f"pass --model {src_cfg.arch}")
    if src_cfg.classes != classes:
        raise UserError(cfg.init, f"was trained on {len(src_cfg.classes)} other classes than the manifest's "
                                  f"{len(classes)}", "use `finetune` to move a model to new classes")
    model.load_state_dict(src.state_dict())


def decay_groups(model: nn.Module, lr: float, weight_decay: float, lr_mult: Callable[[str], float] | None = None):
    """Parameter groups: weight decay on weights only; an optional per-parameter lr multiplier."""
    groups: dict[tuple[bool, float], list] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        key = (p.ndim > 1, lr_mult(name) if lr_mult else 1.0)
        groups.setdefault(key, []).append(p)
    return [{"params": ps, "weight_decay": weight_decay if decay else 0.0, "lr": lr * mult, "lr_mult": mult}
            for (decay, mult), ps in groups.items()]


def params_of(cfg: TrainConfig) -> dict:
    p = asdict(cfg)
    for k in ("quiet", "resume", "stop_after_steps", "workers", "log_every", "save_every"):
        p.pop(k)
    return p


def warmup_cosine(total: int, warmup: float) -> Callable[[int], float]:
    w = int(round(total * warmup))

    def factor(step: int) -> float:
        if step < w:
            return (step + 1) / w
        t = (step - w) / max(total - w, 1)
        return 0.5 * (1.0 + math.cos(math.pi * min(t, 1.0)))

    return factor


# -- the loop ------------------------------------------------------------------------------
def fit(model: nn.Module, model_cfg: ModelConfig, manifest: Manifest, cfg: TrainConfig, d: dist.Dist,
        groups: list[dict], hook: LossHook | None = None,
        schedule: Callable[[int], Callable[[int], float]] | None = None) -> Path:
    """Train; ``hook`` (if given) returns each step's whole loss; ``schedule(total)`` gives
    the learning-rate factor per step (default: warm-up then cosine). A user error during
    training (e.g. a hook's manifest with no readable image) removes a run folder this
    call created: no half-written run."""
    out = Path(cfg.out)
    fresh = d.main and not cfg.resume and not out.exists()
    if d.main:
        prepare_out(out, cfg.resume)
    dist.barrier(d)
    try:
        return _train(model, model_cfg, manifest, cfg, d, groups, hook, schedule, out)
    except UserError:
        if fresh:
            shutil.rmtree(out, ignore_errors=True)
        raise


def _train(model: nn.Module, model_cfg: ModelConfig, manifest: Manifest, cfg: TrainConfig, d: dist.Dist,
           groups: list[dict], hook: LossHook | None, schedule, out: Path) -> Path:
    model.to(d.device)
    if d.cuda:
        model.to(memory_format=torch.channels_last)
    net = nn.parallel.DistributedDataParallel(model, device_ids=[d.local_rank] if d.cuda else None) \
        if d.world > 1 else model
    opt = torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.momentum > 0)

    transform = build_transform(tuple(model_cfg.image_size), model_cfg.in_chans, model_cfg.mean, model_cfg.std,
                                train=True, hflip=cfg.hflip)
    loader = make_loader(manifest, transform, image_mode(model_cfg.in_chans), cfg.batch_size, cfg.workers,
                         d.rank, d.world, cfg.seed, shuffle=True, pin_memory=d.cuda)
    sampler = loader.sampler
    steps_per_epoch = max(math.ceil(sampler.per_rank() / cfg.batch_size), 1)
    total = cfg.steps or max(int(math.ceil(cfg.epochs * steps_per_epoch)), 1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, (schedule or (lambda t: warmup_cosine(t, cfg.warmup)))(total))

    step = load_state(out, model, opt, sched, d, hook) if cfg.resume else 0
    if step and hasattr(hook, "seek"):
        hook.seek(step)
    stop_at = min(total, step + cfg.stop_after_steps) if cfg.stop_after_steps else total
    bad = BadImageLog()
    bar = tqdm(total=total, initial=step, desc=f"{cfg.model} {out.name}", unit="step",
               disable=cfg.quiet or not d.main, dynamic_ncols=True)
    window_t, window_n = time.perf_counter(), 0
    net.train()
    while step < stop_at:
        sampler.epoch, sampler.start = step // steps_per_epoch, (step % steps_per_epoch) * cfg.batch_size
        for batch in loader:
            bad.add(batch.bad)
            loss = train_step(net, batch, cfg, d, hook, step / total)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            step += 1
            window_n += 0 if batch.images is None else len(batch.labels)
            bar.update()
            if step % cfg.log_every == 0 or step == stop_at:
                rate = window_n * d.world / max(time.perf_counter() - window_t, 1e-9)
                record = {"step": step, "epoch": step / steps_per_epoch, "loss": float(loss.detach()),
                          "lr": opt.param_groups[0]["lr"] / opt.param_groups[0]["lr_mult"],
                          "images_per_s": rate, "bad_images": bad.count}
                record.update({k: float(v) for k, v in getattr(hook, "last", {}).items()})  # --adapt's terms
                bar.set_postfix(loss=f"{record['loss']:.3f}", img_s=f"{rate:.0f}")
                if d.main:
                    with open(out / METRICS, "a") as f:
                        f.write(json.dumps(record) + "\n")
                window_t, window_n = time.perf_counter(), 0
            if step % cfg.save_every == 0 and step < stop_at:
                save_state(out, model, opt, sched, step, d, hook)
            if step >= stop_at:
                break
    bar.close()
    dist.check_in_sync(d, [p for g in groups for p in g["params"]])
    save_state(out, model, opt, sched, step, d, hook)
    if d.main:
        model_cfg.params = {**model_cfg.params, "steps": total, "steps_done": step}
        save_run(out, model, model_cfg)
    if bad.count and d.main:
        tqdm.write(f"warning: {bad.summary()}")
    dist.barrier(d)
    return out


def train_step(net: nn.Module, batch, cfg: TrainConfig, d: dist.Dist, hook: LossHook | None,
               progress: float) -> torch.Tensor:
    if batch.images is None:  # every image of this batch was unreadable: a zero loss keeps DDP in step
        return sum(p.sum() * 0.0 for p in net.parameters())
    x = batch.images.to(d.device, non_blocking=True)
    y = batch.labels.to(d.device, non_blocking=True)
    if d.cuda:
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=d.cuda):
        if hook is not None:
            return hook(net, x, y, progress)
        logits = net(x)
        return F.cross_entropy(logits.float(), y, label_smoothing=cfg.label_smoothing)


# -- run-folder state ------------------------------------------------------------------------
def prepare_out(out: Path, resume: bool) -> None:
    if resume:
        if not (out / STATE).exists():
            raise UserError(out, f"has no {STATE} to resume from", "drop --resume to start a new run")
        return
    if (out / STATE).exists():
        raise UserError(out, "already holds a run", "pass --resume to continue it, or another --out")
    out.mkdir(parents=True, exist_ok=True)
    (out / METRICS).unlink(missing_ok=True)


def save_state(out: Path, model: nn.Module, opt, sched, step: int, d: dist.Dist, hook=None) -> None:
    """Training state for --resume, written atomically by rank 0."""
    if d.main:
        state = {"model": unwrap(model).state_dict(), "optimizer": opt.state_dict(),
                 "scheduler": sched.state_dict(), "step": step, "torch_rng": torch.get_rng_state()}
        if hasattr(hook, "state_dict"):
            state["hook"] = hook.state_dict()
        if d.cuda:
            state["cuda_rng"] = torch.cuda.get_rng_state(d.device)
        with atomic_output(out / STATE) as tmp:
            torch.save(state, tmp)
    dist.barrier(d)


def load_state(out: Path, model: nn.Module, opt, sched, d: dist.Dist, hook=None) -> int:
    state = torch.load(out / STATE, map_location="cpu", weights_only=True)
    unwrap(model).load_state_dict(state["model"])
    if hasattr(hook, "load_state_dict"):
        if "hook" not in state:
            raise UserError(out / STATE, "was saved by a run without these --adapt/--train-target options",
                            "resume with the options the run started with, or start a new run")
        hook.load_state_dict(state["hook"])
    opt.load_state_dict(state["optimizer"])
    sched.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["torch_rng"])
    if d.cuda and "cuda_rng" in state:
        torch.cuda.set_rng_state(state["cuda_rng"], d.device)
    step = int(state["step"])
    if d.main and (out / METRICS).exists():  # drop records past the saved step
        lines = [ln for ln in (out / METRICS).read_text().splitlines() if ln and json.loads(ln)["step"] <= step]
        (out / METRICS).write_text("".join(ln + "\n" for ln in lines))
    return step
