"""Image preprocessing ops for tf.data: decode (fused with the crop for JPEG), resize, normalise."""

from __future__ import annotations

import tensorflow as tf

# ImageNet statistics, RGB.
IMAGENET_MEAN_RGB = (0.485, 0.456, 0.406)
IMAGENET_STD_RGB = (0.229, 0.224, 0.225)
# Keras/Caffe ResNet-50 preprocessing: BGR channel order, per-channel mean subtraction on 0..255.
CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)


def normalize_caffe(image: tf.Tensor) -> tf.Tensor:
  """RGB 0..255 -> BGR minus the ImageNet mean, as keras.applications.resnet50 expects."""
  return image[..., ::-1] - tf.constant(CAFFE_MEAN_BGR, image.dtype)


def normalize_imagenet(image: tf.Tensor) -> tf.Tensor:
  """RGB 0..255 -> (x / 255 - mean) / std per channel."""
  mean = tf.constant(IMAGENET_MEAN_RGB, image.dtype)
  std = tf.constant(IMAGENET_STD_RGB, image.dtype)
  return (image / 255.0 - mean) / std


NORMALIZATIONS = {"caffe": normalize_caffe, "imagenet": normalize_imagenet}


def crop_window(crop: tf.Tensor, height: tf.Tensor, width: tf.Tensor) -> tf.Tensor:
  """Pixel window [y, x, h, w] (int32) of a normalised (left, top, right, bottom) crop.

  The window covers the crop outward to whole pixels and is at least one pixel each way.
  """
  h = tf.cast(height, tf.float32)
  w = tf.cast(width, tf.float32)
  y0 = tf.minimum(tf.cast(tf.floor(crop[1] * h), tf.int32), height - 1)
  x0 = tf.minimum(tf.cast(tf.floor(crop[0] * w), tf.int32), width - 1)
  y1 = tf.minimum(tf.maximum(tf.cast(tf.math.ceil(crop[3] * h), tf.int32), y0 + 1), height)
  x1 = tf.minimum(tf.maximum(tf.cast(tf.math.ceil(crop[2] * w), tf.int32), x0 + 1), width)
  return tf.stack([y0, x0, y1 - y0, x1 - x0])


def _is_jpeg(data: tf.Tensor) -> tf.Tensor:
  return tf.equal(tf.strings.substr(data, 0, 3), b"\xff\xd8\xff")


JPEG_SCALES = (1, 2, 4, 8)  # libjpeg decodes at 1/r of the size in the DCT domain, cheaply


def _decode_jpeg_window(data: tf.Tensor, window: tf.Tensor, min_size: int | None) -> tf.Tensor:
  """Decodes the pixel `window` [y, x, h, w] of a JPEG, at the smallest DCT scale 1/r that keeps
  both sides of the window at least `min_size` (r = 1 when `min_size` is None)."""
  if min_size is None:
    return tf.io.decode_and_crop_jpeg(data, window, channels=3, dct_method="INTEGER_ACCURATE")
  shape = tf.io.extract_jpeg_shape(data)
  short_side = tf.minimum(window[2], window[3])

  def at_scale(r):
    def decode():
      # libjpeg's scaled image is ceil(H / r) x ceil(W / r); the window is given at that scale.
      height, width = -(-shape[0] // r), -(-shape[1] // r)
      y, x = tf.minimum(window[0] // r, height - 1), tf.minimum(window[1] // r, width - 1)
      h = tf.maximum(tf.minimum(-(-(window[0] + window[2]) // r), height) - y, 1)
      w = tf.maximum(tf.minimum(-(-(window[1] + window[3]) // r), width) - x, 1)
      return tf.io.decode_and_crop_jpeg(data, tf.stack([y, x, h, w]), channels=3, ratio=r,
                                        dct_method="INTEGER_ACCURATE")
    return decode

  index = tf.reduce_sum(tf.cast(short_side // tf.constant(JPEG_SCALES[1:]) >= min_size, tf.int32))
  return tf.switch_case(index, [at_scale(r) for r in JPEG_SCALES])


def decode_and_crop(data: tf.Tensor, crop: tf.Tensor, min_size: int | None = None) -> tf.Tensor:
  """Decodes image bytes to RGB uint8 and keeps the normalised `crop`.

  JPEG takes the fused decode-and-crop path (only the window's blocks are decoded), and when
  `min_size` is given, decodes at a reduced DCT scale that still leaves the crop at least
  `min_size` pixels each way: much cheaper when the model's input is smaller than the photo.
  PNG, GIF and BMP are decoded whole and then cropped. Greyscale, CMYK and RGBA come out as RGB.
  """

  def jpeg():
    shape = tf.io.extract_jpeg_shape(data)
    return _decode_jpeg_window(data, crop_window(crop, shape[0], shape[1]), min_size)

  def other():
    image = tf.io.decode_image(data, channels=3, expand_animations=False)
    shape = tf.shape(image)
    y, x, h, w = tf.unstack(crop_window(crop, shape[0], shape[1]))
    return image[y:y + h, x:x + w, :]

  image = tf.cond(_is_jpeg(data), jpeg, other)
  image.set_shape([None, None, 3])
  return image


def resize(image: tf.Tensor, size: int) -> tf.Tensor:
  """Square `size` x `size` float32 in 0..255 (bilinear with antialiasing when shrinking)."""
  image = tf.image.resize(tf.cast(image, tf.float32), [size, size], method="bilinear",
                          antialias=True)
  return tf.clip_by_value(image, 0.0, 255.0)


FULL_IMAGE = (0.0, 0.0, 1.0, 1.0)


def prepare_image(data: tf.Tensor, crop: tf.Tensor, size: int, normalization: str) -> tf.Tensor:
  """Encoded bytes -> cropped, resized, normalised float32 [size, size, 3]."""
  image = decode_and_crop(data, crop, min_size=size)
  return NORMALIZATIONS[normalization](resize(image, size))


def _read_remote(path: tf.Tensor) -> tf.Tensor:
  def read(p):
    from input_pipeline import storage  # noqa: PLC0415  (remote files only)
    return storage.read_bytes(p.numpy().decode())
  data = tf.py_function(read, [path], tf.string)
  data.set_shape([])
  return data


def read_file(path: tf.Tensor) -> tf.Tensor:
  """The bytes of a file, inside tf.data: a local path through TensorFlow's file op, a URL
  (`gs://...`) through `storage` (fsspec), as the rest of ctl-jax reads it."""
  remote = tf.strings.regex_full_match(path, "[a-zA-Z][a-zA-Z0-9+.-]*://.*")
  return tf.cond(remote, lambda: _read_remote(path), lambda: tf.io.read_file(path))


def load_image(path: tf.Tensor, crop: tf.Tensor, size: int, normalization: str) -> tf.Tensor:
  """File -> cropped, resized, normalised float32 [size, size, 3]."""
  return prepare_image(read_file(path), crop, size, normalization)
