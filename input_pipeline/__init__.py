"""Input of both tasks: readers of the public formats (readers/), per-task datasets, samplers
and tf.data pipelines (scene/, product/), shared batching, preprocessing and the feature cache,
and the tools (tools/: generator, downloader, inspector, tfds build)."""
