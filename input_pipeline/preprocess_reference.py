"""The training preprocessing of a whole image in plain PIL + numpy, for clients without ctl-jax.

  from input_pipeline.preprocess_reference import prepare_image_pil
  x = prepare_image_pil("photo.jpg", 224, "caffe")      # float32 [224, 224, 3], a model input

This file depends on nothing else of ctl-jax: copy it into a client. It reproduces
`preprocess.prepare_image(data, FULL_IMAGE, size, normalization)` step by step:

  decode   JPEG: libjpeg's DCT-domain downscaling by the largest r in (1, 2, 4, 8) that keeps
           both sides at least `size` (preprocess.JPEG_SCALES; PIL's `Image.draft`), giving
           ceil(W / r) x ceil(H / r) pixels. Other formats: decoded whole. Then RGB (alpha
           dropped, not composited; greyscale repeated; EXIF orientation ignored, as in training).
  resize   to size x size, bilinear with antialiasing when shrinking (a triangle filter as wide
           as the scale), in float: PIL's BILINEAR on each channel as a float ("F") image, which
           is TF's `tf.image.resize(..., "bilinear", antialias=True)`; then clipped to 0..255.
           (Resizing the 8-bit RGB image instead rounds to whole levels: up to 1 level off.)
  normalise  caffe: RGB -> BGR minus the ImageNet mean (0..255); imagenet: (x / 255 - mean) / std.

Measured against TensorFlow 2.21 with Pillow 13 (both use libjpeg-turbo, and the decoded pixels
are identical): at most 0.0033 of a 0..255 level apart (float rounding in the resize), on JPEGs,
PNGs and a GIF of 40 to 1001 pixels at 32, 64 and 224 pixels; the test allows 0.01
(tests/input_pipeline/test_preprocess_reference.py). A Pillow built on another libjpeg than
libjpeg-turbo (PIL.features.check_feature("libjpeg_turbo") is False) may decode JPEGs slightly
differently: not measured.
"""

from __future__ import annotations

import io
import os

import numpy as np
from PIL import Image

JPEG_SCALES = (1, 2, 4, 8)
CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)
IMAGENET_MEAN_RGB = (0.485, 0.456, 0.406)
IMAGENET_STD_RGB = (0.229, 0.224, 0.225)


def jpeg_scale(width: int, height: int, size: int) -> int:
  """The DCT scale 1/r training decodes a width x height JPEG at for a `size` model input."""
  return max(r for r in JPEG_SCALES if min(width, height) // r >= size or r == 1)


def decode(image: Image.Image, size: int, scale: int | None = None) -> np.ndarray:
  """uint8 RGB [h, w, 3] of an opened image, JPEGs at DCT scale 1/`scale` (default: training's)."""
  if image.format == "JPEG":
    width, height = image.size
    r = jpeg_scale(width, height, size) if scale is None else scale
    if r > 1:
      # draft picks the largest power-of-2 reduction r' <= min(W // w, H // h): exactly r here.
      image.draft("RGB", (width // r, height // r))
    if image.size != (-(-width // r), -(-height // r)):
      raise RuntimeError(f"PIL decoded a {width}x{height} JPEG at {image.size}, not at 1/{r}")
  return np.asarray(image.convert("RGB"))


def resize(pixels: np.ndarray, size: int) -> np.ndarray:
  """float32 [size, size, 3] in 0..255: antialiased bilinear in float, one channel at a time."""
  channels = [Image.fromarray(pixels[..., c].astype(np.float32), "F").resize(
      (size, size), Image.Resampling.BILINEAR, reducing_gap=None) for c in range(3)]
  return np.clip(np.stack([np.asarray(c) for c in channels], -1), 0.0, 255.0)


def normalize(image: np.ndarray, normalization: str) -> np.ndarray:
  """0..255 RGB -> the model's input (`caffe` or `imagenet`), float32."""
  if normalization == "caffe":
    return (image[..., ::-1] - np.float32(CAFFE_MEAN_BGR)).astype(np.float32)
  if normalization == "imagenet":
    return ((image / np.float32(255.0) - np.float32(IMAGENET_MEAN_RGB))
            / np.float32(IMAGENET_STD_RGB)).astype(np.float32)
  raise ValueError(f"normalization={normalization!r}; choose 'caffe' or 'imagenet'")


def prepare_image_pil(path_or_bytes: str | os.PathLike | bytes, size: int,
                      normalization: str = "caffe") -> np.ndarray:
  """An image file (or its bytes) -> the model input float32 [size, size, 3], as in training."""
  source = io.BytesIO(path_or_bytes) if isinstance(path_or_bytes, bytes) else path_or_bytes
  with Image.open(source) as image:
    pixels = decode(image, size)
  return normalize(resize(pixels, size), normalization)
