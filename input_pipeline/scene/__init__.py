"""The scene task's dataset, splits, scene crops, triplet sampler and tf.data pipelines."""
