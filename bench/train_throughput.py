"""Is the data loader ever the bottleneck of `pretrain`?

Times the same model and the same training step fed (a) pretrain's real data path
(Parquet manifest -> PIL decode -> timm transforms -> DataLoader workers) and (b)
synthetic tensors already in memory on the device, in one run, and prints

    ratio = real images/s / synthetic images/s      (goal: >= 0.9)

CPU default: resnet18 on the demo's 28x28 images. GPU (what the issue asks for):
    python bench/train_throughput.py --device cuda --model resnet50 --image-size 224 --in-chans 3 --workers 12
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from datl.demo import build_demo  # noqa: E402
from datl.manifests import open_manifest  # noqa: E402
from datl.neural.data import build_transform, image_mode, image_spec, make_loader  # noqa: E402
from datl.neural.engine import dist  # noqa: E402
from datl.neural.engine.config import TrainConfig  # noqa: E402
from datl.neural.engine.loop import train_step  # noqa: E402
from datl.neural.engine.optim import decay_groups  # noqa: E402
from datl.neural.modeling import create_model, default_norm  # noqa: E402


def timed_steps(net, opt, batches, cfg, d, warmup: int, steps: int) -> float:
    """images/s over ``steps`` training steps after ``warmup`` steps."""
    n = 0
    t0 = None
    for i, batch in enumerate(batches):
        if i == warmup:
            if d.cuda:
                torch.cuda.synchronize()
            t0, n = time.perf_counter(), 0
        loss = train_step(net, batch, cfg, d, None, 0.0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        n += len(batch.labels)
        if i + 1 == warmup + steps:
            break
    if d.cuda:
        torch.cuda.synchronize()
    return n / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--manifest", help="labeled manifest (default: the demo source, built if needed)")
    ap.add_argument("--model", default="resnet18")
    ap.add_argument("--image-size", type=int)
    ap.add_argument("--in-chans", type=int, help="3 converts grey images to RGB (default: the images' own)")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--device", default="auto")
    args = ap.parse_args()

    if args.manifest is None:
        build_demo("demo/data", progress=False)
        args.manifest = "demo/data/source.parquet"
    d = dist.setup(args.device)
    manifest = open_manifest(args.manifest)
    classes = manifest.require_labels()
    size, chans = image_spec(manifest, args.image_size, args.in_chans)
    cfg = TrainConfig(
        manifest=args.manifest,
        model=args.model,
        out="",
        steps=args.steps,
        batch_size=args.batch_size,
        device=args.device,
    )
    torch.manual_seed(0)
    model = create_model(args.model, len(classes), chans).to(d.device)
    if d.cuda:
        model.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(decay_groups(model, 0.01, 1e-4), lr=0.01, momentum=0.9, nesterov=True)
    model.train()

    # (b) synthetic tensors already on the device: the model's ceiling
    from datl.neural.data import Batch

    x = torch.randn(args.batch_size, chans, *size, device=d.device)
    y = torch.randint(0, len(classes), (args.batch_size,), device=d.device)
    fake = Batch(x, y, torch.arange(args.batch_size), ())
    synthetic = timed_steps(model, opt, iter(lambda: fake, None), cfg, d, args.warmup, args.steps)

    # (a) pretrain's real data path
    mean, std = default_norm(chans)
    tf = build_transform(size, chans, mean, std, train=True)
    loader = make_loader(
        manifest, tf, image_mode(chans), args.batch_size, args.workers, 0, 1, 0, shuffle=True, pin_memory=d.cuda
    )
    real = timed_steps(model, opt, iter(loader), cfg, d, args.warmup, args.steps)

    dev = torch.cuda.get_device_name() if d.cuda else f"cpu x{os.cpu_count()}"
    print(
        f"model {args.model}  image {chans}x{size[0]}x{size[1]}  batch {args.batch_size}  workers {args.workers}"
        f"  device {dev}  steps {args.steps}"
    )
    print(f"synthetic in-memory : {synthetic:10.1f} images/s")
    print(f"real data path      : {real:10.1f} images/s")
    print(f"ratio real/synthetic: {real / synthetic:10.3f}   (goal >= 0.9)")


if __name__ == "__main__":
    main()
