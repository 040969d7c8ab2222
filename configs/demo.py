"""Demo: the paper's frozen-backbone setting on generated data, a few minutes on 2 CPU cores.

  python run.py generate-data --out data/demo --scenes 3000 --seed 0
  python run.py train --config configs/demo.py --workdir runs/demo

It prints (481 held-out pairs, 195 of them with a product never seen in training; the state of
the best validation hr@10, step 1400; the run is deterministic; 6 min on 2 busy cores):

  method                   auc            hr@1           hr@10           hr@50      auc_unseen ...
  model                 0.8586          0.1040          0.5572          0.9335          0.8389 ...
  random                0.4698          0.0166          0.0936          0.4595          0.4656 ...
  popularity            0.4850          0.0613          0.2763          0.4785          0.0721 ...
  untrained             0.5277          0.0125          0.1060          0.5572          0.5446 ...
  oracle                0.9361          0.0790          0.7589          1.0000          0.9351 ...

Nothing is downloaded, so the frozen backbone here is a ResNet with random weights: a fixed
random-feature extractor, wide (ResNet-50's widths) and shallow (one block per stage). Its
features are computed once per image into the feature cache (`data.source='features'`), and the
heads f, l, h and e_c train on them at about 1,500-2,000 triplets per second. Random features
keep colour and texture in the early stages, so the global vector is stage 2 pooled (to each
channel's mean and standard deviation, over the image and over each quadrant: which colour is
where) and the regions are stage 3; without in-batch negatives the heads remember the training
products less (the README's ablation, "Learning style on unseen products").
With ImageNet weights and real photos, the paper's exact setting is configs/default.py.
configs/demo_finetune.py trains a small ResNet end to end from images instead.
"""

from configs import default, variants


def _small(config):
  """A quick look (about a minute on 2 cores): a quarter of the steps, validated as often."""
  config.train.num_steps = 400
  config.train.log_every_steps = 100
  config.eval.every_steps = 100


VARIANTS = {"small": _small}


def get_config(variant: str = ""):
  config = default.get_config()
  config.data.root = "data/demo"
  config.data.source = "features"
  config.input.image_size = 64
  config.input.normalization = "imagenet"
  config.input.batch_size = 256
  config.input.num_parallel_calls = 2  # AUTOTUNE oversubscribes a 2-core machine
  # A frozen random network is a random-feature extractor: what it keeps grows with its width,
  # not its depth, so the demo's is ResNet-50's widths with one block per stage. Random features
  # keep colour and texture in the early stages and mix them away later: the global vector is
  # stage 2 pooled to its channels' mean and standard deviation (the spread tells garments'
  # colours apart from their blend), over the whole image and over each quadrant (a spatial
  # pyramid: which colour is where, a top's above the trousers'), the regions stage 3 (8 x 8 at
  # 64 px). See the README's ablation table ("Learning style on unseen products").
  config.model.backbone = "resnet_shallow"
  config.model.freeze_backbone = True
  config.model.global_stage = 2
  config.model.global_pool = "mean_std_2x2"
  config.model.region_stage = 3
  config.model.global_hidden = 128
  config.model.local_hidden = 128
  config.model.attention_hidden = 64
  config.model.embed_dim = 64
  # Off: in-batch negatives fit the training products faster and generalise worse (ablation).
  config.loss.in_batch_negatives = False
  config.features.batch_size = 128
  config.optimizer.learning_rate = 3e-3
  config.optimizer.schedule = "cosine"
  config.optimizer.warmup_steps = 100
  config.train.num_steps = 1600  # the main command in under 5 minutes on 2 cores
  config.train.log_every_steps = 250
  config.train.checkpoint_every_steps = 1000
  config.eval.batch_size = 256
  config.eval.every_steps = 200
  return variants.apply(config, variant, VARIANTS, "configs/demo.py")
