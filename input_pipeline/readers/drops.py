"""Bookkeeping of input records that could not be used.

Lenient readers skip a bad record, count it and keep it in a `DropReport`; strict readers raise
`DataError` at the first one. Either way the message names the file, the line and the field.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import os

from input_pipeline import storage


class DataError(ValueError):
  """A record of an input file is unusable (raised in strict mode)."""


@dataclasses.dataclass(frozen=True)
class Drop:
  file: str
  line: int | None  # 1-based line number, None when the problem is not tied to a line
  field: str
  reason: str
  record: str = ""

  def __str__(self) -> str:
    where = f"{self.file}:{self.line}" if self.line is not None else self.file
    return f"{where}: field '{self.field}': {self.reason}"


@dataclasses.dataclass
class DropReport:
  """Every dropped record, or a DataError at the first one when `strict`."""

  strict: bool = False
  drops: list[Drop] = dataclasses.field(default_factory=list)

  def drop(self, file: str | os.PathLike, line: int | None, field: str, reason: str,
           record: str = "") -> None:
    item = Drop(str(file), line, field, reason, record[:200])
    if self.strict:
      raise DataError(str(item))
    self.drops.append(item)

  def __len__(self) -> int:
    return len(self.drops)

  def counts(self) -> dict[str, int]:
    """Number of drops per reason."""
    return dict(collections.Counter(d.reason for d in self.drops).most_common())

  def summary(self) -> str:
    if not self.drops:
      return "dropped 0 records"
    parts = ", ".join(f"{n} {reason}" for reason, n in self.counts().items())
    return f"dropped {len(self.drops)} records ({parts})"

  def write(self, path: str | os.PathLike) -> None:
    """Writes one JSON object per dropped record."""
    storage.write_atomic(path, "".join(json.dumps(dataclasses.asdict(d)) + "\n"
                                       for d in self.drops))
