"""Command-line tools: the data generator (synthetic_*), the image downloader, the dataset
inspector and `tfds build`."""
