"""Scene-based CTL (Kang et al. 2019), paper settings: ResNet-50 at 224 px, frozen backbone,
hybrid distance, category-restricted negatives. The base of every scene config.

Train on an STL-format folder (fashion.json, fashion-cat.json, images/):

  python run.py train --config configs/default.py --workdir runs/stl \
      --config.data.root=/data/stl-fashion \
      --config.model.backbone_weights=/weights/resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5

It prints the held-out table (auc, hr@1/10/50 and their whole-category versions) of the model
next to the random, popularity and untrained baselines, and writes it to
<workdir>/eval_metrics.json. Hardware: one accelerator or a pod (data parallel over all devices).
On a 2-core CPU this config runs, slowly: see the README for measured triplets/s.
"""

import ml_collections

from configs import base, variants

VARIANTS: variants.Variants = {}  # none: the config as written


def get_config(variant: str = "") -> ml_collections.ConfigDict:
  config = base.get_config()
  config.task = "scene"

  config.data.test_fraction = 0.1  # of scenes, split deterministically by signature
  config.data.min_crop_fraction = 0.2  # drop pairs whose kept scene rectangle is smaller

  # The backbone stage whose output map the local heads l and h see: the paper's conv4_6 (14 x 14
  # at 224 px). At low resolution a later map has few, coarse regions that mix garments.
  config.model.region_stage = 4
  # (model.global_stage and model.global_pool, the global vector of f: configs/base.py.)
  # Hypercolumns: `global` and `regions` concatenate every stage up to those two, the early
  # stages' colour and texture next to the late stages' shapes (not in the paper).
  config.model.multiscale = False
  config.model.global_hidden = 256  # head f
  config.model.local_hidden = 256  # head l
  config.model.attention_hidden = 128  # head h

  # Also score each scene against every other same-category product of the batch (one inner
  # product each, via the ranking query): many more triplet terms per backbone pass.
  config.loss.in_batch_negatives = False

  config.eval.num_candidates = 100  # the positive + 99 sampled same-category negatives
  return variants.apply(config, variant, VARIANTS, "configs/default.py")
