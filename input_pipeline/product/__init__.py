"""The product task's dataset, tuple sampler and tf.data pipelines."""
