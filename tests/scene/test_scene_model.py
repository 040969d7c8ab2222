"""Backbone layout and outputs, one backbone pass per image, frozen versus fine-tuned training."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ctl_jax.nn import backbones
from ctl_jax.scene import model as scene_model
from ctl_jax.scene import steps as scene_steps
from ctl_jax.trainer import optimizer, sharding
from ctl_jax.trainer import state as train_state


def test_resnet50_outputs_and_parameter_count_match_keras():
  model = backbones.resnet50()
  x = jax.ShapeDtypeStruct((2, 224, 224, 3), jnp.float32)
  variables = jax.eval_shape(lambda x: model.init(jax.random.PRNGKey(0), x), x)
  out = jax.eval_shape(lambda v, x: model.apply(v, x), variables, x)
  assert out["global"].shape == (2, 2048)
  assert out["regions"].shape == (2, 14, 14, 1024)  # conv4_block6_out
  count = lambda tree: sum(int(np.prod(a.shape)) for a in jax.tree.leaves(tree))
  # keras.applications.ResNet50(include_top=False): 23,534,592 trainable + 53,120 BN statistics.
  assert count(variables["params"]) == 23_534_592
  assert count(variables["batch_stats"]) == 53_120
  assert "conv4_block6" in variables["params"] and "conv5_block3" in variables["params"]


def _count_convs(fn, *args):
  return str(jax.make_jaxpr(fn)(*args)).count("conv_general_dilated")


def test_one_backbone_pass_gives_global_and_regions(smoke_config):
  model = scene_model.create_model(smoke_config.model, num_categories=3)
  size = smoke_config.input.image_size
  batch = {"scene": jnp.zeros((2, size, size, 3)), "positive": jnp.zeros((2, size, size, 3)),
           "negative": jnp.zeros((2, 2, size, size, 3)), "category": jnp.zeros((2,), jnp.int32)}
  variables = model.init(jax.random.PRNGKey(0), batch["scene"], batch["category"],
                         method=model.init_all)
  backbone_convs = _count_convs(lambda x: model.apply(variables, x, method=model.features),
                                batch["scene"])
  model_convs = _count_convs(lambda b: model.apply(variables, b), batch)
  assert backbone_convs > 0 and model_convs == backbone_convs  # scenes + products in one pass


@pytest.mark.parametrize("freeze", [True, False])
def test_frozen_backbone_has_no_gradients_or_optimizer_state(smoke_config, freeze):
  smoke_config.model.freeze_backbone = freeze
  smoke_config.optimizer.schedule = "constant"
  smoke_config.optimizer.warmup_steps = 0  # the first step must move the parameters
  mesh = sharding.make_mesh()
  model = scene_model.create_model(smoke_config.model, num_categories=4)
  tx, schedule = optimizer.make_optimizer(smoke_config.optimizer, 10)
  size = smoke_config.input.image_size
  state = train_state.create_train_state(model, tx, jax.random.PRNGKey(0), size, mesh)
  assert ("backbone" in state.params) != freeze
  assert ("backbone" in state.frozen_params) == freeze
  n_opt = sum(np.prod(x.shape) for x in jax.tree.leaves(state.opt_state))
  n_params = sum(np.prod(x.shape) for x in jax.tree.leaves(state.params))
  assert n_opt <= 2 * n_params + 8  # Adam: two moments of the trainable parameters only
  rng = np.random.default_rng(0)
  batch = {"scene": rng.normal(size=(4, size, size, 3)).astype(np.float32),
           "positive": rng.normal(size=(4, size, size, 3)).astype(np.float32),
           "negative": rng.normal(size=(4, 1, size, size, 3)).astype(np.float32),
           "category": np.arange(4, dtype=np.int32)}
  before = jax.device_get(state)
  step = jax.jit(functools.partial(scene_steps.train_step, model=model, margin=1.0,
                                   reduction="mean",
                                   schedule=lambda s: 1e-3))
  after, _ = step(state, sharding.to_global(batch, mesh))
  after = jax.device_get(after)
  all_params = lambda s: {**s.frozen_params, **s.params}
  backbone_changed = not all(np.array_equal(a, b) for a, b in zip(
      jax.tree.leaves(all_params(before)["backbone"]),
      jax.tree.leaves(all_params(after)["backbone"])))
  stats_changed = not all(np.array_equal(a, b) for a, b in zip(
      jax.tree.leaves(before.batch_stats["backbone"]),
      jax.tree.leaves(after.batch_stats["backbone"])))
  heads_changed = not all(np.array_equal(a, b) for a, b in zip(
      jax.tree.leaves(before.params["heads"]), jax.tree.leaves(after.params["heads"])))
  assert heads_changed
  assert backbone_changed == (not freeze) and stats_changed == (not freeze)


def test_bfloat16_compute_keeps_float32_parameters_and_the_float32_loss(smoke_config):
  """model.dtype='bfloat16' computes in bf16 (accelerators) with the same f32 parameters."""
  mesh = sharding.make_mesh()
  size = smoke_config.input.image_size
  rng = np.random.default_rng(0)
  batch = sharding.to_global(
      {"scene": rng.normal(size=(8, size, size, 3)).astype(np.float32),
       "positive": rng.normal(size=(8, size, size, 3)).astype(np.float32),
       "negative": rng.normal(size=(8, 1, size, size, 3)).astype(np.float32),
       "category": np.arange(8, dtype=np.int32) % 4}, mesh)
  tx, _ = optimizer.make_optimizer(smoke_config.optimizer, 10)
  losses = {}
  for dtype in ("float32", "bfloat16"):
    smoke_config.model.dtype = dtype
    model = scene_model.create_model(smoke_config.model, num_categories=4)
    state = train_state.create_train_state(model, tx, jax.random.PRNGKey(0), size, mesh)
    assert {x.dtype for x in jax.tree.leaves(state.params)} == {jnp.dtype("float32")}
    features = lambda x: model.apply(state.variables(), x, method=model.features)  # noqa: B023
    jaxpr = str(jax.make_jaxpr(features)(batch["scene"]))
    assert ("bf16[" in jaxpr) == (dtype == "bfloat16")  # the convolutions compute in `dtype`
    losses[dtype] = float(jax.jit(functools.partial(
        scene_steps.triplet_loss, model=model, margin=1.0, reduction="mean"))(
            state.params, state, batch)[0])
  assert losses["float32"] > 0
  assert losses["bfloat16"] == pytest.approx(losses["float32"], rel=0.05)
