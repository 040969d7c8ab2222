"""`run.py inspect-data`: hand-computed counts of a small STL folder, and the CLI's JSON for CTL."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from input_pipeline.readers import image_folder
from input_pipeline.tools import inspect_data, synthetic_ctl

ROOT = Path(__file__).parents[2]  # the repository


def _jpeg(path: Path) -> None:
  path.parent.mkdir(parents=True, exist_ok=True)
  Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(path)


def test_stl_summary_by_hand(tmp_path):
  s1, s2, p1, p2, p3 = (f"{c * 32}" for c in "abcde")
  cats = {p1: "Apparel & Accessories|Shoes", p2: "Apparel & Accessories|Shoes",
          p3: "Apparel & Accessories|Handbags"}
  (tmp_path / "fashion-cat.json").write_text(json.dumps(cats))
  rows = [(s1, p1, [0.0, 0.0, 0.5, 0.5]), (s1, p3, [0.5, 0.5, 1.0, 0.75]),
          (s2, p2, [0.1, 0.2, 0.3, 0.6])]
  lines = [json.dumps({"scene": s, "product": p, "bbox": b}) for s, p, b in rows]
  lines += ["", "{broken", json.dumps({"scene": s2, "product": p1, "bbox": [0.5, 0.5, 0.2, 0.9]}),
            lines[0]]  # blank, malformed, inverted box, duplicate
  (tmp_path / "fashion.json").write_text("\n".join(lines) + "\n")
  for sig in (s1, p1, p2, p3):  # s2 is missing; one flat and some nested files
    _jpeg(tmp_path / "images" / (f"{sig}.jpg" if sig == s1 else image_folder.nested_relpath(sig)))
  s = inspect_data.summarize("stl", tmp_path)
  assert (s["groups"], s["items"], s["products"]) == (2, 3, 3)
  assert s["categories"] == {"Shoes": 2, "Handbags": 1}
  assert s["items_per_group"]["histogram"] == {1: 1, 2: 1}
  assert (s["missing_images"], s["missing_image_signatures"]) == (1, [s2])
  assert s["items_with_missing_images"] == 1
  assert s["dropped"] == 3 and len(s["drops"]) == 3
  assert any("fashion.json:6" in d and "bbox" in d for d in s["drops"])
  np.testing.assert_allclose(s["boxes"]["width"]["max"], 0.5)
  np.testing.assert_allclose(s["boxes"]["area"]["min"], 0.2 * 0.4, rtol=1e-6)  # (s2, p2)
  text = inspect_data.format_summary(s)
  assert "2 scenes, 3 pairs" in text and "1 referenced but missing" in text


def test_cli_writes_ctl_json(tmp_path):
  synthetic_ctl.write_ctl_dataset(tmp_path, num_outfits=20, seed=1, image_size=48, workers=1)
  raw = tmp_path / "raw_train.tsv"
  raw.write_text(raw.read_text() + "not\ta\trow\n")
  out = tmp_path / "summary.json"
  proc = subprocess.run([sys.executable, "run.py", "inspect-data", "--format", "ctl",
                         "--root", str(tmp_path), "--json", str(out)], cwd=ROOT,
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-2000:]
  s = json.loads(out.read_text())
  train = [line.split("\t") for line in raw.read_text().splitlines()[1:-1]]
  test = [line.split("\t") for line in (tmp_path / "raw_test.tsv").read_text().splitlines()[1:]]
  assert s["items"] == len(train) + len(test)
  assert s["groups"] == len({r[0] for r in train + test})
  assert sum(s["categories"].values()) == s["items"]
  assert s["categories"]["Shoes"] == sum(r[5] == "Shoes" for r in train + test)
  assert s["missing_images"] == 0 and s["dropped"] == 1
  assert "outfits" in proc.stdout and "dropped records: 1" in proc.stdout
