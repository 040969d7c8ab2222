"""Demo: the paper's frozen-backbone setting on generated data, a few minutes on 2 CPU cores.

  python run.py generate-data --out data/demo --scenes 3000 --seed 0
  python run.py train --config configs/demo.py --workdir runs/demo

It prints (about 3 minutes on 2 CPU cores; the run is deterministic, these are its digits):

  method                   auc            hr@1           hr@10           hr@50    category_auc ...
  model                 0.8422          0.1376          0.5698          0.9210          0.8322 ...
  random                0.4859          0.0078          0.0907          0.4956          0.4843 ...
  popularity            0.6918          0.1234          0.4090          0.7440          0.6055 ...
  untrained             0.4971          0.0146          0.1112          0.5063          0.4946 ...

Nothing is downloaded, so the frozen backbone here is a small ResNet with random weights: a fixed
random-feature extractor. Its features are computed once per image into the feature cache
(`data.source='features'`), and the heads f, l, h and e_c train on them at thousands of triplets
per second. Each scene is also scored against every other same-category product of its batch
(`loss.in_batch_negatives`, one inner product each), which makes the most of the cheap steps.
With ImageNet weights and real photos, the paper's exact setting is configs/default.py.
configs/demo_finetune.py trains the same small ResNet end to end from images instead.
"""

from configs import default


def get_config():
  config = default.get_config()
  config.data.root = "data/demo"
  config.data.source = "features"
  config.input.image_size = 64
  config.input.normalization = "imagenet"
  config.input.batch_size = 256
  config.input.num_parallel_calls = 2  # AUTOTUNE oversubscribes a 2-core machine
  config.model.backbone = "resnet_small"
  config.model.freeze_backbone = True
  config.model.global_hidden = 128
  config.model.local_hidden = 128
  config.model.attention_hidden = 64
  config.model.embed_dim = 64
  config.loss.in_batch_negatives = True
  config.features.batch_size = 128
  config.optimizer.learning_rate = 3e-3
  config.optimizer.schedule = "cosine"
  config.optimizer.warmup_steps = 100
  config.train.num_steps = 2000
  config.train.log_every_steps = 250
  config.train.checkpoint_every_steps = 1000
  config.eval.batch_size = 256
  return config
