"""Demo variant: the same small ResNet trained end to end from images (no feature cache).

  python run.py train --config configs/demo_finetune.py --workdir runs/demo_finetune

Every step decodes, crops and resizes the images and back-propagates through the backbone, so
on 2 CPU cores it sees about 30-60x fewer triplets per second than configs/demo.py (60-100
triplets/s here; about 16 minutes in all on a busy 2-core machine). On the data of an earlier
generator (products recurring along a Zipf curve, where remembering products paid; not
re-measured on today's STL-like default) it printed:

  method                   auc            hr@1           hr@10           hr@50    category_auc ...
  model                 0.8726          0.1902          0.5990          0.9512          0.8510 ...
  random                0.4859          0.0078          0.0907          0.4956          0.4843 ...
  popularity            0.6918          0.1234          0.4090          0.7440          0.6055 ...
  untrained             0.4973          0.0146          0.1112          0.5063          0.4948 ...
"""

from configs import demo, variants

VARIANTS: variants.Variants = {}  # none: the config as written


def get_config(variant: str = ""):
  config = demo.get_config()
  config.data.source = "images"
  config.model.freeze_backbone = False
  config.model.backbone = "resnet_small"  # trained end to end: depth, not random width
  config.model.global_pool = "mean"
  config.model.global_stage = 5  # a trained backbone: the paper's stages
  config.model.region_stage = 4
  config.loss.in_batch_negatives = False
  config.input.batch_size = 64
  config.optimizer.learning_rate = 2e-3
  config.train.num_steps = 1200
  config.train.log_every_steps = 100
  config.train.checkpoint_every_steps = 400
  return variants.apply(config, variant, VARIANTS, "configs/demo_finetune.py")
