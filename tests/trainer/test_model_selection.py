"""Validation during training, the best state kept and used, and the cold-start and oracle
figures of the held-out evaluation."""

import json

import numpy as np
import pytest

from ctl_jax.serving import restore
from ctl_jax.trainer import loop
from input_pipeline.tools import synthetic_world


def _validations(workdir):
  lines = [json.loads(x) for x in open(workdir / "metrics.jsonl")]
  return {x["step"]: x for x in lines if "validation/hr@10" in x}


def test_best_validated_state_is_kept_and_evaluated(smoke_config, tmp_path):
  c = smoke_config
  c.train.num_steps = 6
  c.eval.every_steps = 2
  c.optimizer.learning_rate = 0.05  # large steps: the validation figure moves
  results = loop.train_and_evaluate(c, str(tmp_path))

  validations = _validations(tmp_path)
  assert sorted(validations) == [0, 2, 4, 6]
  figures = [validations[s]["validation/hr@10"] for s in (0, 2, 4, 6)]
  best_step = 2 * int(np.argmax(figures))  # the first of equal figures stays best
  run = loop.setup(c, str(tmp_path))
  assert run.best.all_steps() == [best_step]
  assert run.best.restore_meta()["validation"]["hr@10"] == pytest.approx(max(figures))
  assert results["step"] == best_step
  # Serving restores the same state; eval.checkpoint='latest' takes the last one instead.
  assert restore.restore(tmp_path).step == best_step
  c.eval.checkpoint = "latest"
  assert loop.evaluate_checkpoint(c, str(tmp_path))["step"] == 6
  assert restore.restore(tmp_path, config=c).step == 6


def test_resumed_run_keeps_the_best_figure_of_before(smoke_config, tmp_path):
  c = smoke_config
  c.train.num_steps = 6
  c.eval.every_steps = 2
  c.optimizer.learning_rate = 0.05
  whole = tmp_path / "whole"
  loop.train(loop.setup(c, str(whole)))
  split = tmp_path / "split"
  loop.train(loop.setup(c, str(split)), stop_after_step=4)
  loop.train(loop.setup(c, str(split)))
  assert _validations(whole).keys() == _validations(split).keys()
  for step, line in _validations(whole).items():
    assert _validations(split)[step]["validation/hr@10"] == pytest.approx(line["validation/hr@10"])
  assert (loop.setup(c, str(split)).best.all_steps()
          == loop.setup(c, str(whole)).best.all_steps())


def test_held_out_metrics_report_unseen_positives_and_the_oracle(smoke_config, tmp_path,
                                                                  stl_root):
  c = smoke_config
  c.train.num_steps = 2
  c.eval.every_steps = 0
  results = loop.train_and_evaluate(c, str(tmp_path))
  run = loop.setup(c, str(tmp_path))
  data = run.data
  seen = set(data.stl.pair_product[data.train.pairs].tolist())
  unseen = [p not in seen for p in data.stl.pair_product[data.test.pairs].tolist()]
  assert results["num_unseen"] == sum(unseen) > 0
  assert results["num_queries"] == len(unseen)
  for key in ("auc_unseen", "hr@10_unseen"):
    assert 0.0 <= results[key] <= 1.0
  # The oracle knows the latent styles (beside the data folder): near the ceiling, far above
  # chance; it is exactly computable from the latents.
  latents = json.loads(synthetic_world.latents_path(stl_root).read_text())
  oracle = results["baselines"]["oracle"]
  assert oracle["auc"] > 0.85 and oracle["hr@10"] > 0.6
  assert oracle["auc"] > results["baselines"]["random"]["auc"] + 0.3
  test = data.test.pairs
  scene_style = [latents["scene_style"][data.stl.scenes[s]] for s in data.stl.pair_scene[test]]
  positive_style = [latents["product_style"][data.stl.products[p]]
                    for p in data.stl.pair_product[test]]
  assert scene_style == positive_style  # every positive is of its scene's style
  c.eval.latents = "none"
  assert "oracle" not in loop.evaluate_checkpoint(c, str(tmp_path))["baselines"]


def test_validation_of_an_empty_split_is_a_clear_error(smoke_config, tmp_path):
  c = smoke_config
  c.data.validation_fraction = 0.0
  run = loop.setup(c, str(tmp_path))
  state = run.fresh_state()
  with pytest.raises(ValueError, match="validation split is empty"):
    run.task.evaluate(c, run.data, run.model, run.mesh, state, None, split="validation")

