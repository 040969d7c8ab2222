"""A 4-device mesh computes the same loss, gradients and update as a single device."""

import functools

import jax
import numpy as np

from ctl_jax.product import model as product_model
from ctl_jax.product import steps as product_steps
from ctl_jax.scene import model as scene_model
from ctl_jax.scene import steps as scene_steps
from ctl_jax.trainer import optimizer, sharding
from ctl_jax.trainer import state as train_state


def test_four_devices_match_one_device(smoke_config):
  assert jax.device_count() >= 4, "conftest sets 4 fake CPU devices"
  smoke_config.model.freeze_backbone = False  # the backbone's BatchNorm must see the global batch
  # SGD keeps the update linear in the gradient (Adam's first step is lr * sign(g), which flips
  # on gradients that are zero up to rounding).
  smoke_config.optimizer.name = "sgd"
  smoke_config.optimizer.schedule = "constant"
  smoke_config.optimizer.warmup_steps = 0
  model = scene_model.create_model(smoke_config.model, num_categories=5)
  tx, schedule = optimizer.make_optimizer(smoke_config.optimizer, 10)
  size = smoke_config.input.image_size
  rng = np.random.default_rng(0)
  batch = {"scene": rng.normal(size=(8, size, size, 3)).astype(np.float32),
           "positive": rng.normal(size=(8, size, size, 3)).astype(np.float32),
           "negative": rng.normal(size=(8, 2, size, size, 3)).astype(np.float32),
           "category": rng.integers(0, 5, 8).astype(np.int32)}
  results = []
  for devices in (jax.devices()[:1], jax.devices()[:4]):
    mesh = sharding.make_mesh(devices)
    state = train_state.create_train_state(model, tx, jax.random.PRNGKey(1), size, mesh)
    global_batch = sharding.to_global(batch, mesh)
    assert len(global_batch["scene"].sharding.device_set) == len(devices)
    grad_fn = jax.value_and_grad(scene_steps.triplet_loss, has_aux=True)
    (loss, _), grads = jax.jit(functools.partial(grad_fn, model=model, margin=0.2,
                                                 reduction="mean"))(state.params, state,
                                                                    global_batch)
    new_state, metrics = jax.jit(functools.partial(
        scene_steps.train_step, model=model, margin=0.2, reduction="mean", schedule=schedule))(
            state, global_batch)
    results.append(jax.device_get((loss, grads, new_state.params, new_state.batch_stats)))
  (loss1, grads1, params1, stats1), (loss4, grads4, params4, stats4) = results
  assert loss1 > 0
  np.testing.assert_allclose(loss4, loss1, rtol=1e-5)
  # Equal up to float32 reduction order (the global batch statistics of a dozen BatchNorms are
  # summed per device, then across devices): 1e-3 of each tensor's scale. Per-device statistics
  # or a wrong sharding differ by tens of percent.
  close = lambda a, b: np.testing.assert_allclose(
      b, a, rtol=1e-3, atol=max(1e-3 * np.abs(a).max(), 1e-6))  # floor: leaves that are 0 + noise
  for a, b in zip(jax.tree.leaves(grads1), jax.tree.leaves(grads4)):
    close(a, b)
  for a, b in zip(jax.tree.leaves((params1, stats1)), jax.tree.leaves((params4, stats4))):
    close(a, b)


def _compiled_step_text(step, state, batch, mesh):
  return jax.jit(step).lower(state, sharding.to_global(batch, mesh)).compile().as_text()


def test_sharded_train_steps_keep_each_example_on_its_device(smoke_config,
                                                             product_smoke_config):
  # Per-example items flattened role-major (all scenes, then all positives...) would be
  # resharded with an all-to-all in every step; example-major order keeps them local. The only
  # collectives left are the reductions (BatchNorm statistics, loss, gradients).
  mesh = sharding.make_mesh(jax.devices()[:4])
  tx, schedule = optimizer.make_optimizer(smoke_config.optimizer, 10)
  rng = np.random.default_rng(0)
  size = smoke_config.input.image_size
  images = lambda *shape: rng.normal(size=shape + (size, size, 3)).astype(np.float32)
  labels = lambda *shape: rng.integers(0, 5, shape).astype(np.int32)

  scene = scene_model.create_model(smoke_config.model, num_categories=5)
  scene_state = train_state.create_train_state(scene, tx, jax.random.PRNGKey(1), size, mesh)
  scene_step = functools.partial(scene_steps.train_step, model=scene, margin=0.2,
                                 reduction="mean", schedule=schedule)
  scene_batch = {"scene": images(8), "positive": images(8), "negative": images(8, 3),
                 "category": labels(8)}

  product = product_model.create_model(product_smoke_config.model, num_categories=5)
  product_state = train_state.create_train_state(product, tx, jax.random.PRNGKey(1), size, mesh)
  product_step = functools.partial(
      product_steps.train_step, model=product, loss_name="triplet", schedule=schedule,
      settings={"margin": 0.2, "reduction": "mean"}, category_weight=0.1)
  product_batch = {"anchor": images(8), "positive": images(8), "negative": images(8, 3),
                   "anchor_category": labels(8), "positive_category": labels(8),
                   "negative_category": labels(8, 3)}

  proxy = product_model.create_model(product_smoke_config.model, num_categories=5, num_proxies=20)
  proxy_state = train_state.create_train_state(proxy, tx, jax.random.PRNGKey(1), size, mesh)
  proxy_step = functools.partial(
      product_steps.train_step, model=proxy, loss_name="proxy", schedule=schedule,
      settings={"temperature": 0.05}, category_weight=0.1)
  proxy_batch = {**product_batch, "proxy_outfits": labels(8, 4) * 4}

  for step, state, batch in ((scene_step, scene_state, scene_batch),
                             (product_step, product_state, product_batch),
                             (proxy_step, proxy_state, proxy_batch)):
    text = _compiled_step_text(step, state, batch, mesh)
    assert "all-reduce" in text  # the step really is partitioned across the 4 devices
    assert "all-to-all" not in text
    assert "all-gather" not in text
