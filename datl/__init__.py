"""datl: domain adaptive transfer learning (Ngiam et al. 2018). Curate a target-matched
pretraining set out of a large labeled source, then pretrain and fine-tune on it.

One import namespace, in layers (docs/DESIGN.md; tests/test_layers.py checks the order):

    datl.core  <  datl.manifests  <  datl.neural  <  datl.curate | datl.pretrain | datl.finetune  <  datl (runner)

| package         | folder      | holds |
| --------------- | ----------- | ----- |
| datl.core       | datl/core   | errors, options, how a command runs, atomic files, pools |
| datl.manifests  | manifests/  | the manifest contract; torch-free |
| datl.neural     | datl/neural | the torch layer: modeling/, checkpoint/, data/, engine/ |
| datl.curate     | curate/     | ``curate estimate|weight|dedup|sample`` |
| datl.pretrain   | pretrain/   | ``pretrain`` |
| datl.finetune   | finetune/   | ``finetune`` and ``--adapt`` |
| datl            | datl/       | ``datl run`` (pipeline, stages, runner, nodes), compare, report, demo data |

Importing ``datl`` imports nothing else.
"""
