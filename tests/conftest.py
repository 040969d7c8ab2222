"""Test session set-up: 4 fake CPU devices, TensorFlow kept off accelerators, shared small data."""

import os

# Before JAX is imported anywhere: four CPU devices, so sharded code runs on a real 4-way mesh.
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                           + " --xla_force_host_platform_device_count=4").strip()
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import jax  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

tf.config.set_visible_devices([], "GPU")
# Tests compile many small programs once each: cheaper compilation beats faster execution.
# Tests that time-consuming training runs switch it back (see `optimized_compilation`).
jax.config.update("jax_disable_most_optimizations", True)


@pytest.fixture
def optimized_compilation():
  """Full XLA optimisation for tests that run many steps of one program."""
  jax.config.update("jax_disable_most_optimizations", False)
  yield
  jax.config.update("jax_disable_most_optimizations", True)

from input_pipeline.tools import synthetic_ctl, synthetic_stl  # noqa: E402


@pytest.fixture(scope="session")
def stl_root(tmp_path_factory):
  """A small generated STL dataset (400 scenes, small images), shared by the session."""
  root = tmp_path_factory.mktemp("stl")
  synthetic_stl.write_stl_dataset(root, num_scenes=400, seed=7, scene_size=(72, 96),
                                  product_size=48, workers=1)
  return root


@pytest.fixture
def smoke_config(stl_root):
  from configs import smoke
  config = smoke.get_config()
  config.data.root = str(stl_root)
  return config


@pytest.fixture(scope="session")
def ctl_root(tmp_path_factory):
  """A small generated CTL dataset (160 outfit collages, small images), shared by the session."""
  root = tmp_path_factory.mktemp("ctl")
  synthetic_ctl.write_ctl_dataset(root, num_outfits=160, seed=5, image_size=96, workers=1)
  return root


@pytest.fixture
def product_smoke_config(ctl_root):
  from configs import product_smoke
  config = product_smoke.get_config()
  config.data.root = str(ctl_root)
  return config


def saved_workdir(config, workdir):
  """A workdir with checkpoints at steps 1 and 2 of `config`'s fresh state (no training)."""
  from ctl_jax.trainer import loop
  run = loop.setup(config, str(workdir))
  for step in (1, 2):
    run.checkpointer.save(step, run.fresh_state(), run.meta(), force=True)
  run.checkpointer.wait()
  run.close()
  return str(workdir)


@pytest.fixture(scope="session")
def scene_workdir(stl_root, tmp_path_factory):
  """A scene workdir of the smoke config with two checkpoints and its exported catalogue."""
  from configs import smoke
  from ctl_jax.serving import export
  config = smoke.get_config()
  config.data.root = str(stl_root)
  workdir = saved_workdir(config, tmp_path_factory.mktemp("scene_work"))
  export.export_embeddings(config, workdir, str(stl_root))
  return workdir


@pytest.fixture(name="saved_workdir")
def saved_workdir_fixture():
  """`saved_workdir(config, workdir)`, for tests that need checkpoints of their own config."""
  return saved_workdir
