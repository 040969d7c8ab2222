"""Orbax checkpoints: round trip, and a resumed run that ends where an uninterrupted one does."""

import jax
import numpy as np
import pytest

from ctl_jax.trainer import checkpoint, loop


def _leaves_equal(a, b):
  return all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def test_save_restore_round_trip(smoke_config, tmp_path):
  run = loop.setup(smoke_config, str(tmp_path))
  state = run.fresh_state()
  state = state.replace(step=state.step + 7,
                        params=jax.tree.map(lambda x: x + 0.5, state.params))
  run.checkpointer.save(7, state, {"categories": run.data.categories, "note": "x"}, force=True)
  run.checkpointer.wait()
  fresh = checkpoint.Checkpointer(tmp_path, save_every_steps=1, max_to_keep=2)
  restored, meta = fresh.restore(run.fresh_state())
  assert meta["note"] == "x" and int(restored.step) == 7
  assert _leaves_equal(jax.device_get(restored), jax.device_get(state))
  assert not _leaves_equal(jax.device_get(restored.params),
                           jax.device_get(run.fresh_state().params))
  # Shardings follow the target, so the restored state is ready for the jitted step.
  leaf = jax.tree.leaves(restored.params)[0]
  assert leaf.sharding.is_fully_replicated and len(leaf.sharding.device_set) == jax.device_count()


def test_resume_after_interruption_matches_uninterrupted_run(smoke_config, tmp_path):
  smoke_config.train.num_steps = 6
  smoke_config.train.checkpoint_every_steps = 2
  straight = loop.train(loop.setup(smoke_config, str(tmp_path / "straight")))

  interrupted = tmp_path / "interrupted"
  stopped = loop.train(loop.setup(smoke_config, str(interrupted)), stop_after_step=3)
  assert int(stopped.step) == 3
  run = loop.setup(smoke_config, str(interrupted))  # a new run of the same command
  assert run.checkpointer.latest_step() == 3
  resumed = loop.train(run)
  assert int(resumed.step) == 6
  np.testing.assert_equal(jax.device_get(resumed.params), jax.device_get(straight.params))
  np.testing.assert_equal(jax.device_get(resumed.opt_state), jax.device_get(straight.opt_state))


def test_checkpoint_of_other_categories_is_refused(smoke_config, tmp_path):
  run = loop.setup(smoke_config, str(tmp_path))
  state = run.fresh_state()
  run.checkpointer.save(1, state, {"categories": ["Hats"]}, force=True)
  run.checkpointer.wait()
  with pytest.raises(ValueError, match="categories"):
    loop.setup(smoke_config, str(tmp_path)).restore_or_init()
