"""Export, recommend and their errors, on a checkpoint of the smoke model and the generated data."""

import functools
import json
import os
import re
import shutil

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from ctl_jax.scene import distances
from ctl_jax.serving import catalogue, engine, export, recommend, restore, scene_predictor
from ctl_jax.trainer import config_fields
from input_pipeline.readers import stl
from input_pipeline.readers.drops import DataError


def _scene_image(data):
  return data.stl.image_paths[data.stl.scenes[0]]


def test_export_is_readable_without_our_code(exported, predictor):
  config, workdir, manifest, data = exported
  root = f"{workdir}/export"
  assert manifest["model_step"] == 3 and manifest["embed_dim"] == config.model.embed_dim
  table = pq.read_table(f"{root}/products.parquet").to_pydict()
  listed = json.load(open(f"{config.data.root}/fashion-cat.json"))
  known = sorted(s for s, path in listed.items() if stl.category_label(path) in data.categories)
  assert sorted(table["signature"]) == known  # every product of a known category, once
  assert set(data.stl.products) <= set(known) and manifest["num_products"] == len(known)
  assert json.load(open(f"{root}/manifest.json")) == manifest
  for name, entry in manifest["categories"].items():
    rows = np.load(f"{root}/{entry['file']}")
    assert rows.shape == (entry["count"], config.model.embed_dim) and rows.dtype == np.float32
    assert sum(c == name for c in table["category"]) == entry["count"]
  # The rows are the model's product embeddings, in the order the table says.
  scene = predictor
  name = data.categories[0]
  member = [i for i, c in enumerate(table["category"]) if c == name][:3]
  files = catalogue.Catalogue(root).products(name)["image"]
  images = np.stack([recommend.load_model_input(files[table["row"][i]], config) for i in member])
  encode = jax.jit(functools.partial(scene_predictor.product_encoder, scene.model))
  expected = encode(scene.state.variables(), images)["embedding"]
  rows = np.load(f"{root}/{manifest['categories'][name]['file']}")
  np.testing.assert_allclose(rows[[table["row"][i] for i in member]], expected, atol=1e-5)


def test_an_export_moved_with_its_catalogue_finds_its_images(exported, tmp_path):
  config, workdir, manifest, data = exported
  table = pq.read_table(f"{workdir}/export/products.parquet").to_pydict()
  assert not any(os.path.isabs(p) for p in table["image"])  # relative to the catalogue folder
  assert all(p.startswith("images/") for p in table["image"])
  # Both folders move to another parent, keeping where one is from the other.
  new_parent = tmp_path / "moved"
  shutil.copytree(workdir, new_parent / "w" / "work")
  old_catalogue = os.path.relpath(config.data.root, f"{workdir}/export")
  new_catalogue = os.path.normpath(new_parent / "w" / "work" / "export" / old_catalogue)
  shutil.copytree(config.data.root, new_catalogue, ignore=shutil.ignore_patterns("*.tfrecord*"))
  moved = catalogue.Catalogue(new_parent / "w" / "work" / "export")
  name = data.categories[0]
  files = moved.products(name)["image"]
  assert files[0].startswith(str(new_parent)) and all(os.path.exists(f) for f in files)
  # An export moved alone is pointed at its images.
  alone = catalogue.Catalogue(f"{workdir}/export", image_root=new_catalogue)
  assert list(alone.products(name)["image"]) == list(files)


def test_recommend_equals_brute_force_hybrid_distances(exported, predictor, tmp_path, capsys):
  config, workdir, manifest, data = exported
  cat_name = max(manifest["categories"], key=lambda c: manifest["categories"][c]["count"])
  out = recommend.recommend(workdir, scene=_scene_image(data), categories=[cat_name], k=6,
                            out=str(tmp_path / "report"), predictor=predictor)
  # Brute force: the model's hybrid distance to every product of the category.
  scene = predictor
  image = recommend.load_model_input(_scene_image(data), config)
  parts = jax.jit(functools.partial(scene.model.apply, method=scene_predictor.scene_parts))
  f_s, f_i, attn = parts(scene.state.variables(), image[None],
                         jnp.asarray([scene.categories.index(cat_name)]))
  cat = catalogue.Catalogue(f"{workdir}/export")
  products = np.asarray(cat.embeddings(cat_name))
  d = np.asarray(distances.hybrid_distance(f_s, f_i, attn.reshape(1, -1), products[None]))[0]
  best = np.argsort(d)[:6]
  sigs = cat.products(cat_name)["signature"]
  assert [it.signature for it in out["items"]] == list(sigs[best])
  np.testing.assert_allclose([it.distance for it in out["items"]], d[best], atol=1e-5)
  printed = capsys.readouterr().out
  assert sigs[best[0]] in printed and "index.html" in printed
  # The page links only files that exist, by relative path; the sheet is a real PNG.
  page = (tmp_path / "report" / "index.html").read_text()
  links = re.findall(r"src='([^']+)'", page)
  assert len(links) == 2 + 6 and all((tmp_path / "report" / p).exists() for p in links)
  assert Image.open(out["contact_sheet"]).size[0] > 0


def test_recommend_every_category_blends_with_quota(exported, predictor):
  _, workdir, manifest, data = exported
  cat = catalogue.Catalogue(f"{workdir}/export")
  items, attention = recommend.scene_flow(predictor, cat, _scene_image(data), None, 7, quota=1)
  assert len(items) == 7 and len({it.category for it in items}) == 7  # quota 1: all different
  assert set(attention) == {c for c, e in manifest["categories"].items() if e["count"]}


def test_bad_input_gives_clear_errors(exported, predictor, tmp_path):
  config, workdir, manifest, data = exported
  cat = catalogue.Catalogue(f"{workdir}/export")
  scene = _scene_image(data)
  flow = lambda image=scene, cats=None, k=10, c=cat: recommend.scene_flow(
      predictor, c, image, cats, k)
  bad = tmp_path / "bad.jpg"
  bad.write_bytes(b"not an image")
  with pytest.raises(ValueError, match=f"cannot read image {re.escape(str(bad))}"):
    flow(image=str(bad))
  with pytest.raises(KeyError, match="unknown category 'Hats'; valid categories: .*Shoes"):
    flow(cats=["Hats"])
  small = min(manifest["categories"], key=lambda c: manifest["categories"][c]["count"] or 1e9)
  n = manifest["categories"][small]["count"]
  with pytest.raises(ValueError, match=f"-k {n + 1} but category '{re.escape(small)}' has only"):
    flow(cats=[small], k=n + 1)
  stale = tmp_path / "stale"
  catalogue.write(stale, np.ones((1, 16), np.float32), ["a" * 32], np.zeros(1, int),
                  data.categories, [""], kind="scene_hybrid", step=99, fingerprint="other")
  with pytest.raises(catalogue.ManifestMismatch, match="step 99 .* checkpoint is step 3"):
    flow(c=catalogue.Catalogue(stale))
  with pytest.raises(FileNotFoundError, match="run `run.py export` first"):
    catalogue.Catalogue(tmp_path)
  empty = tmp_path / "empty"
  empty.mkdir()
  (empty / "fashion-cat.json").write_text("{}")
  with pytest.raises(DataError, match="empty catalogue"):
    export.read_catalogue_dir(empty, data.categories, images_dir="images")


def test_blend_and_quotas():
  item = lambda c, d: engine.Item(c, f"{c}{d}", "", d)
  lists = {"a": [item("a", 1), item("a", 2), item("a", 3)], "b": [item("b", 0.5)],
           "c": [item("c", 4), item("c", 5)]}
  got = engine.blend(lists, 5, {"a": 2, "b": 2, "c": 1}, ["b", "a", "c"])
  assert [it.signature for it in got] == ["b0.5", "a1", "c4", "a2", "a3"]  # last: filled by d
  assert engine.proportional_quotas({"x": 0.5, "y": 0.3, "z": 0.2}, 4) == {"x": 2, "y": 1,
                                                                             "z": 1}
  assert sum(engine.proportional_quotas({"x": 1, "y": 1, "z": 1}, 10).values()) == 10
  assert engine.uniform_quotas(["x", "y", "z"], 10) == {"x": 4, "y": 4, "z": 4}


def test_product_query_ranks_by_style_distance_and_blends(tmp_path):
  """The product flow's retrieval part: exact L2 per category, quotas from co-occurrence."""
  rng = np.random.default_rng(0)
  emb = rng.normal(size=(30, 8)).astype(np.float32)
  ids = np.arange(30) % 3
  catalogue.write(tmp_path, emb, [f"p{i}" for i in range(30)], ids, ["Shoes", "Pants", "Bags"],
                  [""] * 30, kind="style_l2", step=1, fingerprint="f")
  style = rng.normal(size=8).astype(np.float32)
  items = engine.product_items(catalogue.Catalogue(tmp_path), style,
                                  {"Pants": 0.6, "Bags": 0.2, "Hats": 0.2}, 5)
  d = ((emb - style) ** 2).sum(1)
  best = lambda c: [f"p{i}" for i in np.flatnonzero(ids == c)[np.argsort(d[ids == c])]]
  # Hats has no products: Pants 0.6 and Bags 0.2 share 5 slots 4:1, Pants first.
  assert [it.signature for it in items] == [best(1)[0], best(2)[0], *best(1)[1:4]]
  np.testing.assert_allclose(items[0].distance, d[int(best(1)[0][1:])], rtol=1e-5)
  without = engine.product_items(catalogue.Catalogue(tmp_path), style, {"Pants": 1.0}, 3,
                                    exclude={best(1)[0]})  # the query item itself
  assert [it.signature for it in without] == best(1)[1:4]


def test_a_given_config_with_a_foreign_field_is_refused(exported):
  """Serving checks a user's --config as the trainer does: exactly the task's fields."""
  config, workdir, _, _ = exported
  config = ml_collections.ConfigDict(config.to_dict())
  config.loss.name = "proxy"  # a product-task field in a scene config
  with pytest.raises(config_fields.ConfigError, match=r"not read by task 'scene': loss\.name"):
    restore.restore(workdir, config)
