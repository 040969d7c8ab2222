"""Every command the README documents, run as a user would (`run.py` in a subprocess), with its
typical mistakes: each ends with one line naming the problem, exit code 1, no traceback, and the
disk exactly as it was. `--help` answers per command with exit code 0.

(Argument bounds and comma-named categories are in tests/faults/test_faults_cli.py.)"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from ctl_jax import cli  # noqa: E402


def _run(*args, cwd=ROOT, timeout=300):
  return subprocess.run([sys.executable, str(ROOT / "run.py"), *map(str, args)], cwd=cwd,
                        capture_output=True, text=True, timeout=timeout,
                        env={**os.environ, "JAX_PLATFORMS": "cpu", "TF_CPP_MIN_LOG_LEVEL": "2"})


def _tree(folder: Path) -> dict:
  """Every path under `folder` with its size and modification time."""
  return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
          for p in sorted(folder.rglob("*"))}


def _assert_one_line_failure(result, message):
  lines = [line for line in result.stderr.splitlines() if line.strip()]
  assert result.returncode == 1, result.stderr[-3000:]
  assert "Traceback" not in result.stderr, result.stderr[-3000:]
  assert lines and message in lines[-1], lines[-3:]


def test_help_lists_the_commands():
  result = _run("--help")
  assert result.returncode == 0
  for name in cli.COMMANDS:
    assert f"  {name} " in result.stdout
  assert _run().returncode == 1  # no command at all: the same list, as an error


@pytest.mark.parametrize("name", list(cli.COMMANDS))
def test_help_per_command_shows_its_own_flags(name):
  result = _run(name, "--help")
  assert result.returncode == 0, result.stderr[-2000:]
  assert result.stdout.startswith(f"usage: run.py {name} ")
  shown = {line.split(":", 1)[0].strip()[2:] for line in result.stdout.splitlines()
           if line.startswith("  --")}
  assert shown == set(cli.COMMANDS[name].flags)
  assert "--annotations" not in result.stdout or name == "download-images"


@pytest.fixture
def empty_dir(tmp_path):
  folder = tmp_path / "here"
  folder.mkdir()
  return folder


TRAIN = ["train", "--config", "configs/smoke.py", "--workdir", "{w}"]
# (arguments, fragment of the last line); {w}: a workdir that must not appear, {d}: an empty
# folder that must stay empty
MISTAKES = [
    (TRAIN + ["--config.data.rooot=x"],
     '--config.data.rooot: no such config field; Did you mean "root"'),
    (TRAIN + ["--config.train.num_steps=ten"], "--config.train.num_steps=ten: invalid literal"),
    (["train", "--config", "configs/nope.py", "--workdir", "{w}"],
     "--config configs/nope.py: cannot load it"),
    (["train", "--config", "configs/demo.py:tiny", "--workdir", "{w}"],
     "configs/demo.py has no variant 'tiny' (variants: configs/demo.py:small)"),
    (TRAIN + ["--config.data.root={d}"], "{d}/fashion-cat.json: file not found"),
    (["evaluate", "--config", "configs/smoke.py", "--workdir", "{w}"],
     "NoCheckpointError: workdir {w} does not exist: check --workdir"),
    (["evaluate", "--config", "configs/smoke.py", "--workdir", "{d}"],
     "NoCheckpointError: no checkpoint in {d} (no checkpoints/ folder)"),
    (["export", "--workdir", "{w}", "--catalogue", "features"],
     "NoCheckpointError: workdir {w} does not exist"),
    (["export", "--workdir", "{d}", "--catalogue", "features"], "no checkpoints/ folder"),
    (["export", "--workdir", "{d}"], "missing --catalogue"),
    (["recommend", "--workdir", "{d}", "--scene", "{d}/missing.jpg"],
     "cannot read image {d}/missing.jpg"),
    (["recommend", "--workdir", "{d}"], "pass exactly one of --scene IMG or --product IMG"),
    (["extract-features", "--config", "configs/smoke.py", "--workdir", "{w}",
      "--config.data.root={d}"], "{d}/fashion-cat.json: file not found"),
    (["serve", "--workdir", "{w}"], "NoCheckpointError: workdir {w} does not exist"),
    (["serve"], "missing --workdir"),
    (["serve", "--workdir", "{d}", "--port", "70000"], "--port"),
    (["build-index", "--embeddings", "{d}", "--index", "faiss:IVF16,Flat"],
     "no manifest.json in {d}"),
    (["build-index", "--embeddings", "{d}", "--index", "annoy:50"], "--index annoy:50"),
    (["inspect-data", "--root", "{d}"], "no fashion.json nor raw_*.tsv"),
    (["download-images", "--annotations", "{d}/fashion.json", "--out", "{w}"],
     "fashion.json"),
    (["generate-data"], "missing --out"),
    (["trian"], "unknown command 'trian'"),
]


@pytest.mark.parametrize("args,message", MISTAKES,
                         ids=[" ".join(a[:1] + a[-1:]) for a, _ in MISTAKES])
def test_typical_mistake_is_one_line_and_touches_nothing(args, message, empty_dir, tmp_path):
  workdir = tmp_path / "not_created"
  fill = lambda s: s.format(w=workdir, d=empty_dir)
  before = _tree(tmp_path)
  result = _run(*map(fill, args))
  _assert_one_line_failure(result, fill(message))
  assert not workdir.exists()
  assert _tree(tmp_path) == before


def test_recommend_mistakes_on_a_trained_workdir(scene_workdir, stl_root, tmp_path):
  """Unknown category and a corrupt export, against a real checkpoint: one line each, and the
  workdir and the export are left as they were."""
  scene = next(iter(sorted((Path(stl_root) / "images").iterdir())))
  before = _tree(Path(scene_workdir))
  result = _run("recommend", "--workdir", scene_workdir, "--scene", scene, "--category",
                "Hats", "--out", tmp_path / "report")
  _assert_one_line_failure(result, "unknown category 'Hats'; valid categories: ")
  corrupt = tmp_path / "export"
  shutil.copytree(Path(scene_workdir) / "export", corrupt)
  (corrupt / "manifest.json").write_text('{"format_version": ')
  result = _run("recommend", "--workdir", scene_workdir, "--scene", scene, "--embeddings",
                corrupt, "--out", tmp_path / "report")
  _assert_one_line_failure(result, f"{corrupt}/manifest.json: unreadable export manifest")
  manifest = json.loads((Path(scene_workdir) / "export" / "manifest.json").read_text())
  (corrupt / "manifest.json").write_text(json.dumps(manifest))
  first = next(c for c in manifest["categories"].values() if c["count"])
  (corrupt / first["file"]).write_bytes(b"not a numpy file")
  result = _run("recommend", "--workdir", scene_workdir, "--scene", scene, "--embeddings",
                corrupt, "--out", tmp_path / "report", "-k", "3")
  _assert_one_line_failure(result, "unreadable embeddings")
  assert not (tmp_path / "report").exists()
  assert _tree(Path(scene_workdir)) == before
