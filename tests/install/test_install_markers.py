"""pyproject's platform markers: one TensorFlow wheel per platform we support, and the extras and
console script the README documents."""

import pathlib

import pytest
from packaging.requirements import Requirement

tomllib = pytest.importorskip("tomllib")  # Python 3.11+

PYPROJECT = pathlib.Path(__file__).resolve().parents[2] / "pyproject.toml"
PLATFORMS = {  # PEP 508 environment of each platform the README's install section names
    "linux x86-64": {"sys_platform": "linux", "platform_machine": "x86_64"},
    "linux arm64": {"sys_platform": "linux", "platform_machine": "aarch64"},
    "macos arm64": {"sys_platform": "darwin", "platform_machine": "arm64"},
}
EXPECTED_TF = {"linux x86-64": "tensorflow-cpu", "linux arm64": "tensorflow",
               "macos arm64": "tensorflow"}


def _project():
  return tomllib.loads(PYPROJECT.read_text())["project"]


@pytest.mark.parametrize("platform", list(PLATFORMS))
def test_one_tensorflow_per_platform(platform):
  env = {"python_version": "3.11", "python_full_version": "3.11.7", "os_name": "posix",
         "implementation_name": "cpython", "platform_system": "", **PLATFORMS[platform]}
  chosen = []
  for text in _project()["dependencies"]:
    req = Requirement(text)
    if req.name.startswith("tensorflow") and req.name not in ("tensorflow-datasets",):
      if req.marker is None or req.marker.evaluate(env):
        chosen.append(req.name)
  assert chosen == [EXPECTED_TF[platform]]


def test_accelerator_extras_and_console_script():
  project = _project()
  extras = project["optional-dependencies"]
  assert any(Requirement(r).name == "jax" and "cuda12" in Requirement(r).extras
             for r in extras["cuda"])
  assert any(Requirement(r).name == "jax" and "tpu" in Requirement(r).extras
             for r in extras["tpu"])
  assert project["scripts"]["ctl-jax"] == "ctl_jax.cli:run"
