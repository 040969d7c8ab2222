"""`run.py export`: embed a catalogue with a trained model and write it (see catalogue.py).

Catalogue sources:
  features  the training data's products, from the feature cache (extracted on first use);
  DIR       a folder with `fashion-cat.json` (product signature -> category path, the STL format)
            and product images under `DIR/<data.images_dir>` (flat or nested); products whose
            category the model does not know, or whose image is missing, are skipped and counted
            (`data.strict=True` stops at the first one instead).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping

import jax
import ml_collections
import numpy as np
import tqdm

from ctl_jax.scene import evaluation as scene_eval
from ctl_jax.serving import catalogue, product_predictor
from ctl_jax.serving.errors import ServingError
from ctl_jax.serving.restore import restore
from ctl_jax.trainer import sharding
from input_pipeline import storage
from input_pipeline.readers import image_folder, stl
from input_pipeline.readers.drops import DataError, DropReport


def read_catalogue_dir(root: str | os.PathLike, categories: list[str], *, images_dir: str,
                       category_map: Mapping[str, str] | None = None,
                       strict: bool = False) -> tuple[list[str], np.ndarray, list[str], DropReport]:
  """(signatures, category ids, image paths, DropReport) of the products of an STL-style folder."""
  root = storage.path(root)
  report = DropReport(strict=strict)
  path = root / stl.CATEGORIES_FILE
  if not path.exists():
    raise DataError(f"{path} not found: a catalogue folder holds {stl.CATEGORIES_FILE} "
                    f"and its images under {images_dir}/")
  paths = stl.read_category_map(path, report)
  folder = image_folder.ImageFolder(root / images_dir)
  index = {c: i for i, c in enumerate(categories)}
  sigs, ids, files = [], [], []
  for sig, cat_path in paths.items():
    label = stl.category_label(cat_path, category_map)
    if label not in index:
      report.drop(path, None, sig, f"category {label!r} unknown to the model")
    elif sig not in folder:
      report.drop(path, None, sig, f"missing image under {root / images_dir}")
    else:
      sigs.append(sig)
      ids.append(index[label])
      files.append(folder.path(sig))
  if not sigs:
    raise DataError(f"{path}: empty catalogue, no usable product ({report.summary()})")
  return sigs, np.asarray(ids, np.int32), files, report


def _scene_from_features(config, workdir):
  """The training products embedded from cached backbone features."""
  from ctl_jax.trainer import loop  # the trainer's data set-up and feature cache
  with config.unlocked():
    config.data.source = "features"
  run = loop.setup(config, workdir)
  state = loop.restore_trained(run)
  embedder = scene_eval.SceneEmbedder(run.model, run.mesh, sharding.shardings_of(state),
                                      config, cache=run.feature_cache(state))
  data = run.data
  emb = embedder.products(state, data)
  return (emb, list(data.stl.products), data.stl.product_category, data.product_paths,
          int(jax.device_get(state.step)), data.categories, DropReport(), config.data.root)


def _scene_from_folder(config, workdir, folder):
  scene = restore(workdir, config, task="scene")
  sigs, ids, files, report = read_catalogue_dir(
      folder, scene.categories, images_dir=config.data.images_dir,
      category_map=dict(config.data.category_map) or None, strict=config.data.strict)
  embedder = scene_eval.SceneEmbedder(scene.model, scene.mesh,
                                      sharding.shardings_of(scene.state), config)
  return (embedder.product_images(scene.state, files), sigs, ids, files, scene.step,
          scene.categories, report, folder)


def _style_from_folder(config, workdir, folder):
  """Style vectors of the product model (the KDD flow), through its serving API."""
  predictor = product_predictor.restore_product_predictor(workdir, config)
  sigs, ids, files, report = read_catalogue_dir(
      folder, predictor.categories, images_dir=config.data.images_dir,
      category_map=dict(config.data.category_map) or None, strict=config.data.strict)
  batch = config.eval.batch_size
  rows = []
  with tqdm.tqdm(total=len(files), unit="img", desc="embedding", leave=False,
                 mininterval=1.0, disable=None) as bar:  # on a terminal
    for i in range(0, len(files), batch):
      rows.append(predictor.embed(predictor.load_items(files[i:i + batch]))["style"])
      bar.update(len(rows[-1]))
  return (np.concatenate(rows), sigs, ids, files, predictor.step, predictor.categories, report,
          folder)


# (task, catalogue is the feature cache) -> embed function; kind of distance of the task.
SOURCES = {("scene", True): _scene_from_features, ("scene", False): _scene_from_folder,
           ("product", False): _style_from_folder}
KINDS = {"scene": "scene_hybrid", "product": "style_l2"}


def export_embeddings(config: ml_collections.ConfigDict, workdir: str, source: str,
                      out: str | None = None, dtype: str = "float32") -> dict:
  """Embeds the catalogue `source` ('features' or a folder) and writes it to `out`.

  Returns:
    The manifest (also written to `out/manifest.json`); `out` defaults to `workdir/export`.
  """
  use_cache = source == "features"
  if (config.task, use_cache) not in SOURCES:
    raise ServingError(f"--catalogue {source}: not supported for task {config.task!r} (use a "
                     f"catalogue folder)")
  if not use_cache and not storage.isdir(source):
    raise ServingError(f"--catalogue {source}: not a folder (or 'features')")
  fn = SOURCES[(config.task, use_cache)]
  args = (config, workdir) if use_cache else (config, workdir, source)
  emb, sigs, ids, files, step, categories, report, image_root = fn(*args)
  if len(report):
    logging.warning("%s: %s", source, report.summary())
  out = out or storage.join(workdir, "export")
  if jax.process_index() != 0:
    return {}
  return catalogue.write(out, emb, sigs, ids, categories, files, kind=KINDS[config.task],
                         step=step, fingerprint=catalogue.model_fingerprint(config, categories),
                         dtype=dtype, image_root=image_root,
                         extra={"catalogue": storage.absolute(source) if not use_cache
                                else "features", "dropped": report.counts()})
