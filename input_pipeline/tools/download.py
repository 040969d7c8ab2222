"""Fetches the images of an annotation file: parallel, resumable, verified, with a failure report.

    python run.py download-images --annotations fashion.json --out stl-fashion/images

Every signature of the file (scenes and products of `fashion.json`; collages of `raw_*.tsv`,
`triplet_*.tsv` or `fitb_eval.json`) maps to the published URL pattern
`<base>/ab/cd/ef/<sig>.jpg` and is saved in the same nested layout under `--out`, which the
readers take as is. A file appears under its final name only once it is complete and decodes
(written to a temporary name, checked, then renamed), so a killed run leaves no half files and
the next run skips every finished image. Connection errors, timeouts, truncated bodies, 429 and
5xx answers are retried with exponential backoff; 403/404 are final. The run ends with a JSON
report listing every failure with its URL, HTTP status and reason.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import io
import json
import logging
import os
import threading
import time
from pathlib import Path

import requests
import tqdm
from PIL import Image

from input_pipeline.readers import ctl, image_folder, stl
from input_pipeline.readers.drops import DataError, DropReport

# The pattern of the public releases' image URLs (the datasets' READMEs): 400 px wide JPEGs.
DEFAULT_BASE_URL = "https://i.pinimg.com/400x"
REPORT_FILE = "download_report.json"
PART_SUFFIX = ".part"
_RETRY_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})


def image_url(sig: str, base_url: str = DEFAULT_BASE_URL) -> str:
  return f"{base_url.rstrip('/')}/{image_folder.nested_relpath(sig).replace(os.sep, '/')}"


def _sigs_stl(path, report):
  for _, scene, product, _ in stl.read_pairs(path, report):
    yield scene
    yield product


def _sigs_raw(path, report):
  for _, sig, _, _ in ctl.read_raw(path, report):
    yield sig


def _sigs_triplets(path, report):
  for row in ctl.read_triplets(path, report):
    yield from (item[0] for item in row[1:])


def _sigs_fitb(path, report):
  for question in ctl.read_fitb(path, report):
    yield from (item[0] for item in question["question"] + question["answers"])


def annotation_signatures(path: str | os.PathLike, strict: bool = False
                          ) -> tuple[list[str], DropReport]:
  """Unique image signatures of an annotation file, in order of first appearance.

  The format follows the published file names: `*.json` with one object per line is STL
  (`fashion.json`), `fitb*.json` is CTL FITB, `raw_*.tsv` and `triplet_*.tsv` are CTL.
  """
  name = Path(path).name
  readers = {"raw": _sigs_raw, "triplet": _sigs_triplets}
  if name.endswith(".tsv"):
    kind = next((k for k in readers if name.startswith(k)), None)
    if kind is None:
      raise DataError(f"{path}: a .tsv annotation file must be raw_*.tsv or triplet_*.tsv")
    read = readers[kind]
  elif name.endswith(".json"):
    read = _sigs_fitb if name.startswith("fitb") else _sigs_stl
  else:
    raise DataError(f"{path}: unknown annotation file (fashion.json, raw_*.tsv, triplet_*.tsv, "
                    "fitb_eval.json)")
  report = DropReport(strict=strict)
  return list(dict.fromkeys(read(path, report))), report


@dataclasses.dataclass
class Failure:
  signature: str
  url: str
  status: int | None  # HTTP status, None when no answer came (timeout, connection error)
  reason: str
  attempts: int


class _Retry(Exception):
  """A failure worth another attempt: args (status, reason)."""


class _Final(Exception):
  """A failure that another attempt would repeat (403, 404, ...): args (status, reason)."""


def verify_image(data: bytes) -> str | None:
  """None when `data` decodes as a whole image, else why not."""
  if not data:
    return "empty body"
  try:
    with Image.open(io.BytesIO(data)) as image:
      image.load()  # decodes every row: a truncated file fails here
  except Exception as e:  # PIL raises many types (OSError, SyntaxError, ...) for bad files
    return f"not a decodable image ({type(e).__name__}: {e})"
  return None


class Downloader:
  """Downloads signatures into `out` (nested layout) with `workers` threads."""

  def __init__(self, out: str | os.PathLike, base_url: str = DEFAULT_BASE_URL, *,
               workers: int = 16, timeout: float = 30.0, retries: int = 4,
               backoff: float = 1.0):
    self.out = Path(out)
    self.base_url = base_url
    self.workers = workers
    self.timeout = timeout
    self.retries = retries
    self.backoff = backoff
    self._local = threading.local()

  def path(self, sig: str) -> Path:
    return self.out / image_folder.nested_relpath(sig)

  def _session(self) -> requests.Session:
    if not hasattr(self._local, "session"):  # one connection pool per thread
      self._local.session = requests.Session()
    return self._local.session

  def _attempt(self, sig: str, url: str) -> int:
    """One GET; returns the bytes written, or raises _Retry or _Final."""
    try:
      response = self._session().get(url, timeout=self.timeout, stream=True)
    except requests.RequestException as e:
      raise _Retry(None, f"{type(e).__name__}: {e}") from None
    status = response.status_code
    try:
      data = response.content  # raises on a body shorter than its Content-Length
    except requests.RequestException as e:
      raise _Retry(status, f"incomplete body ({type(e).__name__}: {e})") from None
    if status != 200:
      reason = f"HTTP {status} {response.reason}"
      raise (_Retry if status in _RETRY_STATUS else _Final)(status, reason)
    problem = verify_image(data)
    if problem:
      # A body cut short by a proxy or a dropped connection decodes badly: try again.
      raise _Retry(200, problem)
    final = self.path(sig)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f"{final.name}.{os.getpid()}.{threading.get_ident()}{PART_SUFFIX}")
    tmp.write_bytes(data)
    os.replace(tmp, final)  # atomic: the final name only ever holds a complete image
    return len(data)

  def fetch(self, sig: str) -> tuple[int, Failure | None]:
    """(bytes written, None) or (0, Failure) after the retries."""
    url = image_url(sig, self.base_url)
    attempt = 0
    while True:
      attempt += 1
      try:
        return self._attempt(sig, url), None
      except _Final as e:
        status, reason = e.args
        return 0, Failure(sig, url, status, reason, attempt)
      except _Retry as e:
        status, reason = e.args
        if attempt > self.retries:
          return 0, Failure(sig, url, status, reason, attempt)
        time.sleep(self.backoff * 2 ** (attempt - 1))

  def remove_partial_files(self) -> int:
    """Deletes temporary files left by a killed run; returns how many."""
    count = 0
    if self.out.is_dir():
      for part in self.out.rglob(f"*{PART_SUFFIX}"):
        part.unlink(missing_ok=True)
        count += 1
    return count

  def run(self, sigs: list[str], progress: bool = True) -> dict:
    """Downloads the missing images of `sigs`; returns the report (see `download_images`)."""
    start = time.perf_counter()
    stale = self.remove_partial_files()
    todo = [s for s in sigs if not self.path(s).exists()]
    failures: list[Failure] = []
    nbytes = 0
    with concurrent.futures.ThreadPoolExecutor(self.workers) as pool, tqdm.tqdm(
        total=len(todo), unit="img", desc="downloading", disable=not progress,
        mininterval=1.0) as bar:
      for size, failure in pool.map(self.fetch, todo):
        nbytes += size
        if failure:
          failures.append(failure)
        bar.update(1)
    seconds = time.perf_counter() - start
    downloaded = len(todo) - len(failures)
    return {
        "signatures": len(sigs), "already_present": len(sigs) - len(todo),
        "downloaded": downloaded, "failed": len(failures), "bytes": nbytes,
        "seconds": round(seconds, 3),
        "images_per_second": round(downloaded / seconds, 2) if seconds > 0 else None,
        "partial_files_removed": stale,
        "failures_by_status": dict(collections.Counter(
            "no answer" if f.status is None else f"HTTP {f.status}"
            for f in failures).most_common()),
        "failures": [dataclasses.asdict(f) for f in failures],
    }


def download_images(annotations: str | os.PathLike, out: str | os.PathLike, *,
                    base_url: str = DEFAULT_BASE_URL, workers: int = 16, timeout: float = 30.0,
                    retries: int = 4, backoff: float = 1.0, report_file: str | None = None,
                    progress: bool = True) -> dict:
  """Downloads every image of `annotations` into `out` and writes the report.

  Returns:
    The report: counts (`signatures`, `already_present`, `downloaded`, `failed`), `bytes`,
    `seconds`, `images_per_second`, and `failures` [{signature, url, status, reason,
    attempts}], also written to `report_file` (default `out/download_report.json`).
  """
  sigs, drops = annotation_signatures(annotations)
  if len(drops):
    logging.warning("%s: %s (their images are not fetched)", annotations, drops.summary())
  downloader = Downloader(out, base_url, workers=workers, timeout=timeout, retries=retries,
                          backoff=backoff)
  report = downloader.run(sigs, progress=progress)
  report["annotations"] = str(annotations)
  report["annotation_drops"] = len(drops)
  report_file = Path(report_file or Path(out) / REPORT_FILE)
  report_file.parent.mkdir(parents=True, exist_ok=True)
  report_file.write_text(json.dumps(report, indent=1) + "\n")
  report["report_file"] = str(report_file)
  return report


def format_report(report: dict, max_lines: int = 20) -> str:
  """The summary line, then up to `max_lines` failures."""
  lines = [f"{report['downloaded']} downloaded, {report['already_present']} already present, "
           f"{report['failed']} failed of {report['signatures']} images "
           f"({report['bytes'] / 1e6:.1f} MB in {report['seconds']:.1f} s, "
           f"{report['images_per_second']} images/s); report: {report.get('report_file')}"]
  for f in report["failures"][:max_lines]:
    reason = f["reason"]
    if not reason.startswith("HTTP"):
      reason = (f"HTTP {f['status']}, " if f["status"] is not None else "no answer, ") + reason
    lines.append(f"  {f['signature']}  {reason}  ({f['attempts']} attempts)  {f['url']}")
  if report["failed"] > max_lines:
    lines.append(f"  ... {report['failed'] - max_lines} more in the report file")
  return "\n".join(lines)
