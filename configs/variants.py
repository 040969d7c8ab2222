"""Config variants, big_vision style: `--config configs/demo.py:small` calls
`get_config("small")`. A config lists its variants as {name: function that edits the config};
"" is the config as written. An unknown name is a one-line error listing the valid ones."""

from __future__ import annotations

from collections.abc import Callable

import ml_collections

Variants = dict[str, Callable[[ml_collections.ConfigDict], None]]


def apply(config: ml_collections.ConfigDict, variant: str, variants: Variants,
          config_name: str) -> ml_collections.ConfigDict:
  """`config` edited by `variants[variant]` ("" or None: unchanged)."""
  if not variant:
    return config
  if variant not in variants:
    valid = ", ".join(f"{config_name}:{v}" for v in variants) or "none"
    raise ValueError(f"{config_name} has no variant {variant!r} (variants: {valid})")
  variants[variant](config)
  return config
