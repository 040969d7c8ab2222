"""The oracle: a scorer that knows the latent style of every outfit, the ceiling of a metric.

On generated data (`run.py generate-data`) every scene or outfit has a latent style and its
products are drawn from that style; the generator writes the styles beside the data folder, never
into it (`<root>.latents.json`). The oracle ranks the products of the query's style first and
all the others after, ties in random order (as the metrics resolve them). No model can do better
in expectation from the pixels, so `model / oracle` reads as the fraction of the attainable.
"""

from __future__ import annotations

import json
import os

import numpy as np

from ctl_jax.metrics import Scorer
from ctl_jax.trainer.config_fields import ConfigError
from input_pipeline import storage


def latents_file(eval_latents: str, data_root: str) -> str | None:
  """The latents file of `eval.latents` ("": `<data.root>.latents.json` when it exists, "none":
  no oracle); ConfigError when a named file is missing."""
  if eval_latents == "none":
    return None
  if eval_latents:
    if not storage.exists(eval_latents):
      raise ConfigError(f"eval.latents={eval_latents!r}: no such file")
    return eval_latents
  if not data_root:
    return None
  beside = os.fspath(data_root).rstrip("/") + ".latents.json"
  return beside if storage.exists(beside) else None


def load_latents(eval_latents: str, data_root: str) -> dict | None:
  """The generator's latents (signature -> style tables), or None when there are none."""
  path = latents_file(eval_latents, data_root)
  if path is None:
    return None
  return json.loads(storage.read_text(path))


def styles(table: dict[str, int], keys: list[str]) -> np.ndarray:
  """[len(keys)] the style of each key, -1 for a key the table lacks."""
  return np.array([table.get(k, -1) for k in keys], np.int64)


def style_scorer(query_style: np.ndarray, candidate_style: np.ndarray) -> Scorer:
  """Distance 0 to the candidates of the query's style, 1 to the rest (unknown: 1)."""
  query_style = np.asarray(query_style)
  candidate_style = np.asarray(candidate_style)

  def score(rows, cols):
    cand = candidate_style[cols]
    same = (cand == query_style[rows][:, None]) & (cand >= 0)
    return np.where(same, 0.0, 1.0)

  return score
