"""datl's torch layer: what every torch stage (pretrain, finetune, curate estimate/dedup) shares.

Folders are named for what they hold, after detectron2:

| folder        | holds |
| ------------- | ----- |
| modeling/     | the timm factory (``create_model``), ``AdaptNet``, ``unwrap`` |
| checkpoint/   | run folders (``ModelConfig``, save/read/load), foreign state dicts, ``load_model`` |
| data/         | transforms, the seeded rank-sharded sampler, loaders (``make_loader``, ``Cycle``) |
| engine/       | torchrun set-up (``dist``), the device preamble, ``TrainConfig``, the training loop
|               | (``fit``), resumable state, optimiser groups and schedules, batched inference |

Layers (checked by tests/test_layers.py): ``manifests`` < ``datl_torch`` < the stages
``pretrain``, ``curate``, ``finetune`` (which never import each other) < ``datl``.
Nothing here imports a stage or datl.
"""
