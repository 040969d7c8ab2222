"""Configs have exactly their task's fields; checkpoint configs read back on today's fields."""

import importlib
import os
import pathlib
import subprocess
import sys

import pytest

from configs import base, default, product_default, product_smoke, smoke
from ctl_jax import task as task_lib
from ctl_jax.trainer import config_fields

CONFIGS = sorted(p.stem for p in pathlib.Path(base.__file__).parent.glob("*.py")
                 if p.stem not in ("__init__", "base", "variants"))  # variants: a helper


@pytest.mark.parametrize("name", CONFIGS)
def test_every_config_has_exactly_its_tasks_fields(name):
  config = importlib.import_module(f"configs.{name}").get_config()
  task = task_lib.get_task(config.task)
  config_fields.check_fields(config, task.name, task.config_base)  # raises on any difference


def test_a_field_of_the_other_task_is_an_error():
  config = product_smoke.get_config()
  with config.unlocked():
    config.loss.in_batch_negatives = True  # a scene-task field, silently unused before
    config.model.local_hidden = 32
  with pytest.raises(config_fields.ConfigError,
                     match=r"not read by task 'product': loss\.in_batch_negatives, "
                           r"model\.local_hidden"):
    config_fields.check_fields(config, "product", "configs.product_default")


def test_a_missing_field_is_an_error():
  config = smoke.get_config()
  del config["eval"]["num_candidates"]
  with pytest.raises(ValueError,
                     match=r"missing \(task 'scene' reads them\): eval\.num_candidates"):
    config_fields.check_fields(config, "scene", "configs.default")


def test_the_two_task_bases_share_only_the_common_fields():
  common = set(config_fields.flatten(config_fields.config_dict(base.get_config())))
  scene = set(config_fields.flatten(config_fields.config_dict(default.get_config())))
  product = set(config_fields.flatten(config_fields.config_dict(product_default.get_config())))
  assert scene & product == common
  assert {"loss.in_batch_negatives", "model.local_hidden", "eval.num_candidates"} <= scene - product
  assert {"loss.name", "model.style_hidden", "eval.corpus_size"} <= product - scene


def test_an_older_checkpoint_config_is_read_on_todays_fields():
  """Records written before the per-task bases held `data.format` and the scene fields in product
  configs; they read back without them, with every saved value kept."""
  saved = config_fields.config_dict(product_smoke.get_config())
  saved["data"]["format"] = "ctl"
  saved["loss"]["in_batch_negatives"] = False
  saved["model"]["global_hidden"] = 256
  saved["loss"]["name"] = "proxy"
  saved["eval"]["ks"] = [1, 5]  # JSON has lists where configs have tuples
  saved["data"]["category_map"] = {"Apparel|Shoes": "Shoes"}
  config = config_fields.upgraded(saved, "configs.product_default")
  assert "format" not in config.data and "in_batch_negatives" not in config.loss
  assert "global_hidden" not in config.model
  assert config.loss.name == "proxy" and tuple(config.eval.ks) == (1, 5)
  assert dict(config.data.category_map) == {"Apparel|Shoes": "Shoes"}
  config_fields.check_fields(config, "product", "configs.product_default")
  with pytest.raises(AttributeError):
    config.loss.in_batch_negatives = True  # locked, like a config from the command line


def test_config_differences_name_every_changed_field():
  a = config_fields.config_dict(smoke.get_config())
  b = config_fields.config_dict(smoke.get_config())
  b["loss"]["margin"] = 0.5
  del b["eval"]["seed"]
  assert config_fields.config_differences(a, b) == {"eval.seed": (0, None),
                                                    "loss.margin": (0.2, 0.5)}


@pytest.mark.parametrize("name", sorted(task_lib.TASKS))
def test_every_task_implements_the_interface(name):
  task = task_lib.get_task(name)
  assert isinstance(task, task_lib.Task)
  assert task.name == name
  assert importlib.import_module(task.config_base).get_config().task == name


def test_an_unknown_task_is_a_clear_error():
  with pytest.raises(ValueError, match=r"task='scenes'; choose from \['scene', 'product'\]"):
    task_lib.get_task("scenes")


def test_run_py_stops_on_a_foreign_field_with_one_line(tmp_path):
  """A config file that sets a field of the other task: exit 1, one error line, no traceback,
  no workdir created."""
  bad = tmp_path / "bad_config.py"
  bad.write_text("from configs import product_smoke\n\n\ndef get_config():\n"
                 "  config = product_smoke.get_config()\n"
                 "  config.loss.in_batch_negatives = True\n  return config\n")
  root = pathlib.Path(__file__).resolve().parents[2]
  workdir = tmp_path / "run"
  proc = subprocess.run([sys.executable, str(root / "run.py"), "train", "--config", str(bad),
                         "--workdir", str(workdir)], cwd=root, capture_output=True, text=True,
                        timeout=300, env={**os.environ, "PYTHONPATH": str(root)})
  assert proc.returncode == 1, proc.stderr[-2000:]
  assert "ConfigError: config fields not read by task 'product': loss.in_batch_negatives" in (
      proc.stderr)
  assert "Traceback" not in proc.stderr and not workdir.exists()


def test_config_variants():
  from configs import demo, product_demo
  assert demo.get_config("small").train.num_steps < demo.get_config().train.num_steps
  assert product_demo.get_config("small").train.num_steps < product_demo.get_config(
  ).train.num_steps
  with pytest.raises(ValueError, match=r"no variant 'tiny' \(variants: configs/demo.py:small\)"):
    demo.get_config("tiny")
  with pytest.raises(ValueError, match=r"variants: none"):
    smoke.get_config("small")
