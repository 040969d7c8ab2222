"""ctl-jax command line: `python run.py COMMAND [flags]`, the same program as the `ctl-jax`
console script (ctl_jax/cli.py). `python run.py --help` lists the commands,
`python run.py COMMAND --help` one command's flags.

  python run.py generate-data --out DIR --scenes N --seed S
  python run.py inspect-data --format stl|ctl --root DIR [--json FILE]
  python run.py download-images --annotations FILE --out DIR [--base-url URL] [--workers N]
      [--annotation_format auto|stl_pairs|ctl_raw|ctl_triplets|ctl_fitb]
  python run.py train --config configs/demo.py[:small] --workdir W [--config.field=value ...]
  python run.py evaluate --config configs/demo.py --workdir W
  python run.py extract-features --config configs/demo.py --workdir W
  python run.py export --config configs/demo.py --workdir W --catalogue DIR|features [--savedmodel]
  python run.py recommend --workdir W --scene IMG|--product IMG [--category C] [-k 10] [--out DIR]

Multi-host: run the same command on every host (or process) with
  --coordinator_address=HOST0:PORT --num_processes=N --process_id=I
or the environment JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID, or
--distributed on Slurm, Open MPI, Cloud TPU and GKE jobs (JAX detects the values).
"""

from ctl_jax import cli

if __name__ == "__main__":
  cli.run()
