"""The fields every task reads; `default.py` (scene) and `product_default.py` (product) add the
fields of their task and are the bases of every config.

Not a config to run by itself: it has no task. A field that the chosen task does not read is an
error at start-up (see ctl_jax/trainer/config_fields.py), so a typo or a field of the other task
never goes silently unused.
"""

import ml_collections

from configs import variants

VARIANTS: variants.Variants = {}  # none: the config as written


def get_config(variant: str = "") -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.task = ""  # set by the task's base config: scene | product
  config.seed = 0

  config.data = ml_collections.ConfigDict()
  config.data.root = ""  # the dataset folder (STL format for the scene task, CTL for product)
  config.data.images_dir = "images"  # relative to root, flat or nested ab/cd/ef/<sig>.jpg
  # Or a prepared TFDS dataset (python -m input_pipeline.tools.tfds_build stl_fashion|ctl_outfits),
  # which replaces `root`: its name and data_dir ("": ~/tensorflow_datasets).
  config.data.tfds_name = ""
  config.data.tfds_dir = ""
  config.data.strict = False  # True: stop at the first bad record, naming file/line/field
  # Decode every image once before training (cached per file in root/.image_check.json) and
  # drop the records of undecodable ones (listed in <workdir>/dropped_records.jsonl), instead
  # of failing mid-epoch. Folders only: TFDS builders check at build time.
  config.data.check_images = True
  config.data.category_map = ml_collections.ConfigDict()  # category path -> short label
  # images: decode every step | features: run the frozen backbone once per image into a cache
  # (extracted automatically on first use, or by `run.py extract-features`) and train the heads.
  config.data.source = "images"
  config.data.feature_dir = ""  # default: <workdir>/features
  # Share of the training scenes (outfits) held out as a validation split, by signature hash:
  # evaluated every eval.every_steps to pick the checkpoint evaluate/export use. 0: none.
  config.data.validation_fraction = 0.1

  config.features = ml_collections.ConfigDict()
  config.features.batch_size = 64  # images per extraction step (per process)
  config.features.shard_size = 1024  # images per cache file
  # Finished shards are verified before they are trusted (a damaged one is re-extracted):
  # checksum (CRC-32 of every file, ~0.1 s per 300 MB) | size (file sizes and headers only).
  config.features.verify = "checksum"

  config.input = ml_collections.ConfigDict()
  config.input.image_size = 224
  config.input.normalization = "caffe"  # what the Keras ImageNet ResNet-50 weights expect
  config.input.batch_size = 64  # global, split over all devices of all hosts
  config.input.prefetch = 2
  config.input.num_parallel_calls = -1  # tf.data.AUTOTUNE

  config.model = ml_collections.ConfigDict()
  config.model.backbone = "resnet50"  # resnet50 | resnet_shallow | resnet_small | resnet_tiny
  config.model.backbone_weights = ""  # Keras ImageNet .h5 (notop) supplied by the user
  config.model.freeze_backbone = True  # no gradients, no optimizer state for the backbone
  config.model.embed_dim = 128
  config.model.dropout = 0.1
  # The global vector: the stage whose map is pooled (5: the network's output, as in both
  # papers) and how: "mean" (the papers' average pooling), "mean_std" (each channel's mean and
  # standard deviation over the map) or "mean_std_2x2" (those of the map and of each quadrant);
  # the last two are for random-feature backbones, see nn/backbones.py.
  config.model.global_stage = 5
  config.model.global_pool = "mean"
  config.model.dtype = "float32"  # compute dtype; bfloat16 on accelerators, params stay f32

  config.loss = ml_collections.ConfigDict()
  config.loss.margin = 0.2  # triplet hinge margin on squared distances
  config.loss.reduction = "mean"  # mean | sum over the batch's triplet terms
  config.loss.num_negatives = 1  # negatives per (query, positive)

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
  config.eval.ks = (1, 10, 50)  # the K of the task's top-K metrics (HR@K, R@K)
  config.eval.batch_size = 64
  config.eval.seed = 0
  config.eval.baselines = True  # random, popularity, untrained (and oracle) next to the model
  # Validation every N steps (and at the last): `validation/...` in metrics.jsonl and
  # TensorBoard; the best state (by the task's selection metric) is kept in <workdir>/best.
  # 0: no validation.
  config.eval.every_steps = 250
  # Which state `train`'s final evaluation, `evaluate` and `export` use: best | latest.
  config.eval.checkpoint = "best"
  # The generator's latent styles, for the oracle baseline (the ceiling). "": <data.root>.latents
  # .json beside the data folder when it exists (generate-data writes it there); "none": no oracle.
  config.eval.latents = ""
  return variants.apply(config, variant, VARIANTS, "configs/base.py")
