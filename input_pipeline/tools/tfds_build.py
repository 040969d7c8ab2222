"""`tfds build` for this project's datasets, offline:

    python -m input_pipeline.tools.tfds_build stl_fashion --manual_dir=DIR [--data_dir=DIR]
    python -m input_pipeline.tools.tfds_build ctl_outfits --manual_dir=DIR [--data_dir=DIR]

This is TFDS's own `build` command (same flags: --overwrite, --file_format,
--max_examples_per_split, ...) with `input_pipeline.readers.tfds_builders` imported. It exists
because the `tfds` entry point of tensorflow-datasets 4.9.x imports Apache Beam at start-up for
its `convert_format` command, even to build a dataset that does not use Beam; with apache-beam
installed, `tfds build --imports=input_pipeline.readers.tfds_builders stl_fashion ...` does the
same.
"""

from __future__ import annotations

from absl import app
from tensorflow_datasets.scripts.cli import build, cli_utils

from input_pipeline.readers import tfds_builders  # noqa: F401  (registers stl_fashion, ctl_outfits)


def main() -> None:
  parse = cli_utils.make_flags_parser(build.Args, description=__doc__.splitlines()[0])
  app.run(lambda args: args.execute(), flags_parser=parse)


if __name__ == "__main__":
  main()
