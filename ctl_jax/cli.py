"""The ctl-jax command line (`python run.py COMMAND ...`, or the `ctl-jax COMMAND ...` console
script that `pip install` puts on the PATH): one absl program, one command per invocation.

  ctl-jax --help                  the commands
  ctl-jax COMMAND --help          one command's flags (the config fields: --config.FIELD=value)

Every expected failure (a bad flag or config field, a missing or wrong workdir, missing data or
image, an unknown category, an incompatible or absent checkpoint, a corrupt export) ends with one
line naming the problem and exit code 1; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import dataclasses
import sys

from absl import app, flags, logging
from ml_collections import config_flags

flags.DEFINE_string("workdir", None, "Run folder: checkpoints, metrics.jsonl, eval_metrics.json.")
flags.DEFINE_string("out", None, "generate-data: output folder; export: catalogue folder "
                    "(default W/export); recommend: report folder (default W/recommend); "
                    "download-images: image folder.")
flags.DEFINE_integer("scenes", 3000, "generate-data: number of scene photos (STL format).",
                     lower_bound=1)
flags.DEFINE_integer("outfits", None, "generate-data: number of outfit collages (CTL format); "
                     "default: as many as scenes.", lower_bound=1)
flags.DEFINE_enum("format", "both", ["stl", "ctl", "both"], "generate-data: which formats.")
flags.DEFINE_integer("seed", 0, "generate-data: seed (same seed, same bytes).")
flags.DEFINE_float("reuse", 72_198 / 38_111, "generate-data: mean (scene, product) pairs or "
                   "outfits per product; 1 makes every product unique. Default: STL-Fashion's "
                   "1.89 (72,198 pairs of 38,111 products).", lower_bound=1.0)
flags.DEFINE_string("catalogue", None, "export: a catalogue folder (fashion-cat.json + images/) "
                    "or 'features' (the training products, from the feature cache).")
flags.DEFINE_enum("dtype", "float32", ["float32", "float16"], "export: embedding file dtype.")
flags.DEFINE_string("index", None, "export, build-index: an ANN index per category, "
                    "faiss:<index_factory string>[@<search parameters>], e.g. "
                    "faiss:IVF4096,Flat or faiss:IVF1024,Flat@nprobe=16 (small categories: exact "
                    "flat).")
flags.DEFINE_bool("savedmodel", False, "export: also write TF SavedModels of the encoders, "
                  "for TF Serving (OUT/savedmodel/NAME/STEP; image bytes in).")
flags.DEFINE_string("scene", None, "recommend: scene image to complete.")
flags.DEFINE_string("product", None, "recommend: product image (product-task model).")
flags.DEFINE_multi_string("category", [], "recommend: a category to rank, repeatable "
                          "(--category Shoes --category 'Handbags, Wallets & Cases'); a value "
                          "that is no category name is read as a comma-separated list. Default: "
                          "all, blended.")
flags.DEFINE_integer("k", 10, "recommend: number of products.", lower_bound=1)
flags.DEFINE_integer("quota", 0, "recommend: products per category when blending "
                     "(default 0: ceil(k / categories)).", lower_bound=0)
flags.DEFINE_string("embeddings", None, "recommend, build-index: exported catalogue (default "
                    "W/export).")
flags.DEFINE_bool("exact", False, "recommend, serve: rank with the exact ranker even when the "
                  "export has an ANN index.")
flags.DEFINE_string("images", None, "recommend, serve: where the catalogue's product images are "
                    "(default: the export's image_root, the catalogue folder it was made from).")
flags.DEFINE_string("host", "127.0.0.1", "serve: the address to listen on (0.0.0.0: every "
                    "interface).")
flags.DEFINE_integer("port", 8000, "serve: the port (0: a free one; the address is printed).",
                     lower_bound=0, upper_bound=65535)
flags.DEFINE_integer("max_batch", 32, "serve: the most concurrent requests answered by one model "
                     "call (1: no micro-batching).", lower_bound=1)
flags.DEFINE_float("batch_wait_ms", 2.0, "serve: how long a request waits for others to share "
                   "its batch.", lower_bound=0.0)
flags.DEFINE_integer("max_upload_mb", 20, "serve: the largest photo accepted, in MiB.",
                     lower_bound=1)
flags.DEFINE_string("examples", None, "serve: a folder of photos the web page offers to pick.")
flags.DEFINE_string("root", None, "inspect-data: the dataset folder.")
flags.DEFINE_string("json", None, "inspect-data: also write the summary as JSON to this file.")
flags.DEFINE_string("annotations", None, "download-images: fashion.json, raw_*.tsv, "
                    "triplet_*.tsv or fitb_eval.json (another name: give --annotation_format).")
flags.DEFINE_enum("annotation_format", "auto",
                  ["auto", "stl_pairs", "ctl_raw", "ctl_triplets", "ctl_fitb"],
                  "download-images: the kind of --annotations: STL pairs (fashion.json lines), "
                  "CTL raw items, outfit triplets or FITB questions; auto: from the file name.")
flags.DEFINE_string("base-url", None, "download-images: replaces the published image URL prefix.")
flags.DEFINE_integer("workers", 16, "download-images: parallel downloads and checks of the "
                     "images already there.", lower_bound=1)
config_flags.DEFINE_config_file("config", None, "Experiment config file.", lock_config=True)
flags.DEFINE_string("coordinator_address", None, "Multi-host: host:port of process 0's "
                    "coordinator (default: $JAX_COORDINATOR_ADDRESS).")
flags.DEFINE_integer("num_processes", None, "Multi-host: number of processes "
                     "(default: $JAX_NUM_PROCESSES).")
flags.DEFINE_integer("process_id", None, "Multi-host: this process, 0..num_processes-1 "
                     "(default: $JAX_PROCESS_ID).")
flags.DEFINE_bool("distributed", False, "Multi-host: let JAX detect the cluster (Slurm, Open MPI, "
                  "Cloud TPU, GKE) when the values above are not given.")
FLAGS = flags.FLAGS


@dataclasses.dataclass(frozen=True)
class Command:
  function: str  # the function of this module that runs it
  summary: str
  usage: str
  flags: tuple[str, ...]  # its own flags, in the order --help lists them


_MODEL = ("config", "workdir")
_CLUSTER = ("coordinator_address", "num_processes", "process_id", "distributed")
COMMANDS = {
    "train": Command("train", "train a model, then evaluate it on the test split",
                     "--config configs/demo.py[:VARIANT] --workdir W [--config.FIELD=value ...]",
                     _MODEL + _CLUSTER),
    "evaluate": Command("evaluate", "evaluate a trained workdir (best validated state)",
                        "--config configs/demo.py --workdir W", _MODEL + _CLUSTER),
    "extract-features": Command("extract_features", "fill the backbone feature cache",
                                "--config configs/demo.py --workdir W", _MODEL + _CLUSTER),
    "export": Command("export", "embed a catalogue for retrieval (and SavedModels)",
                      "--workdir W --catalogue DIR|features [--out DIR] [--savedmodel] "
                      "[--index faiss:IVF4096,Flat]",
                      ("workdir", "catalogue", "config", "out", "dtype", "savedmodel", "index")),
    "recommend": Command("recommend", "complete the look of one scene (or product) photo",
                         "--workdir W --scene IMG|--product IMG [--category C ...] [-k 10]",
                         ("workdir", "scene", "product", "category", "k", "quota", "embeddings",
                          "out", "config", "exact")),
    "build-index": Command("build_index", "add ANN indexes to an exported catalogue",
                           "--embeddings DIR|--workdir W --index faiss:IVF4096,Flat",
                           ("workdir", "embeddings", "index")),
    "serve": Command("serve", "a recommendation service (HTTP API and web page)",
                     "--workdir W [--port 8000] [--embeddings DIR] [--examples DIR]",
                     ("workdir", "host", "port", "embeddings", "images", "exact", "max_batch",
                      "batch_wait_ms", "max_upload_mb", "examples", "config")),
    "generate-data": Command("generate_data", "write a generated STL/CTL dataset",
                             "--out DIR [--scenes N] [--seed S] [--format stl|ctl|both]",
                             ("out", "scenes", "outfits", "format", "seed", "reuse")),
    "inspect-data": Command("inspect_data", "summarise and check a dataset folder",
                            "--root DIR [--format stl|ctl] [--json FILE]",
                            ("root", "format", "json")),
    "download-images": Command("download_images", "fetch the images of an annotation file",
                               "--annotations FILE --out DIR [--workers N]",
                               ("annotations", "out", "annotation_format", "base-url",
                                "workers")),
}
USAGE = f"usage: run.py {{{'|'.join(COMMANDS)}}} [flags]; run.py --help lists the commands"


def _usage_error(message: str):
  """A mistake on the command line: one line on stderr, exit code 1."""
  print(f"run.py: error: {message}", file=sys.stderr)
  sys.exit(1)


def command_help(name: str) -> str:
  """The --help text of one command: usage, then each of its flags with its help and default."""
  command = COMMANDS[name]
  lines = [f"usage: run.py {name} {command.usage}", "", command.summary + ".", "", "flags:"]
  for flag in command.flags:
    f = FLAGS[flag]
    default = "" if f.default in (None, [], False) or flag == "config" else (
        f" (default: {f.default_as_str or f.default})")
    lines.append(f"  --{flag}: {f.help}{default}")
  if "config" in command.flags:
    lines += ["", "Config files take a variant after a colon where they have some "
              "(configs/demo.py:small); any field is set with --config.FIELD=value, e.g. "
              "--config.train.num_steps=100."]
  return "\n".join(lines)


def overview() -> str:
  width = max(len(n) for n in COMMANDS)
  lines = ["usage: run.py COMMAND [flags]   (or: ctl-jax COMMAND [flags])", "", "commands:"]
  lines += [f"  {n:<{width}}  {c.summary}" for n, c in COMMANDS.items()]
  lines += ["", "run.py COMMAND --help lists one command's flags."]
  return "\n".join(lines)


def _config_error(error: Exception, argv: list[str]) -> str:
  """One line for a config that does not load, or a --config.FIELD that does not exist."""
  text = str(error).replace("\\n", "\n").replace("\\'", "'")
  lines = [line.strip().strip("'\"") for line in text.splitlines() if line.strip()]
  if "Failed loading config file" in text or "earlier failure to load" in text:
    reason = next((line for line in reversed(lines) if "rror" in line or "No such" in line),
                  lines[-1] if lines else type(error).__name__)
    return f"--config {FLAGS['config'].config_filename or ''}: cannot load it ({reason})"
  overrides = [a.split("=", 1)[0] for a in argv if a.startswith("--config.")]
  key = lines[0].strip("'\"") if lines else ""
  named = next((o for o in overrides if key and o.rsplit(".", 1)[-1] == key), None)
  hint = " ".join(lines[1:])
  if named:
    return f"{named}: no such config field{'; ' + hint if hint else ''}"
  return "--config: " + " ".join(lines)


def parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing, with --help per command and every mistake as one line (exit 1).

  A misspelt config field (`--config.data.rooot=X`) or a config file that fails to load would
  otherwise end in the traceback of the config library; a bad flag value in absl's two lines."""
  args = argv[1:]
  if not args or args[0] in ("-h", "--help", "help", "-?", "--helpshort", "--helpfull"):
    print(overview())
    sys.exit(0 if args else 1)
  name = args[0]
  if name not in COMMANDS:
    _usage_error(f"unknown command {name!r}; {USAGE}")
  if any(a in ("-h", "--help", "--helpshort", "-?") for a in args[1:]):
    print(command_help(name))
    sys.exit(0)
  try:
    remaining = FLAGS(argv)
    if FLAGS["config"].present:
      FLAGS.config.keys()  # a config file that failed to load raises here, not at first use
    return remaining
  except flags.Error as e:
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    if any(line.startswith("Traceback") for line in lines):  # get_config raised: its message
      flag = lines[0].split(": ", 1)[0]
      _usage_error(f"{flag}: {lines[-1].split(': ', 1)[-1]}")
    _usage_error(" ".join(lines))
  except (AttributeError, KeyError, ValueError, TypeError, OSError, SyntaxError) as e:
    # raised by ml_collections while it loads --config or applies --config.FIELD=value
    _usage_error(_config_error(e, argv))
  return []


def _quiet_library_logs():
  """Keep INFO lines for our own messages; libraries (orbax, absl internals) log warnings only."""
  import logging as std_logging
  logging.get_absl_handler().addFilter(
      lambda r: r.levelno >= std_logging.WARNING or "/ctl_jax/" in r.pathname
      or "/input_pipeline/" in r.pathname or r.pathname.endswith("run.py"))


def main(argv):
  _quiet_library_logs()
  if len(argv) != 2:
    _usage_error(f"unexpected arguments {' '.join(argv[2:])!r}; {USAGE}")
  globals()[COMMANDS[argv[1]].function]()


def _need(*names):
  missing = [n for n in names if getattr(FLAGS, n) is None]
  if missing:
    _usage_error("missing " + ", ".join(f"--{n}" for n in missing)
                 + f" (run.py {sys.argv[1]} --help lists its flags)")


def _hide_gpus_from_tensorflow():
  import tensorflow as tf  # tf.data only: JAX owns the accelerators
  tf.config.set_visible_devices([], "GPU")


def _start():
  """Common start of the commands that run a model: cluster, TensorFlow, per-process logging."""
  _need("config", "workdir")
  from ctl_jax.trainer import cluster
  cluster.join(cluster.spec_from(FLAGS.coordinator_address, FLAGS.num_processes,
                                 FLAGS.process_id, FLAGS.distributed))
  _hide_gpus_from_tensorflow()
  if not cluster.is_main_process():
    logging.set_verbosity(logging.WARNING)  # process 0 tells the story; others only warn


def _expected_errors() -> tuple[type[Exception], ...]:
  """The failures that are the user's to fix (config, data, workdir, checkpoint, request): they
  end a command with one line naming the problem and exit code 1. Anything else is a bug and
  keeps its traceback."""
  from ctl_jax.serving.errors import ServingError
  from ctl_jax.trainer import checkpoint, config_fields, nonfinite, workdir_lock
  from input_pipeline.readers.drops import DataError
  return (nonfinite.NonFiniteError, checkpoint.IncompatibleCheckpointError,
          checkpoint.CorruptCheckpointError, checkpoint.NoCheckpointError,
          config_fields.ConfigError, DataError, workdir_lock.WorkdirLockedError, ServingError)


def _run_model_command(name: str):
  """Joins the cluster, then runs the trainer's command `name` (ctl_jax/trainer/loop.py)."""
  _start()
  # Imported after joining the cluster: nothing may touch a device before.
  from ctl_jax.trainer import loop
  commands = {"train": loop.train_and_evaluate, "evaluate": loop.evaluate_checkpoint,
              "extract-features": loop.extract_features}
  try:
    commands[name](FLAGS.config, FLAGS.workdir)
  except _expected_errors() as e:
    _fail(e)


def _fail(error: Exception):
  """Ends an expected failure with its one-line message and exit code 1 (no traceback)."""
  logging.error("%s: %s", type(error).__name__, error)
  sys.exit(1)


def train():
  _run_model_command("train")


def evaluate():
  _run_model_command("evaluate")


def extract_features():
  _run_model_command("extract-features")


def export():
  _need("workdir", "catalogue")
  _hide_gpus_from_tensorflow()
  try:
    _export()
  except _expected_errors() as e:
    _fail(e)


def _export():
  from ctl_jax.serving import export as export_lib
  from ctl_jax.serving import restore, savedmodel
  config = FLAGS.config or restore.config_from_meta(restore.open_checkpoint(FLAGS.workdir)[2])
  out = FLAGS.out or f"{FLAGS.workdir}/export"
  if FLAGS.index:  # a bad spec fails now, not after the embedding
    from ctl_jax.serving import ann
    spec = ann.parse_spec(FLAGS.index, dim=config.model.embed_dim)
  manifest = export_lib.export_embeddings(config, FLAGS.workdir, FLAGS.catalogue, out,
                                          FLAGS.dtype)
  if not manifest:  # written by process 0
    return
  print(f"exported {manifest['num_products']} products (step {manifest['model_step']}, "
        f"{manifest['embed_dim']}-d {manifest['dtype']}) to {out}")
  if FLAGS.index:
    _build_index(out, spec)
  if FLAGS.savedmodel:  # TF Serving: --model_base_path=OUT/savedmodel/NAME, the highest version
    predictor = savedmodel.restore_predictor(FLAGS.workdir, config)
    paths = savedmodel.export_savedmodels(predictor, f"{out}/savedmodel")
    print(f"SavedModels, version {predictor.step} (the checkpoint step): "
          + ", ".join(paths.values()))


def recommend():
  _need("workdir")
  _hide_gpus_from_tensorflow()
  from ctl_jax.serving import recommend as recommend_lib
  try:
    recommend_lib.recommend(FLAGS.workdir, scene=FLAGS.scene, product=FLAGS.product,
                            categories=FLAGS.category, k=FLAGS.k, quota=FLAGS.quota,
                            embeddings=FLAGS.embeddings, out=FLAGS.out, config=FLAGS.config,
                            exact=FLAGS.exact)
  except _expected_errors() as e:
    _fail(e)


def build_index():
  _need("index")
  if FLAGS.embeddings is None:
    _need("workdir")
  try:
    _build_index(FLAGS.embeddings or f"{FLAGS.workdir}/export", FLAGS.index)
  except _expected_errors() as e:
    _fail(e)


def _build_index(out: str, spec):
  """Builds the ANN index of every category of the export `out` (ann.py) and says what it built."""
  import time

  from ctl_jax.serving import ann
  spec = ann.parse_spec(str(spec))
  print(f"building {spec} indexes:")
  start = time.perf_counter()
  entry = ann.build(out, spec)
  flat = sum(e["exact"] for e in entry["categories"].values())
  print(f"index {entry['spec']} ({entry['params'] or 'every category exact flat'}) of "
        f"{len(entry['categories'])} categories ({flat} exact flat) in "
        f"{time.perf_counter() - start:.1f} s: {out}/{ann.INDEX_DIR}/")


def serve():
  _need("workdir")
  _hide_gpus_from_tensorflow()
  from ctl_jax.serving import service
  options = service.ServiceOptions(max_batch=FLAGS.max_batch, max_wait_ms=FLAGS.batch_wait_ms,
                                   max_upload_bytes=FLAGS.max_upload_mb << 20,
                                   examples=FLAGS.examples)
  try:
    service.serve(FLAGS.workdir, host=FLAGS.host, port=FLAGS.port, embeddings=FLAGS.embeddings,
                  images=FLAGS.images, exact=FLAGS.exact, options=options, config=FLAGS.config)
  except _expected_errors() as e:
    _fail(e)


def generate_data():
  _need("out")
  from input_pipeline.tools import synthetic_ctl, synthetic_stl
  if FLAGS.format in ("stl", "both"):
    summary = synthetic_stl.write_stl_dataset(FLAGS.out, FLAGS.scenes, FLAGS.seed,
                                               reuse=FLAGS.reuse)
    print(f"{FLAGS.out} (STL): {summary['scenes']} scenes, {summary['products']} products, "
          f"{summary['pairs']} pairs ({summary['pairs_per_product']} per product, "
          f"{summary['pairs_per_scene']} per scene); pairs per category "
          f"{summary['pairs_per_category']}")
  if FLAGS.format in ("ctl", "both"):
    summary = synthetic_ctl.write_ctl_dataset(FLAGS.out, FLAGS.outfits or FLAGS.scenes, FLAGS.seed,
                                               reuse=FLAGS.reuse)
    print(f"{FLAGS.out} (CTL): {summary['outfits']} outfits, items {summary['items']}, "
          f"items per outfit {summary['items_per_outfit']}")


def inspect_data():
  _need("root")
  import json

  from input_pipeline.readers.drops import DataError
  from input_pipeline.tools import inspect_data as inspect_lib
  try:
    summary = inspect_lib.summarize(FLAGS.format, FLAGS.root)
  except DataError as e:
    _fail(e)
  print(inspect_lib.format_summary(summary))
  if FLAGS.json:
    with open(FLAGS.json, "w") as f:
      json.dump(summary, f, indent=1)


def download_images():
  """Exit status 1 with one error line when the annotation file cannot be used, or when not one
  of its images could be fetched or found good; some failures among successes exit 0 (the
  report counts and lists them)."""
  _need("annotations", "out")
  from input_pipeline.readers.drops import DataError
  from input_pipeline.tools import download
  try:
    report = download.download_images(
        FLAGS.annotations, FLAGS.out, kind=FLAGS.annotation_format, workers=FLAGS.workers,
        base_url=FLAGS["base-url"].value or download.DEFAULT_BASE_URL)
  except DataError as e:
    _fail(e)
  print(download.format_report(report))
  error = download.run_error(report)
  if error:
    logging.error("download-images: %s", error)
    sys.exit(1)


def run():
  """The console entry point (`ctl-jax`) and `run.py`'s main."""
  app.run(main, flags_parser=parse_flags)
