"""The image downloader against a real HTTP server on 127.0.0.1 with scripted failures."""

import io
import json

import image_server
import numpy as np
from PIL import Image

from input_pipeline.readers import image_folder
from input_pipeline.tools import download


def _sig(i: int) -> str:
  return f"{i:032x}"


def _image_bytes(i: int, fmt: str = "JPEG") -> bytes:
  rng = np.random.default_rng(i)
  buf = io.BytesIO()
  Image.fromarray(rng.integers(0, 255, (24, 32, 3), np.uint8)).save(buf, fmt)
  return buf.getvalue()


BEHAVIOURS = {_sig(100): 403, _sig(101): 404, _sig(102): 500, _sig(103): "flaky",
              _sig(104): "slow", _sig(105): "truncated", _sig(106): "corrupt"}


def _setup(tmp_path):
  good = [_sig(i) for i in range(6)]
  sigs = good + list(BEHAVIOURS)
  served = {s: _image_bytes(i, "PNG" if i == 0 else "JPEG") for i, s in enumerate(sigs)}
  del served[_sig(101)]  # the 404 is simply absent
  # An STL pair file: each pair names a scene and a product (all of them are to be fetched).
  pairs = tmp_path / "fashion.json"
  pairs.write_text("".join(
      json.dumps({"scene": sigs[i], "product": sigs[(i + 1) % len(sigs)],
                  "bbox": [0.1, 0.1, 0.5, 0.5]}) + "\n" for i in range(0, len(sigs), 2))
      + "not json\n")
  return sigs, served, pairs


def _run(pairs, out, base_url):
  return download.download_images(pairs, out, base_url=base_url, workers=4, timeout=0.5,
                                  retries=2, backoff=0.01, progress=False)


def test_downloads_verifies_reports_failures_and_resumes(tmp_path):
  sigs, served, pairs = _setup(tmp_path)
  out = tmp_path / "images"
  with image_server.ImageServer(served, BEHAVIOURS, slow_seconds=1.5) as server:
    report = _run(pairs, out, server.base_url)
    ok = [s for s in sigs if s not in BEHAVIOURS or BEHAVIOURS[s] == "flaky"]
    assert report["signatures"] == len(sigs) == 13
    assert (report["downloaded"], report["failed"], report["already_present"]) == (7, 6, 0)
    assert report["annotation_drops"] == 1  # the malformed line, reported, not fatal
    for s in ok:  # the nested layout, byte for byte
      assert (out / image_folder.nested_relpath(s)).read_bytes() == served[s]
    failures = {f["signature"]: f for f in report["failures"]}
    assert set(failures) == set(BEHAVIOURS) - {_sig(103)}
    assert (failures[_sig(100)]["status"], failures[_sig(100)]["attempts"]) == (403, 1)
    assert (failures[_sig(101)]["status"], failures[_sig(101)]["attempts"]) == (404, 1)
    assert (failures[_sig(102)]["status"], failures[_sig(102)]["attempts"]) == (500, 3)
    assert failures[_sig(104)]["status"] is None and "Timeout" in failures[_sig(104)]["reason"]
    assert failures[_sig(105)]["status"] == 200
    assert "incomplete body" in failures[_sig(105)]["reason"]
    assert "not a decodable image" in failures[_sig(106)]["reason"]
    assert server.requests[_sig(103)] == 2  # the flaky one: retried once, then fine
    for s in failures:  # nothing, not even a partial file, for a failed image
      assert not (out / image_folder.nested_relpath(s)).exists()
    assert not list(out.rglob("*" + download.PART_SUFFIX))
    written = json.loads((out / download.REPORT_FILE).read_text())
    assert written["failures"] == report["failures"]
    assert "HTTP 403" in download.format_report(report)

    # A killed run's temporary file is cleaned; finished images are not requested again.
    stale = out / image_folder.nested_relpath(_sig(101))
    stale.parent.mkdir(parents=True, exist_ok=True)
    stale.with_name(stale.name + ".123.456" + download.PART_SUFFIX).write_bytes(b"half")
    before = dict(server.requests)
    again = _run(pairs, out, server.base_url)
    assert (again["already_present"], again["downloaded"], again["failed"]) == (7, 0, 6)
    assert again["partial_files_removed"] == 1
    assert all(server.requests[s] == before[s] for s in ok)


def test_signatures_of_every_annotation_format(tmp_path):
  a, b, c = _sig(1), _sig(2), _sig(3)
  raw = tmp_path / "raw_test.tsv"
  raw.write_text("image_signature bounding_x bounding_y bounding_width bounding_height label\n"
                 f"{a}\t0.1\t0.1\t0.2\t0.2\tshoes\n{a}\t0.5\t0.5\t0.2\t0.2\tbags\n"
                 f"{b}\t0.1\t0.1\t0.2\t0.2\tshoes\n")
  assert download.annotation_signatures(raw)[0] == [a, b]
  trip = tmp_path / "triplet_test.tsv"
  item = lambda s: f"{s}\t0.1\t0.1\t0.2\t0.2\tshoes"
  trip.write_text(f"{item(a)}\t{item(b)}\t{item(c)}\n")
  assert download.annotation_signatures(trip)[0] == [a, b, c]
  fitb = tmp_path / "fitb_eval.json"
  entry = lambda s: dict(signature=s, x="0.1", y="0.1", w="0.2", h="0.2", label="shoes")
  fitb.write_text(json.dumps([{"question": [entry(c)], "answers": [entry(b), entry(a)]}]))
  assert download.annotation_signatures(fitb)[0] == [c, b, a]
  assert download.image_url(a, "http://h/400x/") == f"http://h/400x/00/00/00/{a}.jpg"
