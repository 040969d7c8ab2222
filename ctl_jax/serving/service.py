"""`run.py serve`: a recommendation service over HTTP (Starlette on uvicorn).

  POST /recommend        multipart form: `image` (a photo: a scene, or a product for a
                         product-task model), `category` (repeatable; default all), `k`, `quota`
                         -> JSON: products (rank, signature, category, distance, image_url) and,
                         for a scene model, the attention map [h, w] of every category
  GET  /                 the web page: upload or pick a photo, choose categories, see products
                         and attention heatmaps
  GET  /healthz          status, model, catalogue, and how many requests and batches were served
  GET  /products/{sig}   a product's image, from the catalogue
  GET  /examples/{name}  one of the --examples photos the page offers

The checkpoint and the exported catalogue are loaded once; the ranker keeps each category's rows
on the devices (or its ANN index in memory) between requests. Concurrent requests are gathered
into micro-batches (`MicroBatcher`): the first request of a batch waits at most `max_wait_ms` for
others, up to `max_batch`, and the batch is answered by one model call and one search per
category (engine.py), so throughput grows with load. A request the service cannot answer (not an
image, too large, an unknown category, k out of range) gets a 4xx JSON error naming the problem;
the others in its batch are unaffected.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import functools
import io
import json
import logging
import mimetypes
import os
import pathlib
import socket
import time
from collections.abc import Callable

import numpy as np
from PIL import Image

from ctl_jax.serving import catalogue as catalogue_lib
from ctl_jax.serving.engine import Request, Result
from ctl_jax.serving.errors import ServingError
from input_pipeline import storage

PAGE = pathlib.Path(__file__).with_name("web") / "index.html"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp")
MAX_K = 1000  # products per request: enough for any page, and bounds the work of one request


class RequestError(ServingError):
  """A request the service refuses: its HTTP status and the one-line reason."""

  def __init__(self, message: str, status: int = 400):
    super().__init__(message)
    self.status = status


class MicroBatcher:
  """Gathers concurrent calls into batches for `run_batch` (list of inputs -> list of outputs),
  which runs on one worker thread: the event loop keeps accepting requests meanwhile.

  Args:
    max_batch: the most inputs per batch (1: no batching).
    max_wait_ms: how long the first input of a batch waits for more, while others are on their
      way (`arriving`: requests being read and decoded); with none on its way it goes at once,
      so a lone request pays no wait.
  """

  def __init__(self, run_batch: Callable[[list], list], max_batch: int = 32,
               max_wait_ms: float = 2.0):
    self.run_batch, self.max_batch, self.max_wait = run_batch, max(max_batch, 1), max_wait_ms / 1e3
    self.batches = self.items = 0
    self.arriving = 0  # requests that will be submitted soon (the service counts them)
    self._queue: asyncio.Queue | None = None
    self._worker = None
    self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="model")

  async def submit(self, item):
    """The output of `item`, computed in some batch (its exception, if the batch raises)."""
    if self._queue is None:
      self._queue = asyncio.Queue()
      self._worker = asyncio.create_task(self._serve())
    future = asyncio.get_running_loop().create_future()
    await self._queue.put((item, future))
    return await future

  async def _next_batch(self) -> list:
    batch = [await self._queue.get()]
    deadline = asyncio.get_running_loop().time() + self.max_wait
    while len(batch) < self.max_batch:
      if not self._queue.empty():
        batch.append(self._queue.get_nowait())
        continue
      left = deadline - asyncio.get_running_loop().time()
      if left <= 0 or self.arriving == 0:
        break
      try:
        batch.append(await asyncio.wait_for(self._queue.get(), left))
      except TimeoutError:
        break
    return batch

  async def _serve(self) -> None:
    loop = asyncio.get_running_loop()
    while True:
      batch = await self._next_batch()
      items = [item for item, _ in batch]
      try:
        outputs = await loop.run_in_executor(self._executor, self.run_batch, items)
      except Exception as e:  # a bug in the batch: every caller gets it (as a 500), we go on
        logging.exception("batch of %d failed", len(items))
        outputs = [e] * len(items)
      self.batches += 1
      self.items += len(items)
      for (_, future), out in zip(batch, outputs):
        if future.done():  # the client went away
          continue
        if isinstance(out, BaseException):
          future.set_exception(out)
        else:
          future.set_result(out)


@functools.lru_cache(maxsize=8)
def _prepare_fn(size: int, normalization: str):
  """The training preprocessing of one encoded image, as a TensorFlow graph (6x faster than
  running its ops eagerly, request by request)."""
  import tensorflow as tf

  from input_pipeline import preprocess
  full = tf.constant(preprocess.FULL_IMAGE, tf.float32)

  @tf.function(input_signature=[tf.TensorSpec([], tf.string)], autograph=False)
  def prepare(data):
    return preprocess.prepare_image(data, full, size, normalization)
  return prepare


def decode_upload(data: bytes, config) -> np.ndarray:
  """[S, S, 3] model input of uploaded image bytes, preprocessed exactly as in training;
  RequestError when the bytes are not an image."""
  if not data:
    raise RequestError("the 'image' field is empty: upload a photo (JPEG, PNG, GIF or BMP)")
  try:
    with Image.open(io.BytesIO(data)) as im:
      im.verify()
  except Exception as e:  # PIL raises many kinds for bytes that are not an image
    raise RequestError(f"the upload is not an image PIL can read ({type(e).__name__}: {e})"
                       ) from None
  import tensorflow as tf
  try:
    return _prepare_fn(config.input.image_size, config.input.normalization)(
        tf.constant(data)).numpy()
  except tf.errors.OpError as e:
    raise RequestError(f"cannot decode the upload: {e.message.splitlines()[0]} (JPEG, PNG, "
                       "GIF or BMP)") from None


def result_json(result: Result, task: str) -> dict:
  """The JSON body of one answered request."""
  body = {"task": task, "products": [
      {"rank": i, "signature": it.signature, "category": it.category,
       "distance": round(it.distance, 6), "image_url": f"/products/{it.signature}"}
      for i, it in enumerate(result.items, 1)]}
  if task == "scene":
    body["attention"] = {c: np.round(a.astype(np.float64), 6).tolist()
                         for c, a in result.attention.items()}
  else:
    body["predicted_category"] = result.predicted
    body["complementary"] = result.complementary
  return body


@dataclasses.dataclass
class ServiceOptions:
  max_batch: int = 32
  max_wait_ms: float = 2.0
  max_upload_bytes: int = 20 << 20
  examples: str | None = None  # a folder of photos the page offers to pick


class Service:
  """The loaded model, catalogue and batcher; `app()` is the ASGI application."""

  def __init__(self, engine, options: ServiceOptions | None = None):
    options = options or ServiceOptions()
    self.engine, self.options = engine, options
    self.batcher = MicroBatcher(self._run_batch, options.max_batch, options.max_wait_ms)
    self.started = time.time()
    self.errors = 0
    cat = engine.cat
    self.images = {}  # signature -> image file
    for c in cat.categories:
      if cat.manifest["categories"][c]["count"]:
        meta = cat.products(c)
        self.images.update(zip(map(str, meta["signature"]), map(str, meta["image"])))
    self.examples = {}
    if options.examples:
      folder = pathlib.Path(options.examples)
      if not folder.is_dir():
        raise ServingError(f"--examples {options.examples}: not a folder")
      self.examples = {p.name: p for p in sorted(folder.iterdir())
                       if p.suffix.lower() in IMAGE_SUFFIXES}

  def _run_batch(self, requests: list[Request]) -> list:
    return self.engine.run(requests)

  def health(self) -> dict:
    cat = self.engine.cat
    return {"status": "ok", "task": self.engine.task,
            "model_step": cat.manifest["model_step"], "products": cat.manifest["num_products"],
            "categories": [{"name": c, "count": cat.manifest["categories"][c]["count"]}
                           for c in self.engine.categories],
            "index": (None if self.engine.exact else (cat.manifest.get("index") or {}).get("spec")),
            "requests": self.batcher.items, "batches": self.batcher.batches,
            "errors": self.errors, "max_batch": self.batcher.max_batch,
            "examples": list(self.examples), "max_k": MAX_K,
            "uptime_s": round(time.time() - self.started, 1)}

  async def parse(self, request) -> Request:
    """The engine's Request of an HTTP request; RequestError for a bad one."""
    from starlette.concurrency import run_in_threadpool
    limit = self.options.max_upload_bytes
    length = request.headers.get("content-length")
    if length and length.isdigit() and int(length) > limit + 64 * 1024:
      raise RequestError(f"request of {int(length)} bytes: uploads are limited to {limit} bytes",
                         413)
    if "multipart/form-data" not in request.headers.get("content-type", ""):
      raise RequestError("send a multipart/form-data form with an 'image' file field", 415)
    try:
      form = await request.form(max_files=1, max_fields=64)
    except Exception as e:  # malformed multipart, too many parts
      raise RequestError(f"unreadable form: {e}") from None
    upload = form.get("image")
    if upload is None or isinstance(upload, str):
      raise RequestError("no 'image' file in the form: upload a photo as the 'image' field")
    data = await upload.read(limit + 1)
    if len(data) > limit:
      raise RequestError(f"the image is larger than the limit of {limit} bytes", 413)
    k, quota = _int_field(form, "k", 10), _int_field(form, "quota", 0)
    categories = [v for v in form.getlist("category") if isinstance(v, str) and v.strip()]
    if not 1 <= k <= MAX_K:
      raise RequestError(f"k={k}: ask for 1 to {MAX_K} products")
    try:
      names = self.engine.validate(categories, k, quota)
    except ServingError as e:
      raise RequestError(str(e)) from None
    image = await run_in_threadpool(decode_upload, data, self.engine.config)
    return Request(image, names, k, quota, name=os.path.basename(upload.filename or ""))

  def app(self):
    from starlette.applications import Starlette
    from starlette.responses import FileResponse, HTMLResponse, JSONResponse, Response
    from starlette.routing import Route

    async def recommend_endpoint(request):
      self.batcher.arriving += 1
      try:
        parsed = await self.parse(request)
      except RequestError as e:
        self.errors += 1
        return JSONResponse({"error": str(e)}, status_code=e.status)
      finally:
        self.batcher.arriving -= 1
      try:
        result = await self.batcher.submit(parsed)
      except ServingError as e:  # the catalogue cannot answer it (e.g. no product left)
        self.errors += 1
        return JSONResponse({"error": str(e)}, status_code=400)
      except Exception as e:
        self.errors += 1
        return JSONResponse({"error": f"internal error: {type(e).__name__}: {e}"},
                            status_code=500)
      return JSONResponse(result_json(result, self.engine.task))

    async def product_image(request):
      sig = request.path_params["signature"]
      path = self.images.get(sig)
      if not path:
        return JSONResponse({"error": f"no product {sig!r} in the catalogue"}, status_code=404)
      if storage.is_remote(path):
        return Response(storage.read_bytes(path),
                        media_type=mimetypes.guess_type(path)[0] or "image/jpeg")
      if not os.path.exists(path):
        return JSONResponse({"error": f"the image of {sig!r} is missing: {path}"},
                            status_code=404)
      return FileResponse(path)

    async def example(request):
      path = self.examples.get(request.path_params["name"])
      if path is None:
        return JSONResponse({"error": "no such example"}, status_code=404)
      return FileResponse(path)

    async def page(request):
      return HTMLResponse(PAGE.read_text())

    async def health(request):
      return JSONResponse(self.health())

    async def not_allowed(request):
      return JSONResponse({"error": "POST a multipart form to /recommend"}, status_code=405)

    return Starlette(routes=[
        Route("/", page), Route("/healthz", health),
        Route("/recommend", recommend_endpoint, methods=["POST"]),
        Route("/recommend", not_allowed, methods=["GET"]),
        Route("/products/{signature}", product_image),
        Route("/examples/{name}", example)])


def _int_field(form, name: str, default: int) -> int:
  value = form.get(name)
  if value is None or (isinstance(value, str) and not value.strip()):
    return default
  try:
    return int(str(value).strip())
  except ValueError:
    raise RequestError(f"{name}={str(value)[:40]!r}: not an integer") from None


def load_engine(workdir: str, embeddings: str | None = None, images: str | None = None,
                exact: bool = False, config=None):
  """The scene or product engine of `workdir`'s served checkpoint and its exported catalogue."""
  from ctl_jax.serving import engine, restore
  from ctl_jax.trainer import checkpoint
  checkpoint.require_checkpoints(workdir)  # the workdir first: the commonest mistake
  cat = catalogue_lib.Catalogue(embeddings or storage.join(workdir, "export"), image_root=images)
  if cat.manifest["kind"] == "style_l2":
    from ctl_jax.serving import product_predictor
    return engine.ProductEngine(product_predictor.restore_product_predictor(workdir, config), cat,
                                exact)
  from ctl_jax.serving import scene_predictor
  return engine.SceneEngine(scene_predictor.ScenePredictor(restore.restore(workdir, config,
                                                                           task="scene")),
                            cat, exact)


def warm_up(service: Service) -> None:
  """Compiles before the first request what requests will run: the upload preprocessing, and
  the model and every category's search for each padded shape that a batch of up to
  `max_batch` photos, each asking for every category (k <= 16), takes."""
  from ctl_jax.serving.engine import bucket
  e = service.engine
  buf = io.BytesIO()
  Image.new("RGB", (48, 40), (120, 80, 60)).save(buf, "JPEG")
  image = decode_upload(buf.getvalue(), e.config)
  per_photo = len(getattr(e, "stocked", [])) or 1
  shapes = {}
  for b in range(1, service.batcher.max_batch + 1):
    shapes.setdefault((bucket(b), bucket(b * per_photo)), b)
  for b in shapes.values():
    e.run([Request(image, [], 10)] * b)


def bind(host: str, port: int) -> socket.socket:
  """A listening socket (port 0: a free one)."""
  sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
  sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
  try:
    sock.bind((host, port))
  except OSError as e:
    raise ServingError(f"--host {host} --port {port}: cannot listen there ({e.strerror})"
                       ) from None
  sock.listen(2048)
  return sock


def serve(workdir: str, *, host: str = "127.0.0.1", port: int = 8000,
          embeddings: str | None = None, images: str | None = None, exact: bool = False,
          options: ServiceOptions | None = None, config=None) -> None:
  """Loads the model and catalogue, then serves until interrupted (prints its address)."""
  import uvicorn
  service = Service(load_engine(workdir, embeddings, images, exact, config), options)
  warm_up(service)
  sock = bind(host, port)
  address = sock.getsockname()
  url_host = f"[{address[0]}]" if ":" in address[0] else address[0]
  health = service.health()
  print(json.dumps({"serving": f"http://{url_host}:{address[1]}/", "task": health["task"],
                    "model_step": health["model_step"], "products": health["products"],
                    "index": health["index"], "max_batch": options.max_batch}), flush=True)
  server = uvicorn.Server(uvicorn.Config(service.app(), log_level="warning", access_log=False,
                                         timeout_keep_alive=30))
  server.run(sockets=[sock])
