"""Smoke test: tiny ResNet, 32 px, a few steps. Checks that a dataset and a machine work at all.

  python run.py train --config configs/smoke.py --workdir /tmp/smoke --config.data.root=DIR

It prints the table of configs/demo.py (with 20 candidates per query) with the model near the
untrained baseline after its 4 steps. The tests load exactly this config.
"""

from configs import demo, variants

VARIANTS: variants.Variants = {}  # none: the config as written


def get_config(variant: str = ""):
  config = demo.get_config()
  config.data.source = "images"
  config.input.image_size = 32
  config.input.batch_size = 8
  config.model.backbone = "resnet_tiny"
  # The paper's mean pooling: a tiny random network has near-constant channels whose standard
  # deviation (the demo's "mean_std") is float noise, which the head's BatchNorm would magnify
  # into differences between shardings that the multi-host tests compare exactly.
  config.model.global_pool = "mean"
  config.model.embed_dim = 16
  config.model.global_hidden = 32
  config.model.local_hidden = 32
  config.model.attention_hidden = 16
  config.optimizer.warmup_steps = 2
  config.train.num_steps = 4
  config.train.log_every_steps = 2
  config.train.checkpoint_every_steps = 2
  config.eval.batch_size = 32
  config.features.batch_size = 32
  config.features.shard_size = 256
  config.eval.num_candidates = 20
  config.eval.ks = (1, 5, 10)
  return variants.apply(config, variant, VARIANTS, "configs/smoke.py")
