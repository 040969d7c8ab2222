"""Product-based CTL (Li et al., KDD 2020), paper settings: ResNet-50 at 224 px, style extractor
(two FC layers, BatchNorm, dropout 0.5, 128-d, L2-normalised) and category classifier trained
jointly, triplet loss with category-restricted negatives; R@{1,5,10} over corpora of 200 items
from outfits of exactly five items, and FITB over four choices.

Train on a CTL-format folder (raw_train.tsv, raw_test.tsv, triplet_train.tsv, fitb_eval.json,
images/<collage sig>.jpg):

  python run.py train --config configs/product_default.py --workdir runs/ctl \
      --config.data.root=/data/ctl \
      --config.model.backbone_weights=/weights/resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5

The paper's other training methods are config overrides (see README, "Product-based CTL"):
  --config.loss.negatives=random                         triplet, random negatives
  --config.loss.name=contrastive                         siamese, 1:1 negatives:positives
  --config.loss.name=contrastive --config.loss.num_negatives=16    siamese, 16:1
  --config.loss.name=proxy                               classification with sampled proxies
It prints the held-out table (r@1/5/10, restricted_r@1/5/10, fitb, category_accuracy) of the
model next to the random, popularity and untrained baselines, and writes it to
<workdir>/eval_metrics.json. The base of every product config: it defines the product task's
fields on top of configs/base.py. Hardware: an accelerator (the backbone is fine-tuned); a
2-core CPU runs it only very slowly.
"""

from configs import base, variants

VARIANTS: variants.Variants = {}  # none: the config as written


def get_config(variant: str = ""):
  config = base.get_config()
  config.task = "product"

  # Fraction of training outfits kept (deterministic by signature, nested: the outfits of a
  # smaller fraction are among those of a larger one). The training-set-size sweep varies it.
  config.data.train_fraction = 1.0
  # sample: the paper's sampler, every epoch anew | file: the triplets of triplet_train.tsv
  config.data.triplets = "sample"

  config.input.batch_size = 64

  # The paper trains the style extractor and classifier on top of a pretrained CNN, end to end.
  config.model.freeze_backbone = False
  config.model.embed_dim = 128
  config.model.style_hidden = 512
  config.model.classifier_hidden = 512
  config.model.dropout = 0.5

  config.loss.name = "triplet"  # triplet | contrastive | proxy
  # auto: the paper's rule for the loss (triplet: category; contrastive, proxy: random) |
  # category (an item of the positive's category) | random (any item), from another outfit
  config.loss.negatives = "auto"
  # config.loss.num_negatives (base): 1, or 16 for the paper's 16:1 siamese
  config.loss.contrastive_margin = 1.0  # siamese: negative pairs closer than this cost
  config.loss.temperature = 0.05  # proxy: softmax temperature on cosine similarities
  config.loss.num_proxies = 2048  # proxy: other outfits' proxies sampled per row (the paper's)
  config.loss.category_weight = 1.0  # weight of the category classifier's cross-entropy

  config.eval.corpus_size = 200  # N of the retrieval corpus
  config.eval.outfit_size = 5  # query outfits have exactly this many items (0: any size)
  config.eval.ks = (1, 5, 10)
  # auto: data.root/fitb_eval.json if present, else sampled | file | sampled
  config.eval.fitb = "auto"
  config.eval.popularity_neighbors = 10  # the popularity baseline's visual frequency (see README)
  config.eval.popularity_train_items = 2000  # training items per category it compares with
  return variants.apply(config, variant, VARIANTS, "configs/product_default.py")
