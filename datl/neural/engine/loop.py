"""The training loop shared by ``pretrain`` and ``finetune``.

On CUDA: bf16 autocast and channels_last. Under torchrun: DistributedDataParallel,
rank-sharded data, rank 0 writes. State is saved every ``save_every`` steps and at the
end, so ``--resume`` continues exactly.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from datl.core.errors import RunFailed, UserError
from datl.core.progress import bar
from datl.manifests import Manifest

from ..checkpoint import METRICS, ModelConfig, save_run
from ..data import BadImageLog, train_loader
from . import dist
from .config import TrainConfig
from .device import autocast, place_model, to_device
from .optim import warmup_cosine
from .state import data_key, load_state, prepare_out, save_state

# A loss hook (finetune's two-domain step): (model, images, labels, progress in [0, 1]) -> the
# step's whole loss. It may also have state_dict()/load_state_dict() (saved with the run's
# state for --resume), seek(step) (called on resume, to continue its own data where the run
# stopped), and ``last``: a dict of the step's loss terms, logged to metrics.jsonl.
LossHook = Callable[[nn.Module, torch.Tensor, torch.Tensor, float], torch.Tensor]
# total steps -> (step -> learning-rate factor), or None for the default warm-up + cosine
Schedule = Callable[[int], Callable[[int], float] | None]


def fit(
    model: nn.Module,
    model_cfg: ModelConfig,
    manifest: Manifest,
    cfg: TrainConfig,
    d: dist.Dist,
    groups: list[dict],
    hook: LossHook | None = None,
    schedule: Schedule | None = None,
    pool=None,
) -> Path:
    """Train; ``hook`` (if given) returns each step's whole loss; ``schedule(total)`` gives
    the learning-rate factor per step (default: warm-up then cosine). A user error during
    training (e.g. a hook's manifest with no readable image) removes a run folder this
    call created: no half-written run.

    BatchNorm cannot train on one image: with a BatchNorm model a batch of one image (the
    epoch's last, when rows per process mod --batch-size is 1, or a batch whose other images
    were unreadable) is dropped, its step taken with a zero loss so every rank stays in step;
    ``--batch-size 1``, or fewer than two images per process, is refused before any work.

    ``pool``: the manifest rows to train on (None: all; pretrain holds a slice out of a
    multi-label manifest to score mAP on). A multi-label manifest's batches carry label sets
    and train the sigmoid loss of :func:`multi_label_loss`."""
    check_batchnorm(model, manifest, cfg, d, hook)
    out = Path(cfg.out)
    fresh = d.main and not cfg.resume and not out.exists()
    if d.main:
        prepare_out(out, cfg.resume)
    dist.barrier(d)
    try:
        return _train(model, model_cfg, manifest, cfg, d, groups, hook, schedule, out, pool)
    except UserError:
        if fresh:
            shutil.rmtree(out, ignore_errors=True)
        raise


def _train(
    model: nn.Module,
    model_cfg: ModelConfig,
    manifest: Manifest,
    cfg: TrainConfig,
    d: dist.Dist,
    groups: list[dict],
    hook: LossHook | None,
    schedule: Schedule | None,
    out: Path,
    pool=None,
) -> Path:
    place_model(model, d.device)
    net = (
        nn.parallel.DistributedDataParallel(model, device_ids=[d.local_rank] if d.cuda else None)
        if d.world > 1
        else model
    )
    opt = torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.momentum > 0)
    loader = train_loader(manifest, model_cfg, cfg, d, cfg.seed, pool=pool)
    sampler = loader.sampler
    steps_per_epoch = max(math.ceil(sampler.per_rank() / cfg.batch_size), 1)
    total = cfg.steps or max(int(math.ceil(cfg.epochs * steps_per_epoch)), 1)
    factor = (schedule(total) if schedule else None) or warmup_cosine(total, cfg.warmup)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, [held(factor, g.get("hold", 0.0), total) for g in groups])

    data = data_key(manifest)
    step = load_state(out, model, opt, sched, d, hook, data) if cfg.resume else 0
    saved = step if cfg.resume else None  # the step of the last state written, if any
    if step and hasattr(hook, "seek"):
        hook.seek(step)
    stop_at = min(total, step + cfg.stop_after_steps) if cfg.stop_after_steps else total
    bad = BadImageLog()
    shown = bar(
        total=total,
        initial=step,
        desc=f"{model_cfg.arch} {out.name}",
        unit="step",
        enabled=not cfg.quiet and d.main,
        leave=True,
    )
    log = MetricsLog(out / METRICS, d, steps_per_epoch)
    net.train()
    while step < stop_at:
        sampler.epoch, sampler.start = step // steps_per_epoch, (step % steps_per_epoch) * cfg.batch_size
        for batch in loader:
            bad.add(batch.bad, batch.warned)
            if batch.images is not None and len(batch.images) == 1 and hook is None and has_batchnorm(model):
                batch = batch._replace(images=None)  # one image cannot train BatchNorm: dropped
            loss = train_step(net, batch, cfg, d, hook, step / total)
            if not dist.all_finite(loss, d):
                shown.close()
                raise RunFailed(
                    out,
                    f"the training loss became {float(loss.detach()):g} at step {step + 1} of "
                    f"{total} (lr {opt.param_groups[0]['lr']:.3g}); "
                    f"{keep_good_state(out, model, opt, sched, step, saved, d, hook, data)}",
                    "lower --lr (or check the data) and rerun",
                )
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            step += 1
            log.count(0 if batch.images is None else len(batch.labels))
            shown.update()
            if step % cfg.log_every == 0 or step == stop_at:
                record = log.write(step, loss, opt, bad, getattr(hook, "last", {}))
                shown.set_postfix(loss=f"{record['loss']:.3f}", img_s=f"{record['images_per_s']:.0f}")
            if step % cfg.save_every == 0 and step < stop_at and weights_finite(model, d):
                save_state(out, model, opt, sched, step, d, hook, data)  # never a state with a non-finite weight
                saved = step
            if step >= stop_at:
                break
    shown.close()
    dist.check_in_sync(d, [p for g in groups for p in g["params"]])
    save_state(out, model, opt, sched, step, d, hook, data)
    if d.main:
        model_cfg.params = {**model_cfg.params, "steps": total, "steps_done": step}
        save_run(out, model, model_cfg)
    if d.main:
        bad.report(str(manifest.path))
    dist.barrier(d)
    return out


def keep_good_state(
    out: Path, model: nn.Module, opt, sched, step: int, saved: int | None, d: dist.Dist, hook, data: dict
) -> str:
    """After a non-finite loss: save the state as it is if every weight is still finite (the
    update of the bad step has not happened), else keep the last state saved; say which."""
    if weights_finite(model, d):
        save_state(out, model, opt, sched, step, d, hook, data)
        return f"the state before that step (finite weights) is saved in state.pt, step {step}"
    if saved is not None:
        return f"the weights were no longer finite; the last state saved, step {saved}, is kept in state.pt"
    return "the weights were no longer finite and no state had been saved yet"


def weights_finite(model: nn.Module, d: dist.Dist) -> bool:
    """Every floating parameter and buffer (BatchNorm statistics too) is finite, on every rank."""
    ok = all(bool(torch.isfinite(t).all()) for t in model.state_dict().values() if t.is_floating_point())
    return dist.all_finite(torch.tensor(0.0 if ok else float("nan"), device=d.device), d)


def has_batchnorm(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def check_batchnorm(model: nn.Module, manifest: Manifest, cfg: TrainConfig, d: dist.Dist, hook) -> None:
    """A BatchNorm model needs batches of two images or more (a two-domain step adds the other
    domain's batch to every step, so it always has them)."""
    if hook is not None or not has_batchnorm(model):
        return
    if cfg.batch_size < 2:
        raise UserError(
            "--batch-size",
            f"{cfg.batch_size} is too small for {type(model).__name__}, which has "
            "BatchNorm layers (they need two images or more a batch)",
            "pass --batch-size 2 or more",
        )
    per_rank = math.ceil(manifest.num_rows / d.world)
    if per_rank < 2:
        raise UserError(
            manifest.path,
            f"has {manifest.num_rows} row(s): {per_rank} a process, too few for a model "
            "with BatchNorm layers (they need two images or more a batch)",
            "train on two images or more per process",
        )


def train_step(
    net: nn.Module, batch, cfg: TrainConfig, d: dist.Dist, hook: LossHook | None, progress: float
) -> torch.Tensor:
    if batch.images is None:  # every image of this batch was unreadable: a zero loss keeps DDP in step
        return sum(p.sum() * 0.0 for p in net.parameters())
    x, y = to_device(batch.images, d.device), to_device(batch.labels, d.device)
    with autocast(d.device):
        if hook is not None:
            return hook(net, x, y, progress)
        logits = net(x)
        if y.dim() == 2:  # label sets: a multi-label manifest
            return multi_label_loss(logits.float(), y)
        return F.cross_entropy(logits.float(), y, label_smoothing=cfg.label_smoothing)


def multi_hot(sets: torch.Tensor, k: int) -> torch.Tensor:
    """(B, L) class indexes padded with -1 -> (B, k) float targets, 1 where the image has the label."""
    target = torch.zeros(sets.shape[0], k + 1, device=sets.device)
    target.scatter_(1, torch.where(sets >= 0, sets, k), 1.0)
    return target[:, :k]


def multi_label_loss(logits: torch.Tensor, sets: torch.Tensor) -> torch.Tensor:
    """Sigmoid binary cross-entropy, what JFT and OpenImages classifiers train with: each label
    an independent yes/no, summed over the K labels and averaged over the batch,

        L = -(1/B) sum_i sum_k [ t_ik log s(z_ik) + (1 - t_ik) log(1 - s(z_ik)) ].

    Summed, not averaged, over labels, so a label's gradient does not shrink as K grows (with
    the mean over B*K, 18,000 labels would divide the learning rate by 18,000). Label
    smoothing is for the softmax loss only."""
    target = multi_hot(sets, logits.shape[1])
    return F.binary_cross_entropy_with_logits(logits, target, reduction="sum") / max(logits.shape[0], 1)


def base_lr(opt) -> float:
    """The run's learning rate now: a group's lr over its multiplier (a group with a multiplier)."""
    g = next((g for g in opt.param_groups if g.get("lr_mult")), opt.param_groups[0])
    return g["lr"] / g["lr_mult"] if g.get("lr_mult") else g["lr"]


def held(factor: Callable[[int], float], hold: float, total: int) -> Callable[[int], float]:
    """A group's learning-rate factor: 0 for its first ``hold`` fraction of the steps (finetune's
    --head-warmup holds the backbone while the new head learns), the schedule after."""
    if not hold:
        return factor
    until = int(round(hold * total))
    return lambda step: 0.0 if step < until else factor(step)


class MetricsLog:
    """metrics.jsonl: one record every --log-every steps (rank 0 writes), with the images/s
    of the window since the last record, summed over ranks."""

    def __init__(self, path: Path, d: dist.Dist, steps_per_epoch: int):
        self.path, self.d, self.steps_per_epoch = path, d, steps_per_epoch
        self.t, self.n = time.perf_counter(), 0

    def count(self, images: int) -> None:
        self.n += images

    def write(self, step: int, loss: torch.Tensor, opt, bad: BadImageLog, terms: dict) -> dict:
        rate = self.n * self.d.world / max(time.perf_counter() - self.t, 1e-9)
        record = {
            "step": step,
            "epoch": step / self.steps_per_epoch,
            "loss": float(loss.detach()),
            "lr": base_lr(opt),
            "images_per_s": rate,
            "bad_images": bad.count,
        }
        record.update({k: float(v) for k, v in terms.items()})  # --adapt's loss terms
        if self.d.main:
            with open(self.path, "a") as f:
                f.write(json.dumps(record) + "\n")
        self.t, self.n = time.perf_counter(), 0
        return record
