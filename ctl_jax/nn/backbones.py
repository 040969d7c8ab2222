"""ResNet backbones that give the pooled global vector and the stage-3 region map in one pass.

The layout mirrors keras.applications.ResNet50 layer for layer and name for name (`conv1_conv`,
`conv4_block6_out`, biased convolutions, stride on the first 1x1 of a block, BatchNorm epsilon
1.001e-5), so the Keras ImageNet weight file maps onto it one to one. Output at 224 px for
ResNet-50: `global` [B, 2048] (average-pooled stage 5) and `regions` [B, 14, 14, 1024]
(`conv4_block6_out`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

BN_EPSILON = 1.001e-5  # keras.applications.resnet


class Bottleneck(nn.Module):
  """Keras `block1`: 1x1 (strided) -> 3x3 -> 1x1 with a projection shortcut when asked."""

  filters: int
  stride: int
  project: bool
  train: bool
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    conv = lambda f, k, s, name: nn.Conv(f, (k, k), (s, s), padding="SAME" if k > 1 else "VALID",
                                         dtype=self.dtype, name=name)
    norm = lambda name: nn.BatchNorm(use_running_average=not self.train, epsilon=BN_EPSILON,
                                     dtype=self.dtype, name=name)
    shortcut = x
    if self.project:
      shortcut = norm("0_bn")(conv(4 * self.filters, 1, self.stride, "0_conv")(x))
    y = nn.relu(norm("1_bn")(conv(self.filters, 1, self.stride, "1_conv")(x)))
    y = nn.relu(norm("2_bn")(conv(self.filters, 3, 1, "2_conv")(y)))
    y = norm("3_bn")(conv(4 * self.filters, 1, 1, "3_conv")(y))
    return nn.relu(shortcut + y)


class ResNet(nn.Module):
  """A Keras-layout ResNet v1 with bottleneck blocks.

  Attributes:
    stage_sizes: blocks per stage (conv2..conv5); ResNet-50 is (3, 4, 6, 3).
    widths: bottleneck widths per stage (outputs are 4x); ResNet-50 is (64, 128, 256, 512).
    stem_width: filters of the 7x7 stem.
    region_stage: the stage (2..5) whose output map is returned as `regions`.
    global_stage: the stage (2..5) whose average-pooled map is returned as `global` (5: the
      network's output; the stages after it are not computed).
    multiscale: hypercolumns instead: `global` concatenates the pooled maps of stages
      2..global_stage, and `regions` the maps of stages 2..region_stage, each averaged down to
      the region grid. Early stages keep colour and texture that the later ones mix away.
    global_pool: how a map becomes the global vector: "mean" (the papers' average pooling) or
      "mean_std" (the mean and the standard deviation of each channel over the map, twice as
      wide: the spread of a channel over the image is what tells, say, two colours apart from
      their blend, and random features need it most) or "mean_std_2x2" (those statistics of
      the whole map and of each quadrant, five times as wide: where each colour is, say a top's
      above the trousers'); see `pool`.
  """

  stage_sizes: Sequence[int] = (3, 4, 6, 3)
  widths: Sequence[int] = (64, 128, 256, 512)
  stem_width: int = 64
  region_stage: int = 4  # conv4 = Keras "conv4_block6_out", the paper's conv4_6
  global_stage: int = 5
  multiscale: bool = False
  global_pool: str = "mean"
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, images: jax.Array, train: bool = False) -> dict[str, jax.Array]:
    x = images.astype(self.dtype)
    x = nn.Conv(self.stem_width, (7, 7), (2, 2), padding=((3, 3), (3, 3)), dtype=self.dtype,
                name="conv1_conv")(x)
    x = nn.BatchNorm(use_running_average=not train, epsilon=BN_EPSILON, dtype=self.dtype,
                     name="conv1_bn")(x)
    x = nn.relu(x)
    # Keras pads with zeros before the pool; after a ReLU that equals -inf padding.
    x = nn.max_pool(x, (3, 3), (2, 2), padding=((1, 1), (1, 1)))
    maps = {}
    last = max(self.region_stage, self.global_stage)
    for stage, (blocks, width) in enumerate(zip(self.stage_sizes, self.widths), start=2):
      if stage > last:
        break
      for block in range(1, blocks + 1):
        x = Bottleneck(width, stride=(1 if stage == 2 else 2) if block == 1 else 1,
                       project=block == 1, train=train, dtype=self.dtype,
                       name=f"conv{stage}_block{block}")(x)
      maps[stage] = x.astype(jnp.float32)
    if not self.multiscale:
      return {"global": pool(maps[self.global_stage], self.global_pool),
              "regions": maps[self.region_stage]}
    grid = maps[self.region_stage].shape[1:3]
    regions = [_average_down(m, 2 ** (self.region_stage - s), grid)
               for s, m in maps.items() if s <= self.region_stage]
    pooled = [pool(m, self.global_pool) for s, m in maps.items() if s <= self.global_stage]
    return {"global": jnp.concatenate(pooled, -1), "regions": jnp.concatenate(regions, -1)}


# Spatial pyramids: the cells per side of each level.
PYRAMID_LEVELS = {"mean_std_2x2": (1, 2), "mean_std_4x4": (1, 2, 4)}
GLOBAL_POOLS = ("mean", "mean_std", *PYRAMID_LEVELS)


def pool(x: jax.Array, how: str) -> jax.Array:
  """[B, H, W, C] -> the global vector of a map.

  "mean": [B, C], the papers' average pooling. "mean_std": [B, 2C], each channel's mean, then
  its standard deviation over H, W. "mean_std_2x2": [B, 10C], a spatial pyramid (Lazebnik et al.
  2006) of those statistics: the whole map, then each quadrant (row-major), so the vector also
  says where in the image each colour and texture is (a top's colour above the trousers').
  "mean_std_4x4": [B, 42C], the same pyramid with a third level of 4 x 4 cells.
  """
  if how in PYRAMID_LEVELS:
    return jnp.concatenate([pool(cell, "mean_std") for n in PYRAMID_LEVELS[how]
                            for cell in _cells(x, n)], -1)
  mean = jnp.mean(x, axis=(1, 2))
  if how == "mean":
    return mean
  variance = jnp.mean(jnp.square(x - mean[:, None, None, :]), axis=(1, 2))
  return jnp.concatenate([mean, jnp.sqrt(variance + 1e-6)], -1)


def _cells(x: jax.Array, n: int) -> list[jax.Array]:
  """The n x n cells of [B, H, W, C], row-major (the last row and column take any remainder)."""
  rows = [i * x.shape[1] // n for i in range(n + 1)]
  cols = [j * x.shape[2] // n for j in range(n + 1)]
  return [x[:, rows[i]:rows[i + 1], cols[j]:cols[j + 1]] for i in range(n) for j in range(n)]


def _average_down(x: jax.Array, factor: int, grid: tuple[int, int]) -> jax.Array:
  """[B, H, W, C] -> [B, *grid, C]: the mean of each factor x factor block (partial blocks at
  the border average what they hold), as the stride-2 stages shrink the map."""
  if factor == 1:
    return x
  out = nn.avg_pool(x, (factor, factor), (factor, factor), padding="SAME",
                    count_include_pad=False)
  if out.shape[1:3] != tuple(grid):
    out = jax.image.resize(out, (out.shape[0], *grid, out.shape[3]), "linear")
  return out


def resnet50(dtype: Any = jnp.float32) -> ResNet:
  return ResNet(stage_sizes=(3, 4, 6, 3), widths=(64, 128, 256, 512), stem_width=64, dtype=dtype)


def resnet_small(dtype: Any = jnp.float32) -> ResNet:
  """One block per stage, 1/4 widths (global 512-d, regions 256-d): the CPU demo's backbone."""
  return ResNet(stage_sizes=(1, 1, 1, 1), widths=(16, 32, 64, 128), stem_width=16, dtype=dtype)


def resnet_shallow(dtype: Any = jnp.float32) -> ResNet:
  """ResNet-50's widths with one block per stage (global 2048-d, regions 1024-d at stage 4): a
  wide random-feature extractor for the frozen demos, where width, not depth, keeps what the
  pixels show (a random network's features separate more when it has more channels)."""
  return ResNet(stage_sizes=(1, 1, 1, 1), widths=(64, 128, 256, 512), stem_width=64, dtype=dtype)


def resnet_tiny(dtype: Any = jnp.float32) -> ResNet:
  """One block per stage, 1/16 widths: for unit tests."""
  return ResNet(stage_sizes=(1, 1, 1, 1), widths=(4, 8, 16, 32), stem_width=8, dtype=dtype)


BACKBONES = {"resnet50": resnet50, "resnet_shallow": resnet_shallow,
             "resnet_small": resnet_small, "resnet_tiny": resnet_tiny}
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def create_backbone(name: str, dtype: str, region_stage: int = 4, global_stage: int = 5,
                    multiscale: bool = False, global_pool: str = "mean") -> ResNet:
  """The backbone `model.backbone` computing in `model.dtype` (parameters stay float32), whose
  `regions` are the output map of stage `region_stage` (2-5; 4 is the paper's conv4_6) and
  `global` the pooled map of stage `global_stage` (5: the paper's); `multiscale`: the
  hypercolumns of the stages up to those; `global_pool` one of GLOBAL_POOLS (see `ResNet`)."""
  if name not in BACKBONES:
    raise ValueError(f"model.backbone={name!r}; choose from {list(BACKBONES)}")
  if dtype not in DTYPES:
    raise ValueError(f"model.dtype={dtype!r}; choose from {list(DTYPES)}")
  for field, stage in (("region_stage", region_stage), ("global_stage", global_stage)):
    if stage not in (2, 3, 4, 5):
      raise ValueError(f"model.{field}={stage!r}; choose from 2, 3, 4, 5")
  if global_pool not in GLOBAL_POOLS:
    raise ValueError(f"model.global_pool={global_pool!r}; choose from {list(GLOBAL_POOLS)}")
  return BACKBONES[name](DTYPES[dtype]).clone(region_stage=region_stage,
                                              global_stage=global_stage, multiscale=multiscale,
                                              global_pool=global_pool)


def backbone_features(backbone: nn.Module, images: jax.Array, *, train: bool,
                      frozen: bool) -> dict[str, jax.Array]:
  """{'global': [B, G], 'regions': [B, h, w, C]} of `images` from one backbone pass.

  A frozen backbone (the papers' setting) runs in inference mode (BatchNorm running statistics)
  and passes no gradient back; the train state keeps its parameters out of the optimizer (see
  `trainer.state.split_params`).
  """
  out = backbone(images, train=train and not frozen)
  if frozen:
    out = jax.tree.map(jax.lax.stop_gradient, out)
  return out
