"""Deterministic splits by signature hash.

Whether an image signature (a scene, an outfit collage) falls into a subset is decided by the
hash of the signature alone, not by its position in a file or by a random draw. So the split
is the same on every host and every run, for the folder readers, the TFDS builders and the data
generator alike, and a group of records sharing a signature (the pairs of one scene, the items
of one outfit) never straddles two subsets. Different `salt`s give independent splits of the
same signatures (e.g. STL's test split and the CTL training subset of `data.train_fraction`).
"""

from __future__ import annotations

import hashlib

# The salt of the validation split carved from the training signatures (`data.validation_fraction`).
VALIDATION_SALT = "ctl-validation"


def is_test_signature(sig: str, test_fraction: float, salt: str = "ctl-split") -> bool:
  """Whether `sig` is in the `test_fraction` share of signatures selected by its salted hash."""
  digest = hashlib.md5(f"{salt}/{sig}".encode()).digest()
  return int.from_bytes(digest[:8], "big") / 2.0**64 < test_fraction
