"""`run.py serve` started as a real process on a free 127.0.0.1 port, driven by an HTTP client."""

import concurrent.futures
import json
import os
import subprocess
import sys
import time

import httpx
import numpy as np
import pytest
from PIL import Image

from ctl_jax.serving import catalogue, engine, recommend
from ctl_jax.serving import service as service_lib

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def start_service(workdir, *flags, timeout=180):
  """(process, base URL) of `run.py serve` on a free port, once it has printed its address."""
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}  # one CPU device, as users do
  proc = subprocess.Popen(
      [sys.executable, "run.py", "serve", f"--workdir={workdir}", "--port=0", *flags],
      cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
  deadline = time.time() + timeout
  line = proc.stdout.readline()  # blocks until the service prints its address (or dies)
  if not line or time.time() > deadline:
    proc.kill()
    raise AssertionError(f"serve did not start: {proc.stderr.read()[-3000:]}")
  url = json.loads(line)["serving"]
  for _ in range(100):
    try:
      if httpx.get(url + "healthz", timeout=5).status_code == 200:
        return proc, url
    except httpx.TransportError:
      time.sleep(0.1)
  proc.kill()
  raise AssertionError("serve printed its address but does not answer")


def stop_service(proc):
  proc.terminate()
  try:
    proc.wait(timeout=20)
  except subprocess.TimeoutExpired:
    proc.kill()


@pytest.fixture(scope="module")
def service(exported, tmp_path_factory):
  config, workdir, manifest, data = exported
  examples = tmp_path_factory.mktemp("examples")
  for scene in data.stl.scenes[:3]:
    src = data.stl.image_paths[scene]
    (examples / os.path.basename(src)).write_bytes(open(src, "rb").read())
  proc, url = start_service(workdir, "--max_upload_mb=1", f"--examples={examples}",
                            "--max_batch=8")
  yield url
  stop_service(proc)


def scene_file(data, i=0):
  return data.stl.image_paths[data.stl.scenes[i]]


def post(url, path, categories=(), k=None, **extra):
  files = {"image": (os.path.basename(path), open(path, "rb").read(), "image/jpeg")}
  form = {"category": list(categories)} if categories else {}
  if k is not None:
    form["k"] = str(k)
  form.update({key: str(v) for key, v in extra.items()})
  return httpx.post(url + "recommend", files=files, data=form, timeout=60)


def largest_category(manifest):
  return max(manifest["categories"], key=lambda c: manifest["categories"][c]["count"])


def assert_same_ranking(body, items, attention=None):
  got = [(p["signature"], p["category"]) for p in body["products"]]
  assert got == [(it.signature, it.category) for it in items]
  np.testing.assert_allclose([p["distance"] for p in body["products"]],
                             [it.distance for it in items], rtol=1e-4, atol=1e-4)
  assert [p["rank"] for p in body["products"]] == list(range(1, len(items) + 1))
  for c, grid in (attention or {}).items():
    np.testing.assert_allclose(body["attention"][c], grid, atol=1e-5)


def test_answers_equal_recommend(service, exported, predictor, tmp_path):
  config, workdir, manifest, data = exported
  name = largest_category(manifest)
  for i, (categories, k) in enumerate([([name], 6), ([], 10)]):
    path = scene_file(data, i)
    response = post(service, path, categories, k)
    assert response.status_code == 200, response.text
    body = response.json()
    out = recommend.recommend(workdir, scene=path, categories=categories or None, k=k,
                              out=str(tmp_path / f"report{i}"), predictor=predictor)
    _, attention = recommend.scene_flow(predictor, catalogue.Catalogue(f"{workdir}/export"),
                                        path, categories or None, k)
    assert_same_ranking(body, out["items"], attention)
    assert len(body["products"]) == k and body["task"] == "scene"
    assert set(body["attention"]) == set(categories or [
        c for c in manifest["categories"] if manifest["categories"][c]["count"]])
    grid = np.asarray(body["attention"][body["products"][0]["category"]])
    assert grid.ndim == 2 and abs(grid.sum() - 1) < 1e-4  # softmax over the regions

  # The product images are served from the catalogue, byte for byte.
  first = body["products"][0]
  image = httpx.get(service + first["image_url"].lstrip("/"), timeout=10)
  assert image.status_code == 200
  cat = catalogue.Catalogue(f"{workdir}/export")
  meta = cat.products(first["category"])
  file = meta["image"][list(meta["signature"]).index(first["signature"])]
  assert image.content == open(file, "rb").read()


def test_bad_requests_get_4xx_and_the_service_keeps_serving(service, exported, tmp_path):
  config, workdir, manifest, data = exported
  path = scene_file(data)
  big = tmp_path / "big.png"  # > the 1 MiB limit this service was started with
  Image.fromarray(np.random.default_rng(0).integers(0, 255, (800, 800, 3), np.uint8)).save(big)
  text = tmp_path / "notes.jpg"
  text.write_text("not a photo")
  truncated = tmp_path / "truncated.jpg"
  truncated.write_bytes(open(path, "rb").read()[:200])
  cases = [
      (post(service, str(text)), 400, "not an image"),
      (post(service, str(truncated)), 400, "image"),
      (post(service, str(big)), 413, "limit"),
      (post(service, path, ["Spacesuits"]), 400, "unknown category 'Spacesuits'"),
      (post(service, path, k=0), 400, "k=0"),
      (post(service, path, k=service_lib.MAX_K + 1), 400, f"k={service_lib.MAX_K + 1}"),
      (post(service, path, k="ten"), 400, "not an integer"),
      (post(service, path, quota=-1), 400, "quota"),
      (httpx.post(service + "recommend", data={"k": "3"}, files={"other": ("a", b"x")},
                  timeout=10), 400, "no 'image' file"),
      (httpx.post(service + "recommend", content=b"{}",
                  headers={"content-type": "application/json"}, timeout=10), 415, "multipart"),
      (httpx.get(service + "recommend", timeout=10), 405, "POST"),
      (httpx.get(service + "products/no-such-product", timeout=10), 404, "no-such-product"),
  ]
  # k larger than an explicitly asked category has products
  name = min(manifest["categories"], key=lambda c: manifest["categories"][c]["count"] or 1e9)
  count = manifest["categories"][name]["count"]
  cases.append((post(service, path, [name], k=count + 1), 400, f"only {count} products"))
  for response, status, words in cases:
    assert response.status_code == status, (words, response.text)
    assert words in response.json()["error"], response.json()
  health = httpx.get(service + "healthz", timeout=10).json()
  assert health["status"] == "ok" and health["errors"] >= len(cases) - 2
  good = post(service, path, k=3)
  assert good.status_code == 200 and len(good.json()["products"]) == 3


def test_concurrent_requests_share_batches_and_get_their_own_answers(service, exported):
  config, workdir, manifest, data = exported
  paths = [scene_file(data, i) for i in range(8)]
  alone = [post(service, p, k=5).json() for p in paths]
  before = httpx.get(service + "healthz", timeout=10).json()
  with concurrent.futures.ThreadPoolExecutor(16) as pool:
    together = list(pool.map(lambda i: post(service, paths[i % 8], k=5), range(32)))
  after = httpx.get(service + "healthz", timeout=10).json()
  assert all(r.status_code == 200 for r in together)
  for i, r in enumerate(together):
    assert_same_ranking(r.json(), [engine.Item(p["category"], p["signature"], "",
                                                  p["distance"]) for p in alone[i % 8]["products"]])
  requests = after["requests"] - before["requests"]
  batches = after["batches"] - before["batches"]
  assert requests == 32 and batches < 32  # some requests shared a model call


def test_the_web_page_shows_products_and_heatmaps(service, exported, tmp_path):
  """The page in a real headless browser (Debian's chromium through selenium): upload a photo,
  choose two categories, see the products' images and one heatmap per category."""
  from selenium import webdriver
  from selenium.webdriver.common.by import By
  from selenium.webdriver.support.ui import WebDriverWait
  browser, driver_path = "/usr/bin/chromium", "/usr/bin/chromedriver"
  assert os.path.exists(browser) and os.path.exists(driver_path), (
      "the web page test needs Debian's browser: apt-get install chromium chromium-driver "
      "(.ci/run installs them)")
  config, workdir, manifest, data = exported
  options = webdriver.ChromeOptions()
  options.binary_location = browser
  for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
              "--window-size=1200,1400"):
    options.add_argument(arg)
  driver = webdriver.Chrome(service=webdriver.ChromeService(driver_path), options=options)
  try:
    driver.get(service)
    wait = WebDriverWait(driver, 60)
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#categories input"))
    assert len(driver.find_elements(By.CSS_SELECTOR, "#examples img")) == 3
    boxes = driver.find_elements(By.CSS_SELECTOR, "#categories input")
    chosen = [b.get_attribute("value") for b in boxes[:2]]
    for b in boxes[:2]:
      b.click()
    driver.find_element(By.ID, "k").clear()
    driver.find_element(By.ID, "k").send_keys("6")
    driver.find_element(By.ID, "photo").send_keys(scene_file(data, 3))
    driver.find_element(By.ID, "go").click()
    wait.until(lambda d: d.find_element(By.ID, "results").get_attribute("data-done") == "1")
    images = driver.find_elements(By.CSS_SELECTOR, "#results .product img")
    assert len(images) == 6
    wait.until(lambda d: all(d.execute_script("return arguments[0].complete && "
                                              "arguments[0].naturalWidth > 0", im)
                             for im in images))
    maps = driver.find_elements(By.CSS_SELECTOR, "canvas.heatmap")
    assert sorted(m.get_attribute("data-category") for m in maps) == sorted(chosen)
    # The heatmap is drawn: its pixels vary (not a blank canvas).
    spread = driver.execute_script(
        "const c = arguments[0], d = c.getContext('2d').getImageData(0, 0, c.width, c.height)"
        ".data; let lo = 255, hi = 0; for (let i = 0; i < d.length; i += 4) {"
        "lo = Math.min(lo, d[i]); hi = Math.max(hi, d[i]); } return hi - lo;", maps[0])
    assert spread > 20
    expected = post(service, scene_file(data, 3), chosen, k=6).json()
    shown = [im.get_attribute("alt") for im in images]
    assert shown == [p["signature"] for p in expected["products"]]
    driver.save_screenshot(str(tmp_path / "page.png"))
    if os.environ.get("CTL_SCREENSHOT"):  # the page with its results, to look at
      driver.save_screenshot(os.environ["CTL_SCREENSHOT"])
    # An unknown category from the page's own request path: the error is shown, not a crash.
    driver.execute_script("document.querySelector('#categories input').value = 'Spacesuits'")
    driver.find_element(By.ID, "go").click()
    wait.until(lambda d: "Spacesuits" in d.find_element(By.ID, "error").text)
    assert not driver.find_elements(By.CSS_SELECTOR, "#results .product")
  finally:
    driver.quit()


def test_a_bad_workdir_is_one_line(tmp_path):
  result = subprocess.run([sys.executable, "run.py", "serve", f"--workdir={tmp_path}",
                           "--port=0"], cwd=REPO, capture_output=True, text=True, timeout=120)
  assert result.returncode == 1 and "Traceback" not in result.stderr
  assert str(tmp_path) in result.stderr.strip().splitlines()[-1]


def test_micro_batcher_gathers_waiting_calls():
  """Pure asyncio: calls submitted together go through one batch, in order, each its own
  output; an exception for one input reaches only its caller."""
  import asyncio

  from ctl_jax.serving.service import MicroBatcher
  seen = []

  def run(items):
    seen.append(list(items))
    return [ValueError(f"bad {x}") if x == 3 else x * 10 for x in items]

  async def main():
    batcher = MicroBatcher(run, max_batch=4, max_wait_ms=50)
    return await asyncio.gather(*(batcher.submit(i) for i in range(6)), return_exceptions=True)

  out = asyncio.run(main())
  assert out[:3] == [0, 10, 20] and isinstance(out[3], ValueError) and out[4:] == [40, 50]
  assert seen == [[0, 1, 2, 3], [4, 5]]

  async def later(batcher, arriving: int):
    """A first call, then a second 30 ms later, while `arriving` requests are announced."""
    batcher.arriving = arriving

    async def second():
      await asyncio.sleep(0.03)
      batcher.arriving = 0
      return await batcher.submit(7)
    return await asyncio.gather(batcher.submit(6), second())

  seen.clear()  # someone on the way: the first waits for it (up to max_wait_ms)
  assert asyncio.run(later(MicroBatcher(run, max_batch=4, max_wait_ms=2000), 1)) == [60, 70]
  assert seen == [[6, 7]]
  seen.clear()  # nobody on the way: the first goes alone, at once
  assert asyncio.run(later(MicroBatcher(run, max_batch=4, max_wait_ms=2000), 0)) == [60, 70]
  assert seen == [[6], [7]]


def test_bucket_and_padding():
  assert [engine.bucket(n) for n in (1, 2, 3, 4, 5, 31, 32, 33)] == [1, 2, 4, 4, 8, 32, 32, 64]
  x = np.arange(6).reshape(3, 2)
  np.testing.assert_array_equal(engine.pad_rows(x, 4), [[0, 1], [2, 3], [4, 5], [0, 1]])
  assert engine.pad_rows(x, 2) is x


def test_a_product_model_is_served_as_the_kdd_flow(product_smoke_config, stl_root,
                                                   tmp_path_factory, perturbed_checkpoint):
  """A product-task workdir: the photo of one product -> its predicted category, the categories
  that complete it and their products by style distance, as `recommend --product` ranks them."""
  from ctl_jax.serving import export
  config = product_smoke_config
  workdir = str(tmp_path_factory.mktemp("product_work"))
  perturbed_checkpoint(config, workdir, step=2)
  manifest = export.export_embeddings(config, workdir, str(stl_root))
  assert manifest["kind"] == "style_l2"
  table = catalogue.Catalogue(f"{workdir}/export")
  name = next(c for c in table.categories if manifest["categories"][c]["count"])
  photo = str(table.products(name)["image"][0])
  proc, url = start_service(workdir, "--max_batch=2")
  try:
    body = post(url, photo, k=5).json()
    items, predicted, weights = recommend.product_flow(None, workdir, table, photo, 5)
    assert body["task"] == "product" and body["predicted_category"] == predicted
    assert body["complementary"] == pytest.approx(weights)
    assert_same_ranking(body, items)
    # The product in the photo is not recommended to itself.
    assert os.path.splitext(os.path.basename(photo))[0] not in [
        p["signature"] for p in body["products"]]
    chosen = [c for c in sorted(weights) if manifest["categories"].get(c, {}).get("count")][:1]
    response = post(url, photo, chosen, k=3)
    assert response.status_code == 200, response.text
    assert {p["category"] for p in response.json()["products"]} == set(chosen)
    unstocked = [c for c in table.categories if not manifest["categories"][c]["count"]]
    if unstocked:  # a category of the model without products in this catalogue
      response = post(url, photo, unstocked[:1], k=3)
      assert response.status_code == 400 and "no products" in response.json()["error"]
    assert httpx.get(url + "healthz", timeout=10).json()["status"] == "ok"
  finally:
    stop_service(proc)
