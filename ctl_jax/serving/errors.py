"""The failures a serving request can meet that are the caller's to fix, not bugs: `run.py`
ends `export` and `recommend` with their one-line message and exit code 1."""


class ServingError(ValueError):
  """A request the exported catalogue or the model cannot answer (unreadable image, unknown
  category, k out of range, an export of another model)."""


class UnknownCategoryError(ServingError, KeyError):
  """A category name the model or the catalogue does not have."""

  def __str__(self) -> str:  # KeyError would quote the message
    return str(self.args[0]) if self.args else ""


class MissingExportError(ServingError, FileNotFoundError):
  """No exported catalogue where one was expected."""
