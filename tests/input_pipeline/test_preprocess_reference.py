"""preprocess_reference (PIL + numpy) reproduces the training preprocessing of whole images."""

import io

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image, ImageDraw

from input_pipeline import preprocess, preprocess_reference

# Measured: at most 0.0033 of a 0..255 level (float rounding: the decoded pixels are identical).
# Resizing the 8-bit image instead of float channels is ~1 level off, a wrong DCT scale or
# another filter tens of levels: both fail this.
TOLERANCE = 0.01
SIZES = (32, 64, 224)


def _encode(image: Image.Image, fmt: str, **options) -> bytes:
  out = io.BytesIO()
  image.save(out, fmt, **options)
  return out.getvalue()


def _photo(stl_root, width: int, height: int) -> Image.Image:
  """A generated scene scaled to width x height with sharp shapes and noise (a JPEG's worst)."""
  scene = sorted((stl_root / "images").glob("*.jpg"))[0]
  image = Image.open(scene).convert("RGB").resize((width, height), Image.Resampling.BICUBIC)
  rng = np.random.default_rng(width)
  draw = ImageDraw.Draw(image)
  for _ in range(30):
    x, y = rng.integers(0, width), rng.integers(0, height)
    draw.ellipse([x, y, x + rng.integers(3, width // 3), y + rng.integers(3, height // 3)],
                 fill=tuple(int(v) for v in rng.integers(0, 256, 3)))
  noisy = np.asarray(image, np.float32) + rng.normal(0, 12, (height, width, 3))
  return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8))


@pytest.fixture(scope="module")
def images(stl_root):
  """{name: encoded bytes}: the dataset's JPEGs, JPEGs from 50 to 1001 pixels, PNGs, GIF."""
  out = {f"scene {p.name[:8]}": p.read_bytes()
         for p in sorted((stl_root / "images").glob("*.jpg"))[:3]}
  large, odd = _photo(stl_root, 1000, 700), _photo(stl_root, 1001, 701)
  out |= {"jpeg 1000x700": _encode(large, "JPEG", quality=90),
          "jpeg 1001x701 progressive 4:4:4": _encode(odd, "JPEG", progressive=True,
                                                     subsampling=0),
          "jpeg 200x150 grey": _encode(_photo(stl_root, 200, 150).convert("L"), "JPEG"),
          "jpeg 50x40": _encode(_photo(stl_root, 50, 40), "JPEG"),
          "png 50x40": _encode(_photo(stl_root, 50, 40), "PNG"),
          "png 333x251 rgba": _encode(large.resize((333, 251)).convert("RGBA"), "PNG"),
          "png 300x200 palette": _encode(large.resize((300, 200)).convert("P"), "PNG"),
          "gif 120x90": _encode(odd.resize((120, 90)), "GIF")}
  return out


def _training(data: bytes, size: int, normalization: str = "caffe") -> np.ndarray:
  return preprocess.prepare_image(tf.constant(data), tf.constant(preprocess.FULL_IMAGE),
                                  size, normalization).numpy()


def test_cases_cover_every_dct_scale(images):
  scales = set()
  for data in images.values():
    image = Image.open(io.BytesIO(data))
    if image.format == "JPEG":
      scales |= {preprocess_reference.jpeg_scale(*image.size, s) for s in SIZES}
  assert scales == set(preprocess.JPEG_SCALES) == set(preprocess_reference.JPEG_SCALES)


@pytest.mark.parametrize("normalization", ["caffe", "imagenet"])
@pytest.mark.parametrize("size", SIZES)
def test_matches_training_preprocessing(images, size, normalization):
  # The tolerance is in 0..255 levels: imagenet divides them by 255 * std.
  tolerance = TOLERANCE / (1.0 if normalization == "caffe" else 255 * 0.225)
  for name, data in images.items():
    want = _training(data, size, normalization)
    got = preprocess_reference.prepare_image_pil(data, size, normalization)
    assert got.shape == want.shape == (size, size, 3) and got.dtype == np.float32
    assert np.abs(got - want).max() <= tolerance, name


def test_reads_paths(stl_root):
  path = sorted((stl_root / "images").glob("*.jpg"))[0]
  np.testing.assert_array_equal(preprocess_reference.prepare_image_pil(str(path), 32),
                                preprocess_reference.prepare_image_pil(path.read_bytes(), 32))


def test_tolerance_catches_a_wrong_scale_or_filter(images):
  """What the tolerance guards against: each of these mistakes is far outside it."""
  data = images["jpeg 1000x700"]
  want = _training(data, 32)

  def with_pixels(pixels):
    return preprocess_reference.normalize(preprocess_reference.resize(pixels, 32), "caffe")

  full_scale = with_pixels(preprocess_reference.decode(Image.open(io.BytesIO(data)), 32, scale=1))
  assert np.abs(full_scale - want).max() > 10 * TOLERANCE
  pixels = preprocess_reference.decode(Image.open(io.BytesIO(data)), 32)
  for resample in (Image.Resampling.NEAREST, Image.Resampling.BILINEAR):  # the latter on uint8
    eight_bit = np.asarray(Image.fromarray(pixels).resize((32, 32), resample, reducing_gap=None),
                           np.float32)
    assert np.abs(preprocess_reference.normalize(eight_bit, "caffe") - want).max() > 10 * TOLERANCE
  assert np.abs(with_pixels(pixels) - want).max() <= TOLERANCE
