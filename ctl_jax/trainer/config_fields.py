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
