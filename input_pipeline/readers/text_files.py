"""The text of annotation files, whatever editor or export wrote them.

Files are read as UTF-8. A UTF-8 byte-order mark (Windows editors write one) is skipped; a file
that starts with a UTF-16 byte-order mark (spreadsheet exports) is decoded as UTF-16; CRLF and CR
line ends read as LF. Bytes that are not valid UTF-8 do not abort a file: `lines` hands such a
line over undecoded, with the reason, for the reader to drop as one bad record; `read_text`
keeps them as lone surrogates (`surrogateescape`) so that a reader can drop the one entry that
holds them (`has_invalid_text`).
"""

from __future__ import annotations

import codecs
import json
import os
from collections.abc import Iterator

from input_pipeline import storage
from input_pipeline.readers.drops import DataError

_UTF16_BOMS = (codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)


def read_bytes(path: str | os.PathLike, missing_hint: str = "") -> bytes:
  """The bytes of `path`; DataError naming the file when it cannot be read."""
  try:
    with storage.open_file(path, "rb") as f:
      return f.read()
  except FileNotFoundError:
    raise DataError(f"{path}: file not found{missing_hint}") from None
  except IsADirectoryError:
    raise DataError(f"{path}: is a folder, expected a file{missing_hint}") from None
  except OSError as e:
    raise DataError(f"{path}: cannot be read ({e.strerror or e})") from None


def _utf16_text(path: str | os.PathLike, data: bytes) -> str | None:
  """The text of a file with a UTF-16 byte-order mark, None for other files."""
  if not data.startswith(_UTF16_BOMS):
    return None
  try:
    return data.decode("utf-16")
  except UnicodeDecodeError as e:
    raise DataError(f"{path}: starts with a UTF-16 byte-order mark but is not valid UTF-16 "
                    f"(byte {e.start})") from None


def invalid_utf8(raw: bytes) -> str | None:
  """None when `raw` is valid UTF-8, else the reason, naming the first bad byte."""
  try:
    raw.decode("utf-8")
  except UnicodeDecodeError as e:
    return f"invalid UTF-8 (byte {raw[e.start:e.start + 1]!r} at column {e.start + 1})"
  return None


def lines(path: str | os.PathLike, missing_hint: str = ""
          ) -> Iterator[tuple[int, str, str | None]]:
  """(line number, text, problem) of every line of `path`, numbered from 1.

  `problem` is None, or why the line cannot be read (its bytes are not UTF-8); the text of such
  a line is decoded with replacement characters, for the report only.
  """
  data = read_bytes(path, missing_hint)
  text = _utf16_text(path, data)
  if text is not None:
    for lineno, line in enumerate(text.split("\n"), start=1):
      yield lineno, line.rstrip("\r"), None
    return
  if data.startswith(codecs.BOM_UTF8):
    data = data[len(codecs.BOM_UTF8):]
  if b"\r" in data and b"\n" not in data:
    data = data.replace(b"\r", b"\n")  # old Mac line ends
  raw_lines = data.split(b"\n")
  if raw_lines and not raw_lines[-1]:
    raw_lines.pop()  # the newline that ends the last line starts no new one
  for lineno, raw in enumerate(raw_lines, start=1):
    raw = raw.removesuffix(b"\r")
    problem = invalid_utf8(raw)
    yield lineno, raw.decode("utf-8", errors="replace"), problem


def read_text(path: str | os.PathLike, missing_hint: str = "") -> str:
  """The whole text of `path`; bytes that are not UTF-8 become lone surrogates (see
  `has_invalid_text`)."""
  data = read_bytes(path, missing_hint)
  text = _utf16_text(path, data)
  if text is not None:
    return text
  return data.removeprefix(codecs.BOM_UTF8).decode("utf-8", errors="surrogateescape")


def has_invalid_text(text: str) -> bool:
  """Whether `text` (from `read_text`) holds bytes that were not valid UTF-8."""
  return any("\udc80" <= ch <= "\udcff" for ch in text)


def read_json_document(path: str | os.PathLike, expected: type, what: str,
                       missing_hint: str = "") -> list | dict:
  """The whole-file JSON value of `path`, which must be a `expected` (list or dict).

  Raises DataError naming the file (and the line of a syntax error) when it is missing, empty,
  malformed or not a JSON `what`. Strings may hold bytes that were not UTF-8 (see `read_text`):
  the reader drops the entries that do."""
  text = read_text(path, missing_hint)
  if not text.strip():
    raise DataError(f"{path}: file is empty (expected {what})")
  try:
    value = json.loads(text)
  except json.JSONDecodeError as e:
    raise DataError(f"{path}:{e.lineno}: malformed JSON ({e.msg})") from None
  if not isinstance(value, expected):
    raise DataError(f"{path}: expected {what}")
  return value
