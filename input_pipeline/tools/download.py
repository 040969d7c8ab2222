"""Fetches the images of an annotation file: parallel, resumable, verified, with a failure report.

    python run.py download-images --annotations fashion.json --out stl-fashion/images
    python run.py download-images --annotations my_pairs.txt --annotation_format stl_pairs ...

Every signature of the file (scenes and products of `fashion.json`; collages of `raw_*.tsv`,
`triplet_*.tsv` or `fitb_eval.json`) maps to the published URL pattern
`<base>/ab/cd/ef/<sig>.jpg` and is saved in the same nested layout under `--out`, which the
readers take as is. The kind of file follows its name (`annotation_kind`); a file of another
name needs its kind given (`kind=`, `--annotation_format`). A file appears under its final name
only once it is complete and decodes (written to a temporary name, checked, then renamed), so a
killed run leaves no half files. A file already under its final name is decoded whole too, in
parallel with the downloads: a good one is kept untouched, a damaged one (empty, truncated, not
an image: copied in from elsewhere, or a disk that filled up) is reported and fetched again, and
removed when that fails. Connection errors, timeouts, truncated bodies, 429 and 5xx answers are
retried with exponential backoff; 403/404 are final. The run ends with a JSON report listing
every failure with its URL, HTTP status and reason, and every damaged file found.

Some failures are the normal case (many URLs of the 2019/2020 releases no longer answer): the
run succeeds, and the report's summary says how many failed. `run_error` tells when nothing at
all could be had, which `run.py download-images` ends with exit status 1.
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


# Annotation file kinds: STL pairs (fashion.json, one JSON object a line), CTL raw items
# (raw_*.tsv), CTL outfit triplets (triplet_*.tsv), CTL fill-in-the-blank questions
# (fitb_eval.json). "auto" takes the kind from the file name (`annotation_kind`).
ANNOTATION_KINDS = {"stl_pairs": _sigs_stl, "ctl_raw": _sigs_raw,
                    "ctl_triplets": _sigs_triplets, "ctl_fitb": _sigs_fitb}
AUTO = "auto"
KIND_CHOICES = (AUTO, *ANNOTATION_KINDS)
_KIND_HINT = f"--annotation_format, one of {', '.join(ANNOTATION_KINDS)}"


def annotation_kind(path: str | os.PathLike) -> str:
  """The kind of an annotation file from its published name: `*.json` is STL pairs
  (`fashion.json`) but `fitb*.json` is CTL FITB; `raw*.tsv` and `triplet*.tsv` are CTL.
  DataError for any other name, listing the names known and the flag that names a kind."""
  name = Path(path).name
  if name.endswith(".tsv"):
    if name.startswith("raw"):
      return "ctl_raw"
    if name.startswith("triplet"):
      return "ctl_triplets"
  elif name.endswith(".json"):
    return "ctl_fitb" if name.startswith("fitb") else "stl_pairs"
  raise DataError(f"{path}: cannot tell the annotation format from the file name (known: "
                  "fashion.json or any *.json, fitb*.json, raw_*.tsv, triplet_*.tsv); "
                  f"name the kind with {_KIND_HINT}")


def annotation_signatures(path: str | os.PathLike, strict: bool = False, *, kind: str = AUTO
                          ) -> tuple[list[str], DropReport]:
  """Unique image signatures of an annotation file, in order of first appearance.

  Args:
    path: the annotation file.
    strict: raise DataError at the first malformed record instead of dropping it.
    kind: one of `ANNOTATION_KINDS`, or "auto": from the file name (`annotation_kind`).
  """
  if kind == AUTO:
    kind = annotation_kind(path)
  if kind not in ANNOTATION_KINDS:
    raise ValueError(f"unknown annotation kind {kind!r}: expected one of {KIND_CHOICES}")
  report = DropReport(strict=strict)
  return list(dict.fromkeys(ANNOTATION_KINDS[kind](path, report))), report


@dataclasses.dataclass
class Failure:
  signature: str
  url: str
  status: int | None  # HTTP status, None when no answer came (timeout, connection error)
  reason: str
  attempts: int


@dataclasses.dataclass
class Damaged:
  """A file found under its final name that does not decode: fetched again."""
  signature: str
  path: str
  problem: str
  replaced: bool  # False: the fetch failed (see the failures) and the file was removed


@dataclasses.dataclass
class _Outcome:
  """What became of one signature."""
  present: bool = False  # a good file was already there (kept untouched)
  size: int = 0  # bytes written
  damage: str | None = None  # why the file already there was unusable
  failure: Failure | None = None


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
    if workers < 1:
      raise ValueError(f"workers must be at least 1 (got {workers})")
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
    try:
      tmp.write_bytes(data)
      os.replace(tmp, final)  # atomic: the final name only ever holds a complete image
    except OSError as e:  # disk full, no permission, a folder in the way: the same next time
      tmp.unlink(missing_ok=True)
      raise _Final(200, f"cannot write {final} ({e.strerror or e})") from None
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

  def check(self, sig: str) -> tuple[bool, str | None]:
    """(whether a file is under the final name, None when it decodes whole or why not)."""
    try:
      data = self.path(sig).read_bytes()
    except FileNotFoundError:
      return False, None
    except OSError as e:  # unreadable, or a folder of that name
      return True, f"cannot be read ({e.strerror or e})"
    return True, "empty file (0 bytes)" if not data else verify_image(data)

  def ensure(self, sig: str) -> _Outcome:
    """Keeps a good file of `sig`; fetches a missing or damaged one (a damaged file whose fetch
    fails is removed: it could not be read anyway, and the next run tries again)."""
    present, damage = self.check(sig)
    if present and damage is None:
      return _Outcome(present=True)
    size, failure = self.fetch(sig)
    if failure and damage:
      try:
        self.path(sig).unlink()
      except OSError as e:
        failure.reason += f"; the damaged file could not be removed ({e.strerror or e})"
    return _Outcome(size=size, damage=damage, failure=failure)

  def run(self, sigs: list[str], progress: bool = True) -> dict:
    """Verifies the images of `sigs` already there and fetches the others; returns the report
    (see `download_images`)."""
    start = time.perf_counter()
    stale = self.remove_partial_files()
    failures: list[Failure] = []
    damaged: list[Damaged] = []
    present = nbytes = 0
    # One task per signature: decoding the files already there runs in the same pool as the
    # downloads, so a resumed run checks its finished images at full parallelism.
    with concurrent.futures.ThreadPoolExecutor(self.workers) as pool, tqdm.tqdm(
        total=len(sigs), unit="img", desc="verifying and downloading", disable=not progress,
        mininterval=1.0) as bar:
      for sig, outcome in zip(sigs, pool.map(self.ensure, sigs)):
        present += outcome.present
        nbytes += outcome.size
        if outcome.failure:
          failures.append(outcome.failure)
        if outcome.damage:
          damaged.append(Damaged(sig, str(self.path(sig)), outcome.damage,
                                 replaced=outcome.failure is None))
        bar.set_postfix(present=present, damaged=len(damaged), failed=len(failures),
                        refresh=False)
        bar.update(1)
    seconds = time.perf_counter() - start
    downloaded = len(sigs) - present - len(failures)
    return {
        "signatures": len(sigs), "already_present": present,
        "downloaded": downloaded, "failed": len(failures), "bytes": nbytes,
        "seconds": round(seconds, 3),
        "images_per_second": round(downloaded / seconds, 2) if seconds > 0 else None,
        "partial_files_removed": stale,
        "damaged_replaced": sum(d.replaced for d in damaged),
        "damaged": [dataclasses.asdict(d) for d in damaged],
        "failures_by_status": dict(collections.Counter(
            "no answer" if f.status is None else f"HTTP {f.status}"
            for f in failures).most_common()),
        "failures": [dataclasses.asdict(f) for f in failures],
    }


def download_images(annotations: str | os.PathLike, out: str | os.PathLike, *,
                    kind: str = AUTO, base_url: str = DEFAULT_BASE_URL, workers: int = 16,
                    timeout: float = 30.0, retries: int = 4, backoff: float = 1.0,
                    report_file: str | None = None, progress: bool = True) -> dict:
  """Downloads every image of `annotations` into `out` and writes the report.

  Args:
    annotations: the annotation file.
    out: the image folder (nested layout).
    kind: the annotation kind, one of `KIND_CHOICES` ("auto": from the file name).
    workers: parallel downloads and checks, at least 1.

  Returns:
    The report: counts (`signatures`, `already_present` (good files kept), `downloaded`
    (written this run, replacements of damaged files included), `failed`; they add up to
    `signatures`), `bytes`, `seconds`, `images_per_second`, `failures` [{signature, url,
    status, reason, attempts}], `damaged` [{signature, path, problem, replaced}] and
    `damaged_replaced`, also written to `report_file` (default `out/download_report.json`).

  Raises:
    DataError: the annotation file is missing, unreadable, of an unknown name (with `kind`
      "auto") or holds no usable record.
    ValueError: `workers` < 1 or an unknown `kind`.
  """
  downloader = Downloader(out, base_url, workers=workers, timeout=timeout, retries=retries,
                          backoff=backoff)  # checks its arguments before any work
  if kind == AUTO:
    kind = annotation_kind(annotations)
  sigs, drops = annotation_signatures(annotations, kind=kind)
  if not sigs:
    raise DataError(f"{annotations}: no image signature in it, read as {kind} "
                    f"({drops.summary()}); if it is another kind of file, name the kind with "
                    f"{_KIND_HINT}")
  if len(drops):
    logging.warning("%s: %s (their images are not fetched)", annotations, drops.summary())
  report = downloader.run(sigs, progress=progress)
  report["annotations"] = str(annotations)
  report["annotation_drops"] = len(drops)
  report_file = Path(report_file or Path(out) / REPORT_FILE)
  report_file.parent.mkdir(parents=True, exist_ok=True)
  report_file.write_text(json.dumps(report, indent=1) + "\n")
  report["report_file"] = str(report_file)
  return report


def run_error(report: dict) -> str | None:
  """Why the run as a whole failed: no image of the file could be fetched or found good
  (`run.py download-images` then exits 1); None when at least one image is there."""
  if report["signatures"] and not report["already_present"] + report["downloaded"]:
    by_status = ", ".join(f"{k}: {n}" for k, n in report["failures_by_status"].items())
    return (f"none of the {report['signatures']} images of {report.get('annotations')} could "
            f"be fetched ({by_status}); report: {report.get('report_file')}")
  return None


def format_report(report: dict, max_lines: int = 20) -> str:
  """The summary line, up to `max_lines` damaged files and failures, and, when some images
  failed but not all, a closing line with their count."""
  lines = [f"{report['downloaded']} downloaded, {report['already_present']} already present, "
           f"{report['failed']} failed of {report['signatures']} images "
           f"({report['bytes'] / 1e6:.1f} MB in {report['seconds']:.1f} s, "
           f"{report['images_per_second']} images/s); report: {report.get('report_file')}"]
  damaged = report.get("damaged", [])
  if damaged:
    lost = len(damaged) - report["damaged_replaced"]
    lines.append(f"replaced {report['damaged_replaced']} damaged files"
                 + (f" ({lost} more damaged, fetch failed: removed)" if lost else "") + ":")
    for d in damaged[:max_lines]:
      lines.append(f"  {d['signature']}  {d['problem']}  "
                   f"{'replaced' if d['replaced'] else 'fetch failed, removed'}  {d['path']}")
    if len(damaged) > max_lines:
      lines.append(f"  ... {len(damaged) - max_lines} more in the report file")
  if report["failures"]:
    lines.append("failed:")
  for f in report["failures"][:max_lines]:
    reason = f["reason"]
    if not reason.startswith("HTTP"):
      reason = (f"HTTP {f['status']}, " if f["status"] is not None else "no answer, ") + reason
    lines.append(f"  {f['signature']}  {reason}  ({f['attempts']} attempts)  {f['url']}")
  if report["failed"] > max_lines:
    lines.append(f"  ... {report['failed'] - max_lines} more in the report file")
  if report["failed"] and not run_error(report):
    by_status = ", ".join(f"{k}: {n}" for k, n in report["failures_by_status"].items())
    lines.append(f"{report['failed']} of {report['signatures']} images could not be fetched "
                 f"({by_status}); the others are in place. Rerunning retries only these.")
  return "\n".join(lines)
