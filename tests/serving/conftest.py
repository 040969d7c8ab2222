"""A trained-looking scene workdir and its exported catalogue, shared by the serving tests."""

import jax
import pytest

from ctl_jax.serving import export, scene_predictor
from ctl_jax.trainer import loop


@pytest.fixture(scope="session")
def exported(stl_root, tmp_path_factory):
  """A workdir with a (perturbed, so not the fresh init) checkpoint and its exported catalogue."""
  from configs import smoke
  config = smoke.get_config()
  config.data.root = str(stl_root)
  workdir = str(tmp_path_factory.mktemp("work"))
  run = loop.setup(config, workdir)
  state = run.fresh_state()
  state = state.replace(step=state.step + 3, params=jax.tree.map(lambda x: x * 1.1, state.params))
  run.checkpointer.save(3, state, run.meta(), force=True)
  run.checkpointer.wait()
  manifest = export.export_embeddings(config, workdir, str(stl_root), dtype="float32")
  return config, workdir, manifest, run.data


@pytest.fixture(scope="session")
def predictor(exported):
  return scene_predictor.restore_scene_predictor(exported[1])
