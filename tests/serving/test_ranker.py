"""The ranker equals brute-force distances (order and values), resident, sharded and streamed."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ctl_jax.scene import distances
from ctl_jax.serving import ranker
from ctl_jax.trainer import sharding


def _random_scene(rng, b, r, d):
  """Non-unit vectors on purpose: the augmented form must not rely on unit norms."""
  f_s = rng.normal(size=(b, d)).astype(np.float32)
  f_i = rng.normal(size=(b, r, d)).astype(np.float32)
  w = jax.nn.softmax(jnp.asarray(rng.normal(size=(b, r)), jnp.float32), -1)
  return jnp.asarray(f_s), jnp.asarray(f_i), w


@pytest.mark.parametrize("chunk_rows", [None, 96, 1000])
def test_hybrid_top_k_equals_brute_force(chunk_rows):
  rng = np.random.default_rng(0)
  m, d, k = 437, 8, 25  # 437 rows: padding on 4 devices and a partial last chunk
  f_s, f_i, w = _random_scene(rng, 3, 5, d)
  products = rng.normal(size=(m, d)).astype(np.float32)
  brute = np.asarray(distances.hybrid_distance(
      f_s, f_i, w, jnp.broadcast_to(jnp.asarray(products), (3, m, d))))
  queries, const = ranker.hybrid_query(f_s, f_i, w)
  r = ranker.Ranker(products, chunk_rows=chunk_rows)
  assert r.mesh.size == 4 and r.streaming == (chunk_rows == 96)
  dist, ids = r.nearest(queries, const, k)
  expected = np.argsort(brute, axis=1, kind="stable")[:, :k]
  np.testing.assert_array_equal(ids, expected)
  np.testing.assert_allclose(dist, np.take_along_axis(brute, expected, 1), rtol=1e-5, atol=1e-4)


def test_l2_query_equals_squared_distance_and_whole_catalogue():
  rng = np.random.default_rng(1)
  products = rng.normal(size=(50, 6)).astype(np.float32)
  x = rng.normal(size=(2, 6)).astype(np.float32)
  brute = ((x[:, None, :] - products[None]) ** 2).sum(-1)
  q, c = ranker.l2_query(x)
  dist, ids = ranker.Ranker(products, chunk_rows=8).nearest(q, c, 50)
  np.testing.assert_array_equal(ids, np.argsort(brute, 1))  # k = the whole catalogue
  np.testing.assert_allclose(dist, np.sort(brute, 1), rtol=1e-5, atol=1e-4)


def test_unit_vectors_give_two_minus_inner_product():
  """For unit vectors the constant is 1 and d = 2 - v.f_p (the formula the evaluator uses)."""
  rng = np.random.default_rng(2)
  unit = lambda a: a / np.linalg.norm(a, axis=-1, keepdims=True)
  f_s, f_i = unit(rng.normal(size=(2, 4))), unit(rng.normal(size=(2, 3, 4)))
  w = jax.nn.softmax(jnp.asarray(rng.normal(size=(2, 3))), -1)
  products = unit(rng.normal(size=(10, 4))).astype(np.float32)
  q, c = ranker.hybrid_query(jnp.asarray(f_s, jnp.float32), jnp.asarray(f_i, jnp.float32), w)
  np.testing.assert_allclose(c, 1.0, atol=1e-6)
  dist, ids = ranker.Ranker(products).nearest(q, c, 10)
  v = np.asarray(q[:, :-1])
  np.testing.assert_allclose(dist, np.take_along_axis(2.0 - v @ products.T, ids, 1), atol=1e-5)


def test_one_device_mesh_and_bfloat16_rows():
  rng = np.random.default_rng(3)
  products = rng.normal(size=(64, 4)).astype(np.float32)
  q, c = ranker.l2_query(rng.normal(size=(1, 4)))
  exact = ranker.Ranker(products)
  r = ranker.Ranker(products, dtype=jnp.bfloat16,
                    mesh=sharding.make_mesh(jax.devices()[:1]))
  d_exact, _ = exact.nearest(q, c, 5)
  d_bf16, _ = r.nearest(q, c, 5)
  np.testing.assert_allclose(d_bf16, d_exact, rtol=0.05, atol=0.05)


def test_bad_requests_raise_clear_errors():
  r = ranker.Ranker(np.ones((3, 2), np.float16))
  with pytest.raises(ValueError, match="k=4 but the catalogue has 3 products"):
    r.search(np.ones((1, 3), np.float32), 4)
  with pytest.raises(ValueError, match="width 3"):
    r.search(np.ones((1, 5), np.float32), 1)
  with pytest.raises(ValueError, match="empty"):
    ranker.Ranker(np.zeros((0, 2), np.float32))
