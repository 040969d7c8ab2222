"""A local HTTP image server with scripted failures, for the downloader's tests and benchmark.

It answers `/<anything>/<sig>.jpg` in the published URL layout. Each signature has a behaviour:
  "ok"         200 with the image bytes
  403, 404...  that HTTP status (an int)
  "flaky"      500 on the first request, then the image
  "slow"       waits `slow_seconds` before answering (longer than the client's timeout)
  "truncated"  announces the full Content-Length, sends half the bytes and closes
  "corrupt"    200 with a complete body that is half a JPEG (length matches)
Requests per signature are counted, so tests can tell a skipped download from a repeated one.
"""

from __future__ import annotations

import collections
import http.server
import os
import threading
import time


class ImageServer:
  """`with ImageServer(images, behaviours) as server:` serves on 127.0.0.1:<free port>."""

  def __init__(self, images: dict[str, bytes], behaviours: dict[str, object] | None = None,
               slow_seconds: float = 2.0):
    self.images = images
    self.behaviours = behaviours or {}
    self.slow_seconds = slow_seconds
    self.requests: collections.Counter[str] = collections.Counter()
    self._lock = threading.Lock()
    server = self

    class Handler(http.server.BaseHTTPRequestHandler):
      protocol_version = "HTTP/1.1"  # keep-alive, as real image CDNs
      # Headers and body go out as separate writes: without this, Nagle's algorithm and the
      # client's delayed ACK add ~40 ms to every response on a kept-alive connection.
      disable_nagle_algorithm = True

      def log_message(self, *args):  # keep test output clean
        pass

      def do_GET(self):
        sig = os.path.splitext(self.path.rsplit("/", 1)[-1])[0]
        with server._lock:
          server.requests[sig] += 1
          count = server.requests[sig]
        try:
          server._answer(self, sig, count)
        except (BrokenPipeError, ConnectionResetError):
          pass  # the client gave up (timeout): nothing to do

    self._httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    self._httpd.daemon_threads = True
    self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

  @property
  def base_url(self) -> str:
    host, port = self._httpd.server_address[:2]
    return f"http://{host}:{port}/400x"

  def _answer(self, handler, sig: str, count: int) -> None:
    behaviour = self.behaviours.get(sig, "ok")
    data = self.images.get(sig)
    if data is None:
      behaviour = 404
    if behaviour == "flaky":
      behaviour = 500 if count == 1 else "ok"
    if behaviour == "slow":
      time.sleep(self.slow_seconds)
      behaviour = "ok"
    if isinstance(behaviour, int):
      body = f"status {behaviour}\n".encode()
      handler.send_response(behaviour)
      handler.send_header("Content-Type", "text/plain")
      handler.send_header("Content-Length", str(len(body)))
      handler.end_headers()
      handler.wfile.write(body)
      return
    length = len(data)
    if behaviour == "corrupt":
      data = data[:len(data) // 2]
      length = len(data)
    elif behaviour == "truncated":
      data = data[:len(data) // 2]
      handler.close_connection = True
    handler.send_response(200)
    handler.send_header("Content-Type", "image/jpeg")
    handler.send_header("Content-Length", str(length))
    handler.end_headers()
    handler.wfile.write(data)
    handler.wfile.flush()

  def __enter__(self) -> ImageServer:
    self._thread.start()
    return self

  def __exit__(self, *exc) -> None:
    self._httpd.shutdown()
    self._httpd.server_close()
    self._thread.join()
