"""A trained-looking scene workdir and its exported catalogue, shared by the serving tests."""

import jax
import pytest

from ctl_jax.serving import export, scene_predictor
from ctl_jax.trainer import loop


def save_perturbed_checkpoint(config, workdir: str, step: int):
  """Saves the config's model at `step`, its parameters scaled so that it is not the fresh
  initialisation (which a bug could silently restore instead); returns the trainer's Run."""
  run = loop.setup(config, workdir)
  state = run.fresh_state()
  state = state.replace(step=state.step + step,
                        params=jax.tree.map(lambda x: x * 1.1, state.params))
  run.checkpointer.save(step, state, run.meta(), force=True)
  run.checkpointer.wait()
  return run


@pytest.fixture(scope="session")
def perturbed_checkpoint():
  """`save_perturbed_checkpoint`, for tests that build workdirs of their own."""
  return save_perturbed_checkpoint


@pytest.fixture(scope="session")
def exported(stl_root, tmp_path_factory):
  """A workdir with a (perturbed, so not the fresh init) checkpoint and its exported catalogue."""
  from configs import smoke
  config = smoke.get_config()
  config.data.root = str(stl_root)
  workdir = str(tmp_path_factory.mktemp("work"))
  run = save_perturbed_checkpoint(config, workdir, step=3)
  manifest = export.export_embeddings(config, workdir, str(stl_root), dtype="float32")
  return config, workdir, manifest, run.data


@pytest.fixture(scope="session")
def predictor(exported):
  return scene_predictor.restore_scene_predictor(exported[1])
