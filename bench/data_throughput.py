"""Data-path throughput on this machine, measured side by side in one run.

  python -m bench.data_throughput [--pairs 72198] [--scenes 200] [--batches 6] [--images 400]
                                  [--json FILE]

readers     rows/s of the STL pair reader and table builder on a published-scale fashion.json
            (72,198 pairs over the real 38,111-product fashion-cat.json of ../shared/data), and
            of the CTL raw reader on the real published raw_test.tsv (25,140 rows), the triplet
            and FITB readers on generated files; and opening the same STL data from TFDS metadata.
tf.data     images/s of the training pipeline (scene crop + positive + negative, decoded,
            cropped, resized to 224 px) from image files and from the stl_fashion TFDS dataset,
            and of the evaluation pipeline (whole products), on generated data (256x192 scenes).
download    images/s and MB/s of `download-images` against a local HTTP server on 127.0.0.1
            (generated 400x400 JPEGs), with 1 and 16 workers.
Figures on a shared machine are noisy; compare rows of one run rather than runs of different days.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import pathlib
import shutil
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import tensorflow_datasets as tfds  # noqa: E402
from PIL import Image  # noqa: E402

tf.config.set_visible_devices([], "GPU")

from configs import default  # noqa: E402
from input_pipeline import batching  # noqa: E402
from input_pipeline.image_source import as_rows  # noqa: E402
from input_pipeline.readers import ctl, stl, tfds_builders  # noqa: E402
from input_pipeline.readers.drops import DropReport  # noqa: E402
from input_pipeline.scene import dataset as scene_data  # noqa: E402
from input_pipeline.scene import pipeline as scene_pipeline  # noqa: E402
from input_pipeline.scene import sampler as scene_sampler  # noqa: E402
from input_pipeline.tools import download, synthetic_ctl, synthetic_stl  # noqa: E402
from tests import image_server  # noqa: E402  (the test suite's scripted image server)

SHARED = pathlib.Path(__file__).resolve().parent.parent.parent / "shared" / "data"


def _rate(fn, count_fn=len, repeats: int = 3) -> tuple[float, int]:
  """(best items/s over `repeats` runs, items)."""
  best, n = 0.0, 0
  for _ in range(repeats):
    start = time.perf_counter()
    out = fn()
    seconds = time.perf_counter() - start
    n = count_fn(out)
    best = max(best, n / seconds)
  return best, n


def _published_scale_stl(out: pathlib.Path, num_pairs: int, seed: int = 0) -> None:
  """fashion.json rows in the published format over the real category map's products."""
  shutil.copy(SHARED / "stl-fashion-cat.json", out / stl.CATEGORIES_FILE)
  products = list(json.loads((SHARED / "stl-fashion-cat.json").read_text()))
  rng = np.random.default_rng(seed)
  num_scenes = int(num_pairs * 47_739 / 72_198)  # the published scenes-per-pair ratio
  scenes = [f"{rng.integers(2**63):016x}{rng.integers(2**63):016x}" for _ in range(num_scenes)]
  with open(out / stl.PAIRS_FILE, "w") as f:
    for i in range(num_pairs):
      left, top = rng.uniform(0, 0.6, 2)
      box = [left, top, left + rng.uniform(0.05, 0.4), top + rng.uniform(0.05, 0.4)]
      f.write(json.dumps({"product": products[rng.integers(len(products))],
                          "scene": scenes[i % num_scenes], "bbox": [round(v, 6) for v in box]})
              + "\n")


def bench_readers(tmp: pathlib.Path, num_pairs: int) -> dict:
  root = tmp / "stl_scale"
  root.mkdir()
  _published_scale_stl(root, num_pairs)
  ctl_root = tmp / "ctl_gen"
  synthetic_ctl.write_ctl_dataset(ctl_root, num_outfits=2000, seed=0, image_size=8)
  raw = SHARED / "ctl-raw_test.tsv"
  results = {}
  rows = lambda gen: sum(1 for _ in gen)
  results["stl_read_pairs"] = _rate(lambda: rows(stl.read_pairs(root / stl.PAIRS_FILE,
                                                                 DropReport())), int)
  results["stl_read_stl"] = _rate(lambda: stl.read_stl(root, check_images=False))
  results["ctl_read_raw"] = _rate(lambda: rows(ctl.read_raw(raw, DropReport())), int)
  results["ctl_read_triplets"] = _rate(
      lambda: rows(ctl.read_triplets(ctl_root / "triplet_train.tsv", DropReport())), int)
  results["ctl_read_fitb"] = _rate(
      lambda: ctl.read_fitb(ctl_root / "fitb_eval.json", DropReport()),
      lambda qs: sum(len(q["question"]) + len(q["answers"]) for q in qs))
  return {k: {"rows_per_second": round(r), "rows": n} for k, (r, n) in results.items()}


def _images_per_second(it, batches: int, per_batch: int) -> float:
  next(it)  # warm-up: tracing, first reads
  start = time.perf_counter()
  for _ in range(batches):
    next(it)
  return batches * per_batch / (time.perf_counter() - start)


def bench_tf_data(tmp: pathlib.Path, num_scenes: int, batches: int, batch: int = 32) -> dict:
  root = tmp / "stl_images"
  synthetic_stl.write_stl_dataset(root, num_scenes=num_scenes, seed=0)
  tfds_dir = tmp / "tfds"
  builder = tfds_builders.StlFashion(data_dir=str(tfds_dir))
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=str(root)))
  config = default.get_config().data
  config.root, config.check_images = str(root), False
  from_files = scene_data.load_scene_dataset(config)
  config.root, config.tfds_name, config.tfds_dir = "", "stl_fashion", str(tfds_dir)
  start = time.perf_counter()
  from_tfds = scene_data.load_scene_dataset(config)
  open_seconds = time.perf_counter() - start
  out = {"tfds_open_seconds": round(open_seconds, 3), "image_size": 224, "batch": batch}
  # Alternating rounds, best of each: the machine is shared and its load drifts.
  for _ in range(2):
    for name, ds in (("train_files", from_files), ("train_tfds", from_tfds)):
      sampler = scene_sampler.TripletSampler(ds.stl, ds.train, seed=0)
      it = scene_pipeline.train_triplets(sampler, ds.scene_images, ds.product_images,
                                         global_batch=batch, image_size=224,
                                         normalization="caffe")
      rate = _images_per_second(it, batches, 3 * batch)  # scene, positive, negative
      out[name] = max(out.get(name, 0.0), round(rate, 1))
  rows = as_rows([from_files.stl.image_paths[p] for p in from_files.stl.products])
  data = batching.eval_images(rows, None, {}, global_batch=batch, image_size=224,
                              normalization="caffe").repeat()
  out["eval_products_files"] = round(_images_per_second(data.as_numpy_iterator(), batches,
                                                        batch), 1)
  return out


def bench_download(tmp: pathlib.Path, num_images: int) -> dict:
  rng = np.random.default_rng(0)
  served = {}
  for i in range(num_images):
    buf = io.BytesIO()
    base = rng.integers(0, 255, (40, 40, 3), np.uint8)
    Image.fromarray(base).resize((400, 400), Image.BILINEAR).save(buf, "JPEG", quality=85)
    served[f"{i:032x}"] = buf.getvalue()
  ann = tmp / "raw_bench.tsv"
  ann.write_text(" ".join(ctl.RAW_COLUMNS) + "\n" + "".join(
      f"{s}\t0.1\t0.1\t0.5\t0.5\tShoes\n" for s in served))
  out = {"images": num_images, "mean_kb": round(np.mean([len(b) for b in served.values()]) / 1e3,
                                                 1)}
  with image_server.ImageServer(served) as server:
    for workers in (1, 16):
      report = download.download_images(ann, tmp / f"dl{workers}", base_url=server.base_url,
                                         workers=workers, progress=False)
      assert report["failed"] == 0, report["failures"][:3]
      out[f"workers_{workers}"] = {"images_per_second": report["images_per_second"],
                                   "mb_per_second": round(report["bytes"] / 1e6
                                                          / report["seconds"], 2)}
    again = download.download_images(ann, tmp / "dl16", base_url=server.base_url, workers=16,
                                     progress=False)
    out["resume_all_present_seconds"] = again["seconds"]
  return out


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--pairs", type=int, default=72_198)
  parser.add_argument("--scenes", type=int, default=200)
  parser.add_argument("--batches", type=int, default=6)
  parser.add_argument("--images", type=int, default=400)
  parser.add_argument("--json", default=None)
  args = parser.parse_args()
  with tempfile.TemporaryDirectory() as tmp:
    tmp = pathlib.Path(tmp)
    results = {"readers": bench_readers(tmp, args.pairs),
               "tf_data_images_per_second": bench_tf_data(tmp, args.scenes, args.batches),
               "download": bench_download(tmp, args.images)}
  print(json.dumps(results, indent=1))
  if args.json:
    pathlib.Path(args.json).write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
  main()
