"""Scene-based CTL, paper settings: ResNet-50 at 224 px, frozen backbone, hybrid distance.

Train on an STL-format folder (fashion.json, fashion-cat.json, images/):

  python run.py train --config configs/default.py --workdir runs/stl \
      --config.data.root=/data/stl-fashion \
      --config.model.backbone_weights=/weights/resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5

Hardware: one accelerator or a pod (data parallel over all devices). On a 2-core CPU this config
runs, slowly: see the README for measured triplets/s.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.task = "scene"  # scene (Kang et al. 2019)
  config.seed = 0

  config.data = ml_collections.ConfigDict()
  config.data.format = "stl"
  config.data.root = ""  # an STL-format folder
  # Or a prepared TFDS dataset (python -m input_pipeline.tools.tfds_build stl_fashion ...), which
  # replaces `root`: its name (e.g. "stl_fashion") and data_dir ("": ~/tensorflow_datasets).
  config.data.tfds_name = ""
  config.data.tfds_dir = ""
  config.data.images_dir = "images"  # relative to root, flat or nested ab/cd/ef/<sig>.jpg
  config.data.strict = False  # True: stop at the first bad record, naming file/line/field
  # Decode every image once before training (cached per file in root/.image_check.json) and
  # drop the pairs of undecodable ones, instead of failing mid-epoch. Folders only: TFDS
  # builders check at build time.
  config.data.check_images = True
  config.data.category_map = ml_collections.ConfigDict()  # category path -> short label
  config.data.test_fraction = 0.1  # of scenes, split deterministically by signature
  config.data.min_crop_fraction = 0.2  # drop pairs whose kept scene rectangle is smaller
  # images: decode every step | features: run the frozen backbone once per image into a cache
  # (extracted automatically on first use, or by `run.py extract-features`) and train the heads.
  config.data.source = "images"
  config.data.feature_dir = ""  # default: <workdir>/features

  config.features = ml_collections.ConfigDict()
  config.features.batch_size = 64  # images per extraction step (per process)
  config.features.shard_size = 1024  # images per cache file

  config.input = ml_collections.ConfigDict()
  config.input.image_size = 224
  config.input.normalization = "caffe"  # what the Keras ImageNet ResNet-50 weights expect
  config.input.batch_size = 64  # global, split over all devices of all hosts
  config.input.prefetch = 2
  config.input.num_parallel_calls = -1  # tf.data.AUTOTUNE

  config.model = ml_collections.ConfigDict()
  config.model.backbone = "resnet50"  # resnet50 | resnet_small | resnet_tiny
  config.model.backbone_weights = ""  # Keras ImageNet .h5 (notop) supplied by the user
  config.model.freeze_backbone = True  # the paper's setting: no gradients, no optimizer state
  config.model.embed_dim = 128
  config.model.global_hidden = 256
  config.model.local_hidden = 256
  config.model.attention_hidden = 128
  config.model.dropout = 0.1
  config.model.dtype = "float32"  # compute dtype; bfloat16 on accelerators, params stay f32

  config.loss = ml_collections.ConfigDict()
  config.loss.margin = 0.2
  config.loss.reduction = "mean"  # mean | sum over the batch's triplet terms
  config.loss.num_negatives = 1  # category-restricted negatives per (scene, positive)
  # Also score each scene against every other same-category product of the batch (one inner
  # product each, via the ranking query): many more triplet terms per backbone pass.
  config.loss.in_batch_negatives = False

  config.optimizer = ml_collections.ConfigDict()
  config.optimizer.name = "adam"  # adam | adamw | sgd
  config.optimizer.learning_rate = 1e-4
  config.optimizer.schedule = "constant"  # constant | cosine (both after linear warmup)
  config.optimizer.warmup_steps = 0
  config.optimizer.weight_decay = 0.0  # adamw only
  config.optimizer.momentum = 0.9  # sgd only
  config.optimizer.grad_clip_norm = 0.0  # 0 disables

  config.train = ml_collections.ConfigDict()
  config.train.num_steps = 20_000
  config.train.log_every_steps = 100
  config.train.checkpoint_every_steps = 1_000
  config.train.max_checkpoints_to_keep = 3
  # NaN/Inf loss or parameters: 'stop' (keep the last good checkpoint) or 'skip' the update.
  config.train.on_nonfinite = "stop"
  config.train.max_skipped_steps = 100  # 'skip' mode: more skips than this in one run stop it
  config.train.tensorboard = True  # scalars in <workdir>/tensorboard

  config.eval = ml_collections.ConfigDict()
  config.eval.num_candidates = 100  # the positive + 99 sampled same-category negatives
  config.eval.ks = (1, 10, 50)
  config.eval.batch_size = 64
  config.eval.seed = 0
  config.eval.baselines = True  # random, popularity and untrained next to the model
  return config
