"""Configs that cannot run: each ends with a ConfigError naming the field and what it must be,
before the workdir is created or any data is read; through `run.py`, one error line, exit 1."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from ctl_jax.trainer import config_fields, loop

ROOT = Path(__file__).resolve().parents[2]

# (task, field, value, message)
CASES = [
    ("scene", "input.batch_size", 0, r"input\.batch_size=0 must be > 0"),
    ("scene", "input.batch_size", -8, r"input\.batch_size=-8 must be > 0"),
    ("scene", "input.batch_size", 6, r"input\.batch_size=6 must be a multiple of the 4 devices"),
    ("scene", "eval.batch_size", 0, r"eval\.batch_size=0 must be > 0"),
    ("scene", "features.batch_size", -1, r"features\.batch_size=-1 must be > 0"),
    ("scene", "train.num_steps", -5, r"train\.num_steps=-5 must be >= 0"),
    ("scene", "train.checkpoint_every_steps", 0, r"train\.checkpoint_every_steps=0 must be > 0"),
    ("scene", "model.dropout", 1.0, r"model\.dropout=1\.0 must be in \[0\.0, 1\.0\)"),
    ("scene", "data.test_fraction", 0.0, r"data\.test_fraction=0\.0 must be in \(0\.0, 1\.0\)"),
    ("scene", "data.validation_fraction", 1.0, r"data\.validation_fraction=1\.0 must be in"),
    ("scene", "optimizer.learning_rate", 0.0, r"optimizer\.learning_rate=0\.0 must be > 0"),
    ("scene", "input.num_parallel_calls", 0, r"input\.num_parallel_calls=0 must be -1"),
    ("scene", "eval.ks", (), r"eval\.ks=\[\] must be positive integers"),
    ("scene", "data.source", "disk", r"data\.source='disk'; choose from"),
    ("scene", "features.verify", "md5", r"features\.verify='md5'"),
    ("product", "input.batch_size", 0, r"input\.batch_size=0 must be > 0"),
    ("product", "loss.num_proxies", 0, r"loss\.num_proxies=0 must be > 0"),
    ("product", "data.train_fraction", 0.0, r"data\.train_fraction=0\.0 must be in \(0\.0, 1\.0\]"),
    ("product", "eval.outfit_size", -1, r"eval\.outfit_size=-1 must be >= 0"),  # 0: any size
]


def _config(task, smoke_config, product_smoke_config):
  return smoke_config if task == "scene" else product_smoke_config


@pytest.mark.parametrize("task,field,value,message", CASES,
                         ids=[f"{c[0]}-{c[1]}={c[2]}" for c in CASES])
def test_bad_config_value_is_named_before_anything_is_written(task, field, value, message,
                                                              smoke_config, product_smoke_config,
                                                              tmp_path):
  config = _config(task, smoke_config, product_smoke_config)
  section, name = field.split(".")
  config[section][name] = value
  workdir = tmp_path / "work"
  with pytest.raises(config_fields.ConfigError, match=message):
    loop.train_and_evaluate(config, str(workdir))
  assert not workdir.exists()


def test_run_py_names_the_field_in_one_line(stl_root, tmp_path):
  workdir = tmp_path / "work"
  result = subprocess.run(
      [sys.executable, "run.py", "train", "--config", "configs/smoke.py",
       f"--workdir={workdir}", f"--config.data.root={stl_root}", "--config.input.batch_size=-8"],
      cwd=ROOT, capture_output=True, text=True, timeout=300,
      env={**os.environ, "JAX_PLATFORMS": "cpu"})
  assert result.returncode == 1, result.stderr[-2000:]
  assert "Traceback" not in result.stderr
  errors = [line for line in result.stderr.splitlines() if line.startswith("E")]
  assert len(errors) == 1 and "ConfigError" in errors[0] and "input.batch_size=-8" in errors[0]
  assert not workdir.exists()
