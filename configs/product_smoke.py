"""Smoke test of the product task: tiny ResNet, 32 px, a few steps; the tests load it.

  python run.py train --config configs/product_smoke.py --workdir /tmp/psmoke --config.data.root=DIR

It prints the table of configs/product_demo.py with the model near the untrained baseline (4
steps): on `generate-data --format ctl --outfits 300 --seed 0` with --config.eval.outfit_size=0,
model r@10 0.1949 and fitb 0.1935 next to untrained 0.1928 / 0.1774 and random 0.2500 / 0.2500.
"""

from configs import product_demo, variants

VARIANTS: variants.Variants = {}  # none: the config as written


def get_config(variant: str = ""):
  config = product_demo.get_config()
  config.data.source = "images"
  config.input.image_size = 32
  config.input.batch_size = 8
  config.model.backbone = "resnet_tiny"
  config.model.embed_dim = 16
  config.model.style_hidden = 32
  config.model.classifier_hidden = 16
  config.loss.num_proxies = 15
  config.optimizer.warmup_steps = 2
  config.train.num_steps = 4
  config.train.log_every_steps = 2
  config.train.checkpoint_every_steps = 2
  config.eval.batch_size = 32
  config.eval.corpus_size = 40
  config.eval.popularity_train_items = 100
  config.features.batch_size = 32
  config.features.shard_size = 256
  return variants.apply(config, variant, VARIANTS, "configs/product_smoke.py")
