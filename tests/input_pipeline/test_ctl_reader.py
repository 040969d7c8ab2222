"""CTL readers: the published test file, generated data in all three files, and broken input."""

import json
import pathlib
import shutil

import numpy as np
import pytest

from input_pipeline.readers import ctl
from input_pipeline.readers.drops import DataError, DropReport
from input_pipeline.tools import synthetic_ctl

DATA = pathlib.Path(__file__).parent / "data"


@pytest.fixture(scope="module")
def ctl_root(tmp_path_factory):
  root = tmp_path_factory.mktemp("ctl")
  synthetic_ctl.write_ctl_dataset(root, num_outfits=150, seed=3, image_size=96, workers=1)
  return root


def test_published_raw_test_file(tmp_path):
  shutil.copy(DATA / "ctl-raw_test.tsv", tmp_path / "raw_test.tsv")
  data = ctl.read_ctl(tmp_path, "test", check_images=False)
  assert len(data) == 25_140 and len(data.outfits) == 5_028 and len(data.drops) == 0
  assert np.all(np.bincount(data.item_outfit) == 5)
  counts = dict(zip(data.categories, np.bincount(data.item_category)))
  published = dict(line.split("\t") for line in (DATA / "ctl-categories.tsv").read_text()
                   .splitlines()[1:])
  assert counts == {k: int(v) for k, v in published.items()}
  # First row: 00015b9d0c08164ed3b5dbb4613bb143 0.0068093464 0.01915935 0.4946373 0.31540385
  np.testing.assert_allclose(data.item_box[0], [0.0068093464, 0.01915935, 0.4946373, 0.31540385])
  assert data.categories[data.item_category[0]] == "Shirts & Tops"


def test_generated_files_round_trip(ctl_root):
  train = ctl.read_ctl(ctl_root, "train")
  test = ctl.read_ctl(ctl_root, "test", categories=train.categories)
  assert len(train.drops) == 0 and len(test.drops) == 0
  assert not set(train.outfits) & set(test.outfits)
  assert (ctl_root / "raw_train.tsv").read_text().startswith(synthetic_ctl.CTL_HEADER + "\n")
  report = DropReport(strict=True)
  triplets = list(ctl.read_triplets(ctl_root / "triplet_train.tsv", report))
  assert triplets
  for _, anchor, positive, negative in triplets:
    assert anchor[0] == positive[0] and anchor[2] != positive[2]  # one outfit, two categories
    assert negative[2] == positive[2] and negative[0] != positive[0]
    train.index_of(anchor[0], anchor[1])  # every item is a raw item
  questions = ctl.read_fitb(ctl_root / "fitb_eval.json", report)
  raw = json.loads((ctl_root / "fitb_eval.json").read_text())
  assert len(questions) == len(raw) > 0
  assert all(isinstance(v, str) for v in raw[0]["answers"][0].values())
  for q in questions:
    assert len(q["answers"]) == 4 and len({a[2] for a in q["answers"]}) == 1
    assert q["answers"][0][0] == q["question"][0][0]  # the hidden item belongs to the outfit


def test_bad_rows_are_dropped_with_file_line_and_field(ctl_root, tmp_path):
  root = tmp_path / "bad"
  shutil.copytree(ctl_root, root)
  good = (root / "raw_train.tsv").read_text().splitlines()
  bad = [
      "",
      "abc\t0.1\t0.1\t0.2",  # 4 fields
      "abc\t0.1\tx\t0.2\t0.2\tShoes",
      "abc\t0.9\t0.1\t0.2\t0.2\tShoes",  # x + w > 1
      "abc\t0.1\t0.1\t0.0\t0.2\tShoes",  # zero width
      good[1],  # duplicate
      "abc\t0.1\t0.1\t0.2\t0.2\t",  # empty label
  ]
  (root / "raw_train.tsv").write_text("\n".join(good + bad) + "\n")
  data = ctl.read_ctl(root, "train", check_images=False)
  assert len(data) == len(good) - 1  # nothing read correctly is lost
  reasons = [(d.line, d.field, d.reason) for d in data.drops.drops]
  n = len(good)
  assert reasons == [
      (n + 2, "line", "expected 6 tab-separated fields, got 4"),
      (n + 3, "y", "not a number: 'x'"),
      (n + 4, "box", "box outside [0, 1]"),
      (n + 5, "box", "zero or negative width/height"),
      (n + 6, "line", "duplicate item"),
      (n + 7, "label", "empty label"),
  ]
  with pytest.raises(DataError, match=rf"raw_train.tsv:{n + 2}: field 'line'"):
    ctl.read_ctl(root, "train", check_images=False, strict=True)


def test_header_and_empty_file_errors(tmp_path):
  (tmp_path / "raw_train.tsv").write_text("")
  with pytest.raises(DataError, match="empty file"):
    ctl.read_ctl(tmp_path, "train", check_images=False)
  (tmp_path / "raw_train.tsv").write_text("sig\tx\ty\n")
  with pytest.raises(DataError, match=r"raw_train.tsv:1: header"):
    ctl.read_ctl(tmp_path, "train", check_images=False)


def test_unknown_categories_and_missing_images(ctl_root, tmp_path):
  root = tmp_path / "missing"
  shutil.copytree(ctl_root, root)
  victim = sorted((root / "images").iterdir())[0]
  victim.unlink()
  data = ctl.read_ctl(root, "train", categories=["Shoes", "Handbags"])
  reasons = {d.reason.split(" ")[0] + " " + d.reason.split(" ")[1] for d in data.drops.drops}
  assert "unknown category" in reasons
  assert set(data.categories) == {"Shoes", "Handbags"}
  assert all(sig != victim.stem for sig in data.outfits)
