"""Where an image signature lives on disk: flat `<sig>.jpg` or nested `ab/cd/ef/<sig>.jpg`."""

from __future__ import annotations

import os

from input_pipeline import storage

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")


def nested_relpath(sig: str, ext: str = ".jpg") -> str:
  """The nested layout of the public releases: sig[0:2]/sig[2:4]/sig[4:6]/sig.jpg."""
  return os.path.join(sig[0:2], sig[2:4], sig[4:6], sig + ext)


class ImageFolder:
  """Resolves signatures to files in one folder, flat or nested, indexed once."""

  def __init__(self, root: str | os.PathLike):
    self.root = storage.path(root)
    self._paths: dict[str, str] = {}
    if self.root.is_dir():
      for file in storage.walk_files(self.root):
        stem, ext = os.path.splitext(file.rsplit("/", 1)[-1])
        if ext.lower() in IMAGE_EXTENSIONS:
          self._paths.setdefault(stem, file)

  def __contains__(self, sig: str) -> bool:
    return sig in self._paths

  def __len__(self) -> int:
    return len(self._paths)

  def path(self, sig: str) -> str:
    """The file of `sig`; KeyError naming the folder when it is missing."""
    try:
      return self._paths[sig]
    except KeyError:
      raise KeyError(f"no image for signature {sig} under {self.root}") from None
