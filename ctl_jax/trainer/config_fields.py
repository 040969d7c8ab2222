"""Config fields as the trainer checks them: exactly the chosen task's fields, the differences
between a checkpoint's config and the current one, and configs read back from checkpoints.

A task's fields are those of its base config (`Task.config_base`: configs/default.py for the
scene task, configs/product_default.py for the product task, both on configs/base.py).
"""

from __future__ import annotations

import importlib
import json
import logging

import ml_collections

FREE_FORM = ("data.category_map",)  # user-defined keys below these fields

# The ranges of the numeric fields (of either task: a field the config lacks is not checked).
# Checked at start-up so that e.g. `input.batch_size=0` is named, not a TensorFlow error later.
POSITIVE = (
    "input.batch_size", "input.image_size", "eval.batch_size", "features.batch_size",
    "features.shard_size", "train.log_every_steps", "train.checkpoint_every_steps",
    "train.max_checkpoints_to_keep", "model.embed_dim", "model.attention_hidden",
    "model.global_hidden", "model.local_hidden", "model.style_hidden", "model.classifier_hidden",
    "loss.num_negatives", "loss.num_proxies", "loss.temperature", "optimizer.learning_rate",
    "eval.num_candidates", "eval.corpus_size", "eval.popularity_neighbors",
    "eval.popularity_train_items")
NON_NEGATIVE = (
    "train.num_steps", "train.max_skipped_steps", "input.prefetch", "eval.every_steps",
    "optimizer.warmup_steps", "optimizer.weight_decay", "optimizer.grad_clip_norm",
    "optimizer.momentum", "loss.margin", "loss.contrastive_margin", "loss.category_weight",
    "eval.outfit_size")  # eval.outfit_size 0: outfits of any size
# field: (low, high, low included, high included)
INTERVALS = {
    "model.dropout": (0.0, 1.0, True, False),
    "data.validation_fraction": (0.0, 1.0, True, False),
    "data.test_fraction": (0.0, 1.0, False, False),
    "data.train_fraction": (0.0, 1.0, False, True),
    "data.min_crop_fraction": (0.0, 1.0, True, True),
}


class ConfigError(ValueError):
  """A config that the chosen task cannot run: unknown task, or fields it does not read."""


def config_dict(config: ml_collections.ConfigDict) -> dict:
  """The config as plain JSON values (what checkpoints record)."""
  return json.loads(config.to_json_best_effort())


def flatten(tree: dict, prefix: str = "") -> dict:
  """{dotted field: value} of a nested dict (free-form sections stay whole)."""
  out = {}
  for k, v in tree.items():
    if isinstance(v, dict) and prefix + k not in FREE_FORM:
      out.update(flatten(v, f"{prefix}{k}."))
    else:
      out[prefix + k] = v
  return out


def config_differences(saved: dict, current: dict) -> dict[str, tuple]:
  """{dotted field: (saved value, current value)} of every field that differs (or is missing
  on one side: None)."""
  a, b = flatten(saved), flatten(current)
  return {k: (a.get(k), b.get(k)) for k in sorted(a.keys() | b.keys()) if a.get(k) != b.get(k)}


def task_base(config_base: str) -> ml_collections.ConfigDict:
  """The base config of a task (`Task.config_base`, a module with get_config())."""
  return importlib.import_module(config_base).get_config()


def check_fields(config: ml_collections.ConfigDict, task_name: str, config_base: str) -> None:
  """ConfigError naming every field of `config` that task `task_name` does not read, and every
  field it reads that `config` lacks."""
  have = flatten(config_dict(config)).keys()
  want = flatten(config_dict(task_base(config_base))).keys()
  where = config_base.replace(".", "/") + ".py"
  problems = []
  if have - want:
    problems.append(f"not read by task {task_name!r}: {', '.join(sorted(have - want))}")
  if want - have:
    problems.append(f"missing (task {task_name!r} reads them): {', '.join(sorted(want - have))}")
  if problems:
    raise ConfigError(f"config fields {'; '.join(problems)}. A {task_name} config has exactly "
                     f"the fields of {where}; build yours from it.")
  check_values(config)


def _is_number(value) -> bool:
  return isinstance(value, (int, float)) and not isinstance(value, bool)


def value_problems(config: ml_collections.ConfigDict) -> list[str]:
  """'field=value must be ...' for every numeric field out of its range (see POSITIVE,
  NON_NEGATIVE, INTERVALS), `input.num_parallel_calls` and `eval.ks`."""
  values = flatten(config_dict(config))
  problems = []
  for field, value in values.items():
    if field in POSITIVE and not (_is_number(value) and value > 0):
      problems.append(f"{field}={value!r} must be > 0")
    elif field in NON_NEGATIVE and not (_is_number(value) and value >= 0):
      problems.append(f"{field}={value!r} must be >= 0")
    elif field in INTERVALS:
      low, high, low_in, high_in = INTERVALS[field]
      ok = _is_number(value) and (low <= value if low_in else low < value) and (
          value <= high if high_in else value < high)
      if not ok:
        problems.append(f"{field}={value!r} must be in {'[' if low_in else '('}{low}, {high}"
                        f"{']' if high_in else ')'}")
  calls = values.get("input.num_parallel_calls")
  if calls is not None and not (isinstance(calls, int) and (calls == -1 or calls > 0)):
    problems.append(f"input.num_parallel_calls={calls!r} must be -1 (autotune) or > 0")
  ks = values.get("eval.ks")
  if ks is not None and not (ks and all(isinstance(k, int) and k > 0 for k in ks)):
    problems.append(f"eval.ks={ks!r} must be positive integers")
  return problems


def check_values(config: ml_collections.ConfigDict) -> None:
  """ConfigError naming every numeric field out of its range."""
  problems = value_problems(config)
  if problems:
    raise ConfigError("config values out of range: " + "; ".join(problems))


def upgraded(saved: dict, config_base: str) -> ml_collections.ConfigDict:
  """The locked config of a checkpoint's record `saved`, on today's fields of its task: saved
  values where the field still exists, today's defaults for fields added since; fields that no
  longer exist (e.g. `data.format`, or the other task's fields in older records) are dropped."""
  config = task_base(config_base)
  known = flatten(config_dict(config))
  saved_fields = flatten(saved)
  dropped = sorted(saved_fields.keys() - known.keys())
  for field, value in saved_fields.items():
    if field not in known:
      continue
    section, name = config, field.split(".")
    for key in name[:-1]:
      section = section[key]
    if isinstance(value, dict):
      value = ml_collections.ConfigDict(value)
    elif isinstance(value, list):
      value = tuple(value)
    section[name[-1]] = value
  if dropped:
    logging.info("config of the checkpoint: fields no longer read, ignored: %s", ", ".join(dropped))
  config.lock()
  return config
