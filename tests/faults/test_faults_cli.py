"""Command-line arguments out of range, and category names with commas, through `run.py` itself:
a bad argument is one error line naming the flag, exit 1, nothing created."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from ctl_jax.serving import engine
from ctl_jax.serving.errors import UnknownCategoryError

ROOT = Path(__file__).resolve().parents[2]


def _run(*args, timeout=300):
  return subprocess.run([sys.executable, "run.py", *args], cwd=ROOT, capture_output=True,
                        text=True, timeout=timeout, env={**os.environ, "JAX_PLATFORMS": "cpu"})


# (arguments, text of the error); {out} is a folder that must not be created
CASES = [
    (["generate-data", "--out", "{out}", "--scenes", "0"], "--scenes=0: 0 is not a positive"),
    (["generate-data", "--out", "{out}", "--format", "ctl", "--outfits", "-3"],
     "--outfits=-3: -3 is not a positive"),
    (["generate-data", "--out", "{out}", "--reuse", "0.5"], "--reuse=0.5"),
    (["recommend", "--workdir", "{out}", "--scene", "x.jpg", "--quota", "-2"],
     "--quota=-2: -2 is not a non-negative"),
    (["recommend", "--workdir", "{out}", "--scene", "x.jpg", "-k", "0"], "--k=0"),
    (["download-images", "--annotations", "fashion.json", "--out", "{out}", "--workers", "0"],
     "--workers=0"),
    (["inspect-data", "--root", "{out}"], "no fashion.json nor raw_*.tsv; pass --format"),
    (["train"], "missing --config, --workdir"),
    (["no-such-command"], "usage: run.py"),
]


@pytest.mark.parametrize("args,message", CASES, ids=[" ".join(c[0][:1] + c[0][-2:]) for c in CASES])
def test_bad_argument_is_one_line(args, message, tmp_path):
  out = tmp_path / "out"
  result = _run(*[a.format(out=out) for a in args], timeout=60)
  assert result.returncode == 1
  assert message in result.stderr and "Traceback" not in result.stderr, result.stderr[-2000:]
  assert not out.exists()


def test_category_names_with_commas_are_kept_whole(scene_workdir, stl_root):
  """`--category "Handbags, Wallets & Cases"` used to be split at the comma (absl list flag)."""
  name = "Handbags, Wallets & Cases"
  image = str(next(Path(stl_root).glob("images/**/*.jpg")))
  result = _run("recommend", f"--workdir={scene_workdir}", f"--scene={image}",
                f"--category={name}", "-k", "3", f"--out={scene_workdir}/one_category")
  assert result.returncode == 0, result.stderr[-2000:]
  rows = [line for line in result.stdout.splitlines() if line.strip()[:1].isdigit()]
  assert len(rows) == 3 and all(name in row for row in rows), result.stdout


def test_category_values_resolve_names_lists_and_unknowns():
  known = ["Shoes", "Handbags, Wallets & Cases", "Pants"]
  resolve = engine.resolve_categories
  assert resolve(["Handbags, Wallets & Cases"], known) == ["Handbags, Wallets & Cases"]
  assert resolve(["Shoes,Pants", "Shoes"], known) == ["Shoes", "Pants"]  # lists, no repeats
  assert resolve([], known) == [] and resolve(None, known) == []
  with pytest.raises(UnknownCategoryError, match="unknown category 'Handbags'.*one --category"):
    resolve(["Handbags"], known)
  with pytest.raises(UnknownCategoryError, match="unknown category 'Shoes, Hats'"):
    resolve(["Shoes, Hats"], known)
