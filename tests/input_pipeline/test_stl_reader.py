"""The STL reader on generated data, on the published sample, and on broken input."""

import json
import pathlib
import shutil

import numpy as np
import pytest

from input_pipeline.readers import stl
from input_pipeline.readers.drops import DataError, DropReport

DATA = pathlib.Path(__file__).parent / "data"  # real files of the public releases


def test_reads_generated_dataset(stl_root):
  data = stl.read_stl(stl_root)
  rows = [json.loads(line) for line in open(stl_root / "fashion.json")]
  assert len(data) == len(rows) and len(data.drops) == 0
  assert len(data.categories) >= 8
  # Boxes and signatures survive exactly.
  first = rows[0]
  assert data.scenes[data.pair_scene[0]] == first["scene"]
  assert data.products[data.pair_product[0]] == first["product"]
  np.testing.assert_allclose(data.pair_box[0], first["bbox"], rtol=1e-6)
  cats = json.load(open(stl_root / "fashion-cat.json"))
  label = cats[first["product"]].rsplit("|", 1)[-1]
  assert data.categories[data.pair_category[0]] == label


def test_category_paths_map_to_short_labels_and_overrides():
  assert stl.category_label("Apparel & Accessories|Clothing|Shirts & Tops") == "Shirts & Tops"
  assert stl.category_label("Apparel & Accessories|Jewelry|Earrings", {
      "Apparel & Accessories|Jewelry|Earrings": "Jewelry"}) == "Jewelry"


def test_published_category_map_and_sample_row(tmp_path):
  shutil.copy(DATA / "stl-fashion-cat.json", tmp_path / "fashion-cat.json")
  shutil.copy(DATA / "stl-fashion_sample.json", tmp_path / "fashion.json")
  data = stl.read_stl(tmp_path, check_images=False)
  assert len(data) == 1
  np.testing.assert_allclose(data.pair_box[0], [0.434097, 0.859363, 0.560254, 1.0], rtol=1e-6)
  report = DropReport()
  assert len(stl.read_category_map(tmp_path / "fashion-cat.json", report)) == 38111


def _broken_copy(stl_root, tmp_path, extra_lines):
  root = tmp_path / "broken"
  shutil.copytree(stl_root, root)
  with open(root / "fashion.json", "a") as f:
    f.write("\n".join(extra_lines) + "\n")
  return root


def test_lenient_mode_skips_counts_and_names_every_bad_record(stl_root, tmp_path):
  good = [json.loads(line) for line in open(stl_root / "fashion.json")]
  sig = good[0]["product"]
  bad = [
      "",  # blank line: ignored, not a record
      "{not json",
      json.dumps({"scene": good[0]["scene"], "product": sig, "bbox": [0.5, 0.5, 0.4, 0.9]}),
      json.dumps({"scene": good[0]["scene"], "product": sig, "bbox": [0.1, 0.1, 1.4, 0.9]}),
      json.dumps(good[0]),  # duplicate pair
      json.dumps({"scene": good[0]["scene"], "product": "f" * 32, "bbox": [0.1, 0.1, 0.2, 0.2]}),
      json.dumps({"scene": "e" * 32, "product": sig, "bbox": [0.1, 0.1, 0.2, 0.2]}),
      json.dumps({"scene": good[0]["scene"], "bbox": [0.1, 0.1, 0.2, 0.2]}),
  ]
  root = _broken_copy(stl_root, tmp_path, bad)
  data = stl.read_stl(root)
  assert len(data) == len(good)  # nothing read correctly is lost
  reasons = [d.reason for d in data.drops.drops]
  assert len(reasons) == 7
  assert any("malformed JSON" in r for r in reasons)
  assert "inverted or zero-area box" in reasons and "box outside [0, 1]" in reasons
  assert "duplicate (scene, product) pair" in reasons
  assert any("has no category" in r for r in reasons)
  assert any("missing image" in r for r in reasons)
  lines = [d.line for d in data.drops.drops]
  assert lines == [len(good) + k for k in range(2, 9)]
  assert "dropped 7 records" in data.drops.summary()


def test_strict_mode_names_file_line_and_field(stl_root, tmp_path):
  good = [json.loads(line) for line in open(stl_root / "fashion.json")]
  row = dict(good[0], bbox=[0.5, 0.5, 0.4, 0.9], product=good[1]["product"])
  root = _broken_copy(stl_root, tmp_path, [json.dumps(row)])
  with pytest.raises(DataError, match=rf"fashion.json:{len(good) + 1}: field 'bbox': inverted"):
    stl.read_stl(root, strict=True)


def test_empty_pair_file_is_a_clear_error(stl_root, tmp_path):
  root = tmp_path / "empty"
  shutil.copytree(stl_root, root)
  (root / "fashion.json").write_text("")
  with pytest.raises(DataError, match="no usable"):
    stl.read_stl(root)
