"""`download-images` faults against the real HTTP test server on 127.0.0.1: damaged files already
in the output folder, some or all downloads failing, annotation files of unknown names, bad flags.
"""

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import image_server
import numpy as np
import pytest
from PIL import Image

from input_pipeline.readers import image_folder
from input_pipeline.readers.drops import DataError
from input_pipeline.tools import download

ROOT = Path(__file__).resolve().parents[2]
OLD_NS = 1_000_000_000 * 10**9  # 2001-09-09: a modification time no run of the test writes


def _sig(i: int) -> str:
  return f"{i:032x}"


def _jpeg(i: int) -> bytes:
  buf = io.BytesIO()
  Image.fromarray(np.random.default_rng(i).integers(0, 255, (24, 32, 3), np.uint8)).save(
      buf, "JPEG")
  return buf.getvalue()


SIGS = [_sig(i) for i in range(4)]
SERVED = {s: _jpeg(i) for i, s in enumerate(SIGS)}


def _pairs(path: Path) -> Path:
  """STL pair lines naming SIGS (two scenes, two products)."""
  path.write_text("".join(json.dumps({"scene": SIGS[i], "product": SIGS[i + 1],
                                      "bbox": [0.1, 0.1, 0.5, 0.5]}) + "\n" for i in (0, 2)))
  return path


def _file(out: Path, sig: str) -> Path:
  return out / image_folder.nested_relpath(sig)


def _put(out: Path, sig: str, data: bytes, old: bool = False) -> Path:
  path = _file(out, sig)
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_bytes(data)
  if old:
    os.utime(path, ns=(OLD_NS, OLD_NS))
  return path


def _download(annotations, out, base_url, **kwargs):
  return download.download_images(annotations, out, base_url=base_url, workers=2, timeout=2.0,
                                  retries=1, backoff=0.01, progress=False, **kwargs)


def _cli(*args: str) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, "run.py", "download-images", *args], cwd=ROOT,
                        capture_output=True, text=True, timeout=60)


def _one_error_line(proc: subprocess.CompletedProcess) -> str:
  """The CLI ended with exit status 1 and exactly one error line, without a traceback."""
  assert proc.returncode == 1, (proc.stdout, proc.stderr)
  assert "Traceback" not in proc.stderr
  lines = [line for line in proc.stderr.splitlines() if line.strip()]
  errors = [line for line in lines if line.startswith(("E", "FATAL", "run.py: error:"))]
  assert len(errors) == 1, proc.stderr
  return errors[0]


def _assert_all_served(out: Path) -> None:
  for s in SIGS:
    assert _file(out, s).read_bytes() == SERVED[s]


CASES = ["present_zero_byte", "present_truncated_jpeg", "present_good_untouched", "some_fail",
         "all_fail_cli", "missing_annotations_cli", "unknown_name_no_format",
         "unknown_name_with_format", "workers_zero"]


@pytest.mark.parametrize("case", CASES)
def test_download_fault(case, tmp_path):
  out = tmp_path / "images"
  pairs = _pairs(tmp_path / "fashion.json")
  served = {} if case == "all_fail_cli" else dict(SERVED)
  if case == "some_fail":
    del served[SIGS[3]]  # a 404
  with image_server.ImageServer(served) as server:
    if case in ("present_zero_byte", "present_truncated_jpeg", "present_good_untouched"):
      damaged = SIGS[1] if case == "present_good_untouched" else SIGS[0]
      _put(out, damaged, b"" if case == "present_zero_byte" else SERVED[damaged][:200])
      # A good file that is not what the server sends (so a rewrite would show), dated long ago.
      good = _put(out, SIGS[2], _jpeg(99), old=True)
      report = _download(pairs, out, server.base_url)
      # The damaged file is reported, fetched again and replaced by the served image.
      assert [(d["signature"], d["replaced"]) for d in report["damaged"]] == [(damaged, True)]
      problem = report["damaged"][0]["problem"]
      assert ("empty" if case == "present_zero_byte" else "not a decodable image") in problem
      assert report["damaged_replaced"] == 1 and server.requests[damaged] == 1
      assert _file(out, damaged).read_bytes() == SERVED[damaged]
      text = download.format_report(report)
      assert "replaced 1 damaged files" in text and damaged in text
      # The good file: verified, kept byte for byte and not even touched; never requested.
      assert good.read_bytes() == _jpeg(99) and good.stat().st_mtime_ns == OLD_NS
      assert server.requests[SIGS[2]] == 0
      assert (report["already_present"], report["downloaded"], report["failed"]) == (1, 3, 0)
      assert download.run_error(report) is None
      written = json.loads((out / download.REPORT_FILE).read_text())
      assert written["damaged"] == report["damaged"]
      # A second run finds everything good and fetches nothing.
      again = _download(pairs, out, server.base_url)
      assert (again["already_present"], again["damaged"]) == (4, [])
      assert sum(server.requests.values()) == 3

    elif case == "some_fail":
      _put(out, SIGS[3], SERVED[SIGS[3]][:200])  # damaged, and the server no longer has it
      report = _download(pairs, out, server.base_url)
      assert (report["downloaded"], report["failed"]) == (3, 1)
      assert download.run_error(report) is None  # partial failure: the run succeeds (exit 0)
      assert [(d["signature"], d["replaced"]) for d in report["damaged"]] == [(SIGS[3], False)]
      text = download.format_report(report)
      assert SIGS[3] in text and "HTTP 404" in text and "fetch failed, removed" in text
      assert text.splitlines()[-1].startswith("1 of 4 images could not be fetched (HTTP 404: 1)")
      assert not _file(out, SIGS[3]).exists()  # an undecodable file does not stay
      assert [_file(out, s).read_bytes() for s in SIGS[:3]] == [SERVED[s] for s in SIGS[:3]]

    elif case == "all_fail_cli":
      proc = _cli("--annotations", str(pairs), "--out", str(out), "--base-url",
                  server.base_url, "--workers", "2")
      error = _one_error_line(proc)
      assert "none of the 4 images" in error and "HTTP 404: 4" in error
      assert "0 downloaded, 0 already present, 4 failed of 4 images" in proc.stdout
      assert all(s in proc.stdout for s in SIGS)  # each failure listed
      assert json.loads((out / download.REPORT_FILE).read_text())["failed"] == 4

    elif case == "missing_annotations_cli":
      proc = _cli("--annotations", str(tmp_path / "missing.json"), "--out", str(out),
                  "--base-url", server.base_url)
      assert "DataError" in _one_error_line(proc) and "missing.json" in proc.stderr
      assert not out.exists() and not server.requests

    elif case in ("unknown_name_no_format", "unknown_name_with_format"):
      renamed = pairs.rename(tmp_path / "pairs_export.txt")
      if case == "unknown_name_no_format":
        with pytest.raises(DataError) as e:
          _download(renamed, out, server.base_url)
        message = str(e.value)
        assert "\n" not in message and "pairs_export.txt" in message
        assert "--annotation_format" in message and "stl_pairs" in message
        assert "fashion.json" in message and "triplet_*.tsv" in message
        assert not out.exists() and not server.requests
      else:
        report = _download(renamed, out, server.base_url, kind="stl_pairs")
        assert (report["downloaded"], report["failed"]) == (4, 0)
        _assert_all_served(out)
        with pytest.raises(DataError, match="no image signature in it, read as ctl_triplets"):
          _download(renamed, out, server.base_url, kind="ctl_triplets")  # a wrong kind

    elif case == "workers_zero":
      stale = _put(out, SIGS[0], b"half")
      stale = stale.rename(stale.with_name(stale.name + ".1.2" + download.PART_SUFFIX))
      for workers in (0, -3):
        with pytest.raises(ValueError, match=rf"^workers must be at least 1 \(got {workers}\)"):
          download.download_images(pairs, out, base_url=server.base_url, workers=workers,
                                   progress=False)
      assert stale.exists() and not server.requests  # refused before doing anything
      proc = _cli("--annotations", str(pairs), "--out", str(out), "--base-url",
                  server.base_url, "--workers", "0")
      assert "--workers=0" in _one_error_line(proc)
      assert stale.exists() and not server.requests

    else:
      raise AssertionError(case)
