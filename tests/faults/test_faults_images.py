"""Images that are truncated, empty or gone, in both tasks, through the one record-drop path
(`image_check.read_checked`): dropped before training with their reason, listed in
dropped_records.jsonl, every valid record kept; in strict mode, the first bad record in file
order stops the read, whether its problem is in the text or in an image."""

import json
import re
import shutil

import pytest

from ctl_jax.trainer import loop, run_log
from input_pipeline.readers.drops import DataError
from input_pipeline.scene import dataset as scene_data


def _truncate(path):
  data = path.read_bytes()
  path.write_bytes(data[:len(data) // 3])


def _empty(path):
  path.write_bytes(b"")


def _remove(path):
  path.unlink()


DAMAGE = {"truncated": (_truncate, "undecodable"), "empty": (_empty, "empty image file"),
          "missing": (_remove, "missing image")}


def _copy(source, tmp_path):
  root = tmp_path / "data"
  shutil.copytree(source, root, ignore=shutil.ignore_patterns(".image_check.json"))
  return root


def _first_collage(root):
  """(signature, items in raw_train.tsv) of the collage of raw_train.tsv's first item."""
  rows = [line.split("\t") for line in (root / "raw_train.tsv").read_text().splitlines()[1:]]
  return rows[0][0], sum(r[0] == rows[0][0] for r in rows)


@pytest.mark.parametrize("kind", list(DAMAGE))
def test_product_task_drops_and_lists_bad_collages(kind, product_smoke_config, tmp_path):
  """The product task used to check no image: a truncated collage crashed training with a
  TensorFlow error naming no file, and no dropped_records.jsonl was written."""
  root = _copy(product_smoke_config.data.root, tmp_path)
  sig, items = _first_collage(root)
  config = product_smoke_config
  config.data.root = str(root)
  clean = loop.setup(config, str(tmp_path / "clean"))
  damage, reason = DAMAGE[kind]
  damage(next(root.glob(f"images/**/{sig}.jpg")))
  run = loop.setup(config, str(tmp_path / "work"))
  assert len(run.data.train) == len(clean.data.train) - items  # exactly that collage's items
  assert set(run.data.train.item_keys) < set(clean.data.train.item_keys)
  written = [json.loads(line)
             for line in (tmp_path / "work" / run_log.DROPS_FILE).read_text().splitlines()]
  assert len(written) == items and all(
      d["file"].endswith("raw_train.tsv") and sig in d["reason"] and reason in d["reason"]
      for d in written), written
  assert [d["line"] for d in written] == sorted(d["line"] for d in written)


@pytest.mark.parametrize("kind", list(DAMAGE))
def test_scene_task_drops_and_lists_bad_images(kind, smoke_config, tmp_path):
  root = _copy(smoke_config.data.root, tmp_path)
  rows = [json.loads(line) for line in (root / "fashion.json").read_text().splitlines()]
  product = rows[0]["product"]
  config = smoke_config
  config.data.root = str(root)
  clean = scene_data.load_scene_dataset(config.data)
  damage, reason = DAMAGE[kind]
  damage(next(root.glob(f"images/**/{product}.jpg")))
  data = scene_data.load_scene_dataset(config.data)
  lost = sum(r["product"] == product for r in rows)
  assert len(data.stl) == len(clean.stl) - lost
  assert [str(d.line) for d in data.drops.drops] == [
      str(i) for i, r in enumerate(rows, 1) if r["product"] == product]
  assert all(reason in d.reason for d in data.drops.drops)


def test_strict_mode_stops_at_the_first_bad_record_in_file_order(smoke_config, tmp_path):
  """Line 1's product image is undecodable and a later line's image is missing: strict mode
  names line 1 (it used to stop at the missing image, found before any image was decoded)."""
  root = _copy(smoke_config.data.root, tmp_path)
  rows = [json.loads(line) for line in (root / "fashion.json").read_text().splitlines()]
  later = next(i for i, r in enumerate(rows[1:], 2)
               if rows[0]["product"] not in (r["product"], r["scene"])
               and rows[0]["scene"] != r["scene"])
  _truncate(next(root.glob(f"images/**/{rows[0]['product']}.jpg")))
  _remove(next(root.glob(f"images/**/{rows[later - 1]['scene']}.jpg")))
  config = smoke_config
  config.data.root = str(root)
  config.data.strict = True
  with pytest.raises(DataError, match=re.escape("fashion.json:1: field 'product'")):
    scene_data.load_scene_dataset(config.data)
  config.data.strict = False
  data = scene_data.load_scene_dataset(config.data)
  assert data.drops.drops[0].line == 1 and later in [d.line for d in data.drops.drops]


def test_product_strict_mode_names_the_first_bad_item(product_smoke_config, tmp_path):
  root = _copy(product_smoke_config.data.root, tmp_path)
  sig, _ = _first_collage(root)
  _truncate(next(root.glob(f"images/**/{sig}.jpg")))
  config = product_smoke_config
  config.data.root = str(root)
  config.data.strict = True
  with pytest.raises(DataError, match=r"raw_train\.tsv:2: field 'image_signature': unusable "
                                      r"image .*undecodable"):
    loop.setup(config, str(tmp_path / "work"))
