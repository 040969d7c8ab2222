"""Checkpoints that cannot serve the command: all damaged, absent, or of the other task. Each
ends with one clear error naming the workdir and what to do, never a KeyError or a log of
thousands of lines."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ctl_jax.serving import export, recommend, scene_predictor
from ctl_jax.trainer import checkpoint, loop

ROOT = Path(__file__).resolve().parents[2]


def _image(root):
  return str(next(Path(root).glob("images/**/*.jpg")))


def test_every_checkpoint_damaged_ends_in_one_short_error(scene_workdir, stl_root, tmp_path):
  """Orbax abandons the other reads of a damaged checkpoint; their echoes (TensorStore specs,
  'Event loop is closed') used to bury the one-line error in thousands of lines."""
  workdir = tmp_path / "work"
  shutil.copytree(scene_workdir, workdir)
  damaged = [p for p in workdir.glob("checkpoints/*/state/**/d/*") if p.is_file()]
  assert damaged
  for path in damaged:
    path.write_bytes(path.read_bytes()[:10])
  result = subprocess.run(
      [sys.executable, "run.py", "evaluate", "--config", "configs/smoke.py",
       f"--workdir={workdir}", f"--config.data.root={stl_root}"],
      cwd=ROOT, capture_output=True, text=True, timeout=300,
      env={**os.environ, "JAX_PLATFORMS": "cpu"})
  assert result.returncode == 1
  err = result.stderr
  for echo in ("Traceback", "Event loop is closed", "TensorStore("):
    assert echo not in err, err[-3000:]
  assert len(err.splitlines()) < 60, err[-3000:]
  final = err[err.index("CorruptCheckpointError: no usable checkpoint"):]
  assert "checkpoint step 2" in final and "checkpoint step 1" in final
  assert "Move" in final and "to start from scratch" in final


def test_no_checkpoint_says_train_first(smoke_config, tmp_path):
  with pytest.raises(checkpoint.NoCheckpointError, match="work does not exist: check --workdir, "
                     "or train first"):
    loop.evaluate_checkpoint(smoke_config, str(tmp_path / "work"))
  (tmp_path / "work").mkdir()
  with pytest.raises(checkpoint.NoCheckpointError, match="no checkpoints/ folder.*train first"):
    loop.evaluate_checkpoint(smoke_config, str(tmp_path / "work"))
  assert list((tmp_path / "work").iterdir()) == []  # nothing created


def test_product_query_on_a_scene_model_is_named(scene_workdir, ctl_root):
  with pytest.raises(checkpoint.IncompatibleCheckpointError,
                     match="holds a scene-task model .*needs a product-task model: use --scene"):
    recommend.recommend(scene_workdir, product=_image(ctl_root))


def test_export_with_the_other_task_config_is_named(scene_workdir, product_smoke_config, ctl_root):
  with pytest.raises(checkpoint.IncompatibleCheckpointError,
                     match="holds a scene-task model .*the --config is a product-task config"):
    export.export_embeddings(product_smoke_config, scene_workdir, str(ctl_root),
                             out=f"{scene_workdir}/other_export")
  assert not os.path.exists(f"{scene_workdir}/other_export")


def test_scene_query_on_a_product_model_is_named(product_smoke_config, saved_workdir, tmp_path):
  workdir = saved_workdir(product_smoke_config, tmp_path / "product")
  with pytest.raises(checkpoint.IncompatibleCheckpointError,
                     match="holds a product-task model .*needs a scene-task model: use --product"):
    scene_predictor.restore_scene_predictor(workdir)
