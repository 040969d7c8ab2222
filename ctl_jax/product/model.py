"""The product-based Complete-The-Look model (Li et al. 2020): backbone, style extractor, category
classifier, and (for the proxy loss) one learned proxy per training outfit.

    style extractor      Dense -> BatchNorm -> ReLU -> Dropout(0.5) -> Dense(128) -> L2-normalise
    category classifier  Dense -> ReLU -> Dropout -> Dense(num_categories)

Both read the backbone's pooled global vector and train jointly. Batches hold either item crops
(`anchor`, `positive`, `negative`) or their cached backbone features (`*_global`).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from ctl_jax.nn import backbones, example_major
from ctl_jax.nn.heads import ProjectionHead

ROLES = ("anchor", "positive", "negative")


class CategoryClassifier(nn.Module):
  """Two fully connected layers over the CTL labels; returns logits."""

  hidden: int
  num_categories: int
  dropout: float = 0.5
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    x = nn.relu(nn.Dense(self.hidden, dtype=self.dtype)(x))
    x = nn.Dropout(self.dropout, deterministic=not train)(x)
    return nn.Dense(self.num_categories, dtype=self.dtype)(x).astype(jnp.float32)


class ProductModel(nn.Module):
  """Backbone + style extractor + category classifier (+ outfit proxies when `num_proxies`)."""

  backbone: nn.Module
  num_categories: int
  embed_dim: int = 128
  style_hidden: int = 256
  classifier_hidden: int = 256
  dropout: float = 0.5
  num_proxies: int = 0  # training outfits, for the sampled-proxy loss; 0 = no proxy table
  freeze_backbone: bool = True
  dtype: Any = jnp.float32

  def setup(self) -> None:
    self.style = ProjectionHead(self.style_hidden, self.embed_dim, self.dropout, self.dtype)
    self.classifier = CategoryClassifier(self.classifier_hidden, self.num_categories,
                                         self.dropout, self.dtype)
    if self.num_proxies:
      self.proxies = self.param("proxies", nn.initializers.normal(1.0),
                                (self.num_proxies, self.embed_dim))

  def features(self, images: jax.Array, train: bool = False) -> dict[str, jax.Array]:
    """{'global': [B, G], 'regions': [B, h, w, C]} from one backbone pass."""
    return backbones.backbone_features(self.backbone, images, train=train,
                                       frozen=self.freeze_backbone)

  def heads(self, global_features: jax.Array, train: bool = False) -> dict:
    """Style embedding [..., D] (unit norm) and category logits [..., C] of backbone vectors."""
    x = global_features.astype(jnp.float32)
    return {"style": self.style(x, train), "logits": self.classifier(x, train)}

  def item_outputs(self, images: jax.Array, train: bool = False) -> dict:
    """Style, logits and the backbone's `global` vector of item crops."""
    glob = self.features(images, train)["global"]
    return {**self.heads(glob, train), "global": glob}

  def item_outputs_from_features(self, global_features: jax.Array, train: bool = False) -> dict:
    return {**self.heads(global_features, train), "global": global_features}

  def _tuple_features(self, batch, train: bool):
    """Anchor, positive [B, G] and negative [B, N, G] backbone vectors (images or cache)."""
    if "anchor_global" in batch:
      return tuple(batch[f"{r}_global"].astype(jnp.float32) for r in ROLES)
    n = batch["negative"].shape[1]
    images = example_major.merge([batch["anchor"][:, None], batch["positive"][:, None],
                                  batch["negative"]])
    a, p, neg = example_major.split(self.features(images, train)["global"], (1, 1, n))
    return a[:, 0], p[:, 0], neg

  def __call__(self, batch: dict[str, jax.Array], train: bool = False) -> dict:
    """Style embeddings and logits of every item of the batch's tuples.

    Returns:
      {'anchor', 'positive': [B, D], 'negative': [B, N, D]} style embeddings, the same keys
      with '_logits' ([.., C]), and 'proxies' [B, 1 + K, D] when the batch has `proxy_outfits`.
    """
    a, p, neg = self._tuple_features(batch, train)
    n = neg.shape[1]
    # One call of the heads over all items: BatchNorm normalises one population, as at inference.
    # Example-major order keeps each device's items local (example_major.py).
    out = self.heads(example_major.merge([a[:, None], p[:, None], neg]), train)
    result = {}
    for key, suffix in (("style", ""), ("logits", "_logits")):
      anchor, positive, negative = example_major.split(out[key], (1, 1, n))
      result["anchor" + suffix] = anchor[:, 0]
      result["positive" + suffix] = positive[:, 0]
      result["negative" + suffix] = negative
    if "proxy_outfits" in batch:
      result["proxies"] = jnp.take(self.proxies, batch["proxy_outfits"], axis=0)
    return result

  def init_all(self, images: jax.Array, category: jax.Array) -> dict[str, jax.Array]:
    """Creates every variable (backbone, heads, proxies)."""
    del category
    out = self.item_outputs(images)
    if self.num_proxies:
      out["proxies"] = self.proxies
    return out


def create_model(model_config: ml_collections.ConfigDict, num_categories: int,
                 num_proxies: int = 0) -> ProductModel:
  """The product model of the `model` config section (with `num_proxies` outfit proxies)."""
  # No region map: the backbone stops at the global vector's stage.
  stage = model_config.global_stage
  backbone = backbones.create_backbone(model_config.backbone, model_config.dtype,
                                       region_stage=stage, global_stage=stage,
                                       global_pool=model_config.global_pool)
  return ProductModel(backbone=backbone,
                      num_categories=num_categories, embed_dim=model_config.embed_dim,
                      style_hidden=model_config.style_hidden,
                      classifier_hidden=model_config.classifier_hidden,
                      dropout=model_config.dropout, num_proxies=num_proxies,
                      freeze_backbone=model_config.freeze_backbone,
                      dtype=backbones.DTYPES[model_config.dtype])
