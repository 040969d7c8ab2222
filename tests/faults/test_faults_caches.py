"""Damaged feature caches (issue 15): every fault is reported, the damaged part extracted again,
and the rows read afterwards are bitwise those of the undamaged cache."""

import copy
import logging
import os
import shutil

import numpy as np
import pytest

from ctl_jax.trainer import features, loop
from input_pipeline import feature_cache


@pytest.fixture(scope="module")
def undamaged(stl_root, tmp_path_factory):
  """A run, its state, an extracted cache (several shards per kind) and all of its rows."""
  from configs import smoke
  config = smoke.get_config()
  config.data.root = str(stl_root)
  config.data.source = "features"
  config.features.shard_size = 300
  run = loop.setup(config, str(tmp_path_factory.mktemp("faults_cache")))
  state = run.fresh_state()
  cache = run.feature_cache(state)
  rows = _all_rows(run, cache)
  cache.close()
  return run, state, cache.root, rows


def _all_rows(run, cache):
  out = {}
  for kind, keys in cache.manifest.keys.items():
    for field in ("global", "regions") if kind in run.task.region_kinds else ("global",):
      out[kind, field] = cache.gather(kind, field, np.arange(len(keys)))
  return out


def _snapshot(root):
  return {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in root.iterdir()}


def _truncate(path):
  os.truncate(path, path.stat().st_size // 2)


def _flip_middle_byte(path):
  with open(path, "r+b") as f:
    f.seek(path.stat().st_size // 2)
    byte = f.read(1)[0]
    f.seek(-1, os.SEEK_CUR)
    f.write(bytes([byte ^ 0x5A]))


# (damaged file, damage, what the report says, the shard re-extracted: None for the index)
CASES = {
    "truncated_shard_kept_done": ("scenes-00001.regions.npy", _truncate, "truncated",
                                  "scenes-00001"),
    "zero_byte_shard": ("products-00000.global.npy", lambda p: os.truncate(p, 0), "0 bytes",
                        "products-00000"),
    "flipped_byte_same_size": ("scenes-00000.regions.npy", _flip_middle_byte, "CRC-32",
                               "scenes-00000"),
    "missing_field_file": ("scenes-00001.global.npy", os.unlink, "missing", "scenes-00001"),
    "corrupt_index": ("index.json", lambda p: p.write_text('{"fingerprint": "'),
                      "damaged index", None),
    "done_marker_missing": ("products-00001.done", os.unlink, "no .done marker",
                            "products-00001"),
}


@pytest.mark.parametrize("case", CASES)
def test_damaged_cache_is_reported_and_reextracted(undamaged, case, tmp_path, caplog):
  run, state, reference_root, reference = undamaged
  name, damage, reason, shard = CASES[case]
  config = copy.deepcopy(run.config)
  config.data.feature_dir = str(tmp_path)
  root = tmp_path / reference_root.name
  shutil.copytree(reference_root, root)
  damage(root / name)
  before = _snapshot(root)

  caplog.set_level(logging.INFO)
  cache = features.extract_features(config, run.workdir, run.model, state,
                                    run.task.cache_items(run.data),
                                    region_kinds=run.task.region_kinds)
  assert cache.root == root
  # Reported: one line naming the damaged file (or the unfinished shard) and the fault.
  named = shard if name.endswith(".done") else str(root / name)
  reports = [r.getMessage() for r in caplog.records
             if r.levelno >= logging.INFO and named in r.getMessage()]
  assert any(reason in m for m in reports), caplog.text
  # Re-extracted: exactly the damaged shard's files were written again (or the index).
  after = _snapshot(root)
  redone = {p for p in after if before.get(p) != after[p]}
  if shard is None:
    assert redone == {"index.json"}
  else:
    assert redone == {p for p in after if p.startswith(shard + ".")}
    assert redone >= {shard + ".done", shard + ".global.npy"}
  assert feature_cache.read_index(root) == feature_cache.read_index(reference_root)
  # Read back bitwise equal to the undamaged cache, which now verifies in full.
  rows = _all_rows(run, cache)
  assert rows.keys() == reference.keys()
  for key, want in reference.items():
    np.testing.assert_array_equal(rows[key].view(np.uint16), want.view(np.uint16), err_msg=key)
  cache.close()
  feature_cache.FeatureCache(root, checksum=True).close()
