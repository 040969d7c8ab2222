"""Distances and the triplet loss against values computed by hand."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ctl_jax.nn import losses
from ctl_jax.scene import distances


def _hand_example():
  # Two regions; the first points at the category, the second away from it.
  scene = jnp.array([[1.0, 0.0]])
  regions = jnp.array([[[1.0, 0.0], [0.0, 1.0]]])
  keys = jnp.array([[[1.0, 0.0], [0.0, 1.0]]])
  category = jnp.array([[1.0, 0.0]])
  products = jnp.array([[[0.0, 1.0], [1.0, 0.0]]])  # [B=1, N=2, D=2]
  return scene, regions, keys, category, products


def test_attention_weights_by_hand_and_closer_regions_weigh_more():
  _, _, keys, category, _ = _hand_example()
  a = distances.attention_weights(keys, category)
  # ||fhat_1 - e||^2 = 0 and ||fhat_2 - e||^2 = 2: softmax(-[0, 2]).
  expected = [1 / (1 + math.exp(-2)), math.exp(-2) / (1 + math.exp(-2))]
  np.testing.assert_allclose(a[0], expected, rtol=1e-6)
  assert a[0, 0] > a[0, 1]  # the region closer to the category query weighs more


def test_global_local_hybrid_by_hand():
  scene, regions, keys, category, products = _hand_example()
  a1 = 1 / (1 + math.exp(-2))
  a2 = 1 - a1
  w = distances.attention_weights(keys, category)
  d_g = distances.global_distance(scene, products)
  np.testing.assert_allclose(d_g[0], [2.0, 0.0], atol=1e-6)
  d_l = distances.local_distance(regions, w, products)
  # Product [0, 1]: region 1 is at squared distance 2, region 2 at 0.
  # Product [1, 0]: region 1 at 0, region 2 at 2.
  np.testing.assert_allclose(d_l[0], [2 * a1, 2 * a2], rtol=1e-6)
  d = distances.hybrid_distance(scene, regions, w, products)
  np.testing.assert_allclose(d[0], [(2 + 2 * a1) / 2, (0 + 2 * a2) / 2], rtol=1e-6)


def test_local_distance_decomposition_identity():
  """d_l = sum_i a_i ||f_i||^2 - 2 q_c.f_p + ||f_p||^2: the form that ranks by inner product."""
  k1, k2, k3 = jax.random.split(jax.random.PRNGKey(0), 3)
  regions = jax.random.normal(k1, (3, 7, 5))  # deliberately not unit-norm
  weights = jax.nn.softmax(jax.random.normal(k2, (3, 7)), -1)
  products = jax.random.normal(k3, (3, 4, 5))
  region_term = jnp.einsum("br,br->b", weights, jnp.sum(jnp.square(regions), -1))
  q = distances.category_query(regions, weights)
  decomposed = (region_term[:, None] - 2.0 * jnp.einsum("bd,bnd->bn", q, products)
                + jnp.sum(jnp.square(products), -1))
  np.testing.assert_allclose(decomposed, distances.local_distance(regions, weights, products),
                             rtol=1e-5, atol=1e-5)


def test_ranking_query_gives_exact_hybrid_distance_for_unit_vectors():
  keys = jax.random.split(jax.random.PRNGKey(1), 4)
  unit = lambda x: x / jnp.linalg.norm(x, axis=-1, keepdims=True)
  scene = unit(jax.random.normal(keys[0], (2, 8)))
  regions = unit(jax.random.normal(keys[1], (2, 9, 8)))
  weights = jax.nn.softmax(jax.random.normal(keys[2], (2, 9)), -1)
  products = unit(jax.random.normal(keys[3], (2, 6, 8)))
  v = distances.ranking_query(scene, regions, weights)
  np.testing.assert_allclose(distances.distance_from_query(v, products),
                             distances.hybrid_distance(scene, regions, weights, products),
                             rtol=1e-5, atol=1e-5)
  # A shared catalogue [M, D] gives [B, M].
  catalogue = products[0]
  np.testing.assert_allclose(distances.distance_from_query(v, catalogue)[1],
                             distances.hybrid_distance(scene, regions, weights,
                                                       jnp.broadcast_to(catalogue, (2, 6, 8)))[1],
                             rtol=1e-5, atol=1e-5)


def test_triplet_hinge_by_hand():
  d_pos = jnp.array([0.5, 1.0, 0.1])
  d_neg = jnp.array([[0.6, 1.5], [0.9, 1.3], [0.0, 2.0]])
  # Terms max(0, d_pos - d_neg + 0.2):
  # row 0: 0.1, 0 | row 1: 0.3, 0 | row 2: 0.3, 0
  terms = [0.1, 0.0, 0.3, 0.0, 0.3, 0.0]
  assert losses.triplet_hinge(d_pos, d_neg, 0.2, "sum") == pytest.approx(sum(terms), rel=1e-6)
  assert losses.triplet_hinge(d_pos, d_neg, 0.2, "mean") == pytest.approx(sum(terms) / 6, rel=1e-6)
  # One negative per row as a vector.
  assert losses.triplet_hinge(d_pos, d_neg[:, 0], 0.2, "sum") == pytest.approx(0.7, rel=1e-6)
  # A wide margin makes every term active.
  assert losses.triplet_hinge(d_pos, d_neg, 5.0, "sum") == pytest.approx(
      float(np.sum(np.array(d_pos)[:, None] - np.array(d_neg) + 5.0)), rel=1e-6)
