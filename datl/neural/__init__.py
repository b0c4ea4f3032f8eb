"""``datl.neural``, the torch layer: what every torch stage (pretrain, finetune, curate
estimate and dedup) shares.

Folders are named for what they hold, after detectron2:

| folder        | holds |
| ------------- | ----- |
| modeling/     | the timm factory (``create_model``), ``AdaptNet``, ``unwrap`` |
| checkpoint/   | run folders (``ModelConfig``, save/read/load), foreign state dicts, ``load_model`` |
| data/         | ``ImageDataset`` and ``BadImageLog``, transforms, the seeded rank-sharded sampler, |
|               | loaders (``make_loader``, ``Cycle``) |
| engine/       | torchrun set-up (``dist``), the device preamble, ``TrainConfig``, the training loop
|               | (``fit``), resumable state, optimiser groups and schedules, batched inference |

Invariant (checked by tests/test_layers.py): this layer imports ``datl.core`` and
``datl.manifests`` and nothing higher: never a stage (``datl.curate``, ``datl.pretrain``,
``datl.finetune``) or the runner.
"""
