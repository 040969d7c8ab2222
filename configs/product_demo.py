"""Demo of the product-based task on generated data, a few minutes on 2 CPU cores.

  python run.py generate-data --format ctl --out data/ctl_demo --outfits 4000 --seed 0
  python run.py train --config configs/product_demo.py --workdir runs/product_demo

As in configs/demo.py, nothing is downloaded: the frozen backbone is a ResNet with random
weights whose features are computed once per item crop into the feature cache
(`data.source='features'`); the style extractor and category classifier train on them at
thousands of tuples per second. Other losses: --config.loss.name=contrastive|proxy, see
configs/product_default.py.

On 1,000 generated outfits (the STL-like default reuse, three generator seeds; README, "Learning
style on unseen products"): held-out R@10 0.322 ± 0.010 (the oracle 0.360, untrained 0.043), FITB
0.832 ± 0.023 (oracle 0.819, untrained 0.279); about a minute per run on 2 cores. The backbone
is the wide random-feature extractor of configs/demo.py.
"""

from configs import product_default, variants


def _small(config):
  """A quick look: a quarter of the steps."""
  config.train.num_steps = 500
  config.train.log_every_steps = 100


VARIANTS = {"small": _small}


def get_config(variant: str = ""):
  config = product_default.get_config()
  config.data.root = "data/ctl_demo"
  config.data.source = "features"
  config.input.image_size = 64
  config.input.normalization = "imagenet"
  config.input.batch_size = 256
  config.input.num_parallel_calls = 2  # AUTOTUNE oversubscribes a 2-core machine
  # The random-feature extractor of configs/demo.py: ResNet-50's widths, one block per stage,
  # the heads reading stage 2 pooled to its channels' mean and standard deviation.
  config.model.backbone = "resnet_shallow"
  config.model.freeze_backbone = True
  config.model.global_stage = 2
  config.model.global_pool = "mean_std"
  config.model.style_hidden = 256
  config.model.classifier_hidden = 128
  config.model.embed_dim = 64
  config.features.batch_size = 128
  config.optimizer.learning_rate = 3e-3
  config.optimizer.schedule = "cosine"
  config.optimizer.warmup_steps = 100
  config.train.num_steps = 2000
  config.train.log_every_steps = 250
  config.train.checkpoint_every_steps = 1000
  config.eval.batch_size = 256
  return variants.apply(config, variant, VARIANTS, "configs/product_demo.py")
