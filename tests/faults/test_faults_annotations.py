"""Annotation files as editors, spreadsheets and broken pipes leave them: byte-order marks,
CRLF line ends, UTF-16, bytes that are not UTF-8, malformed FITB questions.

Each case damages a copy of the generated data and asserts the outcome in both modes: lenient
reads keep every valid record (the clean read, less exactly the damaged ones) and list each
dropped one with its file and line; strict reads stop at the first one with a DataError naming
file and line, or read the file like the clean one when it is only encoded differently.
"""

import codecs
import json
import re
import shutil

import pytest

from input_pipeline.product import dataset as product_data
from input_pipeline.readers import ctl, stl
from input_pipeline.readers.drops import DataError, DropReport


def _lines(path):
  return path.read_bytes().split(b"\n")


def _write_lines(path, lines):
  path.write_bytes(b"\n".join(lines))


def _spoil_line(path, lineno):
  """Puts a byte that is not UTF-8 into line `lineno` (1-based), inside its first signature."""
  lines = _lines(path)
  lines[lineno - 1] = re.sub(rb"[0-9a-f]{8}", b"\xff\xfe" + b"0" * 6, lines[lineno - 1], count=1)
  _write_lines(path, lines)


def _bom(path):
  path.write_bytes(codecs.BOM_UTF8 + path.read_bytes())


def _crlf(path):
  path.write_bytes(path.read_bytes().replace(b"\n", b"\r\n"))


def _multiline_crlf_json(path):
  value = json.loads(path.read_text())
  path.write_bytes(json.dumps(value, indent=1).replace("\n", "\r\n").encode())


def _utf16(path):
  path.write_bytes(path.read_text(encoding="utf-8").encode("utf-16"))  # with its BOM


def _spoil_category(path):
  """A byte that is not UTF-8 in the category path of the first product; returns that product."""
  mapping = json.loads(path.read_text())
  sig = next(iter(mapping))
  text = path.read_bytes()
  at = text.index(mapping[sig].encode(), text.index(sig.encode()))
  path.write_bytes(text[:at] + b"\xc3\x28" + text[at + 2:])
  return sig


# --- readers: (records as comparable identities, report) of a copied dataset ---------------

def _read_stl(root, strict):
  data = stl.read_stl(root, strict=strict, check_images=False)
  pairs = {(data.scenes[s], data.products[p]) for s, p in zip(data.pair_scene, data.pair_product)}
  return pairs, data.drops


def _read_raw(root, strict):
  data = ctl.read_ctl(root, "train", strict=strict, check_images=False)
  return set(data.item_keys), data.drops


def _read_triplets(root, strict):
  report = DropReport(strict=strict)
  rows = {lineno for lineno, *_ in ctl.read_triplets(root / "triplet_train.tsv", report)}
  return rows, report


def _read_fitb(root, strict):
  report = DropReport(strict=strict)
  return {q["index"] for q in ctl.read_fitb(root / "fitb_eval.json", report)}, report


READERS = {"stl": _read_stl, "raw": _read_raw, "triplets": _read_triplets, "fitb": _read_fitb}

# (case, dataset, reader, damage(root) -> None, expected drops [(file, line, reason)], records
# lost: a number, or "pairs_of_product" for the pairs of the product `damage` returns)
CASES = [
    ("stl_pairs_invalid_utf8", "stl", "stl", lambda r: _spoil_line(r / "fashion.json", 3),
     [("fashion.json", 3, "invalid UTF-8")], 1),
    ("stl_pairs_bom", "stl", "stl", lambda r: _bom(r / "fashion.json"), [], 0),
    ("stl_pairs_crlf", "stl", "stl", lambda r: _crlf(r / "fashion.json"), [], 0),
    ("stl_categories_bom", "stl", "stl", lambda r: _bom(r / "fashion-cat.json"), [], 0),
    ("stl_categories_multiline_crlf", "stl", "stl",
     lambda r: _multiline_crlf_json(r / "fashion-cat.json"), [], 0),
    ("stl_categories_utf16", "stl", "stl", lambda r: _utf16(r / "fashion-cat.json"), [], 0),
    ("stl_categories_invalid_utf8", "stl", "stl",
     lambda r: _spoil_category(r / "fashion-cat.json"),
     [("fashion-cat.json", None, "invalid UTF-8")], "pairs_of_product"),
    ("ctl_raw_bom", "ctl", "raw", lambda r: _bom(r / "raw_train.tsv"), [], 0),
    ("ctl_raw_crlf", "ctl", "raw", lambda r: _crlf(r / "raw_train.tsv"), [], 0),
    ("ctl_raw_utf16", "ctl", "raw", lambda r: _utf16(r / "raw_train.tsv"), [], 0),
    ("ctl_raw_invalid_utf8", "ctl", "raw", lambda r: _spoil_line(r / "raw_train.tsv", 5),
     [("raw_train.tsv", 5, "invalid UTF-8")], 1),
    ("ctl_triplets_invalid_utf8", "ctl", "triplets",
     lambda r: _spoil_line(r / "triplet_train.tsv", 2),
     [("triplet_train.tsv", 2, "invalid UTF-8")], 1),
    ("ctl_triplets_bom_crlf", "ctl", "triplets",
     lambda r: (_bom(r / "triplet_train.tsv"), _crlf(r / "triplet_train.tsv")), [], 0),
    ("ctl_fitb_bom", "ctl", "fitb", lambda r: _bom(r / "fitb_eval.json"), [], 0),
    ("ctl_fitb_invalid_utf8", "ctl", "fitb",
     lambda r: _spoil_line(r / "fitb_eval.json", 5), [("fitb_eval.json", None, "[0]")], 1),
]


@pytest.mark.parametrize("name,dataset,reader,damage,drops,lost", CASES,
                         ids=[c[0] for c in CASES])
def test_annotation_fault(name, dataset, reader, damage, drops, lost, stl_root, ctl_root,
                          tmp_path):
  source = {"stl": stl_root, "ctl": ctl_root}[dataset]
  root = tmp_path / "data"
  shutil.copytree(source, root, ignore=shutil.ignore_patterns("images"))
  read = READERS[reader]
  clean, clean_report = read(source, False)
  assert len(clean_report) == 0
  damaged_product = damage(root)
  if lost == "pairs_of_product":
    lost = sum(product == damaged_product for _, product in clean)
    assert lost > 0

  records, report = read(root, False)
  assert records <= clean and len(clean) - len(records) == lost  # every valid record kept
  listed = [(d.file.rsplit("/", 1)[-1], d.line, f"{d.field}: {d.reason}") for d in report.drops]
  for file, line, reason in drops:
    assert any(f == file and (line is None or ln == line) and reason in text
               for f, ln, text in listed), (file, line, reason, listed)
  if not drops:
    assert records == clean and not listed

  if drops:
    file, line, _ = drops[0]
    where = re.escape(f"{file}:{line}" if line is not None else file)
    with pytest.raises(DataError, match=where):
      read(root, True)
  else:
    assert read(root, True)[0] == clean


def test_raw_header_that_is_not_utf8_is_named(ctl_root, tmp_path):
  root = tmp_path / "data"
  shutil.copytree(ctl_root, root, ignore=shutil.ignore_patterns("images"))
  lines = _lines(root / "raw_train.tsv")
  _write_lines(root / "raw_train.tsv", [b"image_signature\xff" + lines[0][15:], *lines[1:]])
  for strict in (False, True):
    with pytest.raises(DataError, match=r"raw_train\.tsv:1: header: invalid UTF-8"):
      ctl.read_ctl(root, "train", strict=strict, check_images=False)


def test_bad_fitb_questions_are_listed_with_their_index(product_smoke_config, tmp_path):
  """Four bad questions (not an object, one answer, a coordinate that is no number, an item
  raw_test.tsv lacks) are each dropped into the product dataset's report (the trainer writes it
  to dropped_records.jsonl), not only counted; the valid questions stay."""
  source = product_smoke_config.data.root
  root = tmp_path / "data"
  shutil.copytree(source, root, ignore=shutil.ignore_patterns("images"))
  (root / "images").symlink_to(f"{source}/images")
  questions = json.loads((root / "fitb_eval.json").read_text())
  good = len(questions)
  questions[1] = "not a question"
  questions[2]["answers"] = questions[2]["answers"][:1]
  questions[3]["question"][0]["x"] = "left"
  questions[4]["answers"][1]["signature"] = "0" * 32
  (root / "fitb_eval.json").write_text(json.dumps(questions))
  config = product_smoke_config
  config.data.root = str(root)
  ds = product_data.load_product_dataset(config.data, fitb="file")
  fitb = [d for d in ds.drops.drops if d.file.endswith("fitb_eval.json")]
  assert sorted(d.field.split("]")[0] + "]" for d in fitb) == ["[1]", "[2]", "[3]", "[4]"]
  assert "item not in raw_test.tsv" in str(fitb[-1])
  assert len(ds.fitb_file[0]) == good - 4
