"""A real JWKS server on 127.0.0.1, in a thread, with switchable (hostile) modes."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

MODES = (
    "ok",
    "500",
    "html",
    "hang",
    "drip",
    "huge",
    "nested",
    "redirect",
    "wrong_types",
    "private_key",
    "too_many_keys",
    "not_utf8",
)


class JWKSServer:
    """Serves ``document`` at ``/jwks`` as ``mode`` says; counts requests in ``hits``."""

    def __init__(self, document: dict[str, Any] | None = None) -> None:
        self.document: dict[str, Any] = document or {"keys": []}
        self.mode = "ok"
        self.delay = 0.0  # seconds before answering in "ok" mode (to widen races)
        self.hits = 0
        self.paths: list[str] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                with server._lock:
                    server.hits += 1
                    server.paths.append(self.path)
                server.answer(self)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.httpd.handle_error = lambda request, address: None  # type: ignore[method-assign]
        self._thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host!s}:{port}/jwks"

    def set(self, mode: str, document: dict[str, Any] | None = None) -> None:
        assert mode in MODES
        if document is not None:
            self.document = document
        self.mode = mode

    def answer(self, handler: BaseHTTPRequestHandler) -> None:
        mode = self.mode
        if mode == "ok":
            if self.delay:
                self._stop.wait(self.delay)
            self._send(handler, 200, json.dumps(self.document).encode())
        elif mode == "500":
            self._send(handler, 500, b'{"error": "down"}')
        elif mode == "html":
            self._send(handler, 200, b"<html><body>Sign in</body></html>", "text/html")
        elif mode == "hang":
            self._stop.wait(10)  # until the test ends
        elif mode == "drip":
            body = json.dumps(self.document).encode()
            handler.send_response(200)
            handler.send_header("Content-Length", str(len(body)))
            handler.end_headers()
            for byte in body:
                if self._stop.wait(0.05):
                    return
                handler.wfile.write(bytes([byte]))
                handler.wfile.flush()
        elif mode == "huge":  # no Content-Length: only reading it shows the size
            handler.send_response(200)
            handler.send_header("Content-Type", "application/json")
            handler.end_headers()
            handler.wfile.write(b'{"keys": [], "padding": "')
            chunk = b"x" * 65536
            for _ in range(64):  # 4 MiB
                handler.wfile.write(chunk)
        elif mode == "nested":
            depth = 100_000
            self._send(handler, 200, b'{"keys": ' + b"[" * depth + b"]" * depth + b"}")
        elif mode == "redirect":
            handler.send_response(302)
            handler.send_header("Location", "/elsewhere")
            handler.send_header("Content-Length", "0")
            handler.end_headers()
        elif mode == "wrong_types":
            self._send(handler, 200, b'{"keys": "all of them"}')
        elif mode == "private_key":
            keys = [dict(key, d="AQAB") for key in self.document["keys"]]
            self._send(handler, 200, json.dumps({"keys": keys}).encode())
        elif mode == "too_many_keys":
            keys = [{"kty": "RSA", "kid": f"k{i}", "n": "AQAB", "e": "AQAB"} for i in range(1000)]
            self._send(handler, 200, json.dumps({"keys": keys}).encode())
        elif mode == "not_utf8":
            self._send(handler, 200, b'{"keys": ["\xff\xfe"]}')

    @staticmethod
    def _send(
        handler: BaseHTTPRequestHandler,
        status: int,
        body: bytes,
        content_type: str = "application/json",
    ) -> None:
        handler.send_response(status)
        handler.send_header("Content-Type", content_type)
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        handler.wfile.write(body)

    def wait_for_hits(self, count: int, timeout: float = 5.0) -> bool:
        deadline = time.monotonic() + timeout
        while self.hits < count:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.01)
        return True

    def close(self) -> None:
        self._stop.set()
        self.httpd.shutdown()
        self.httpd.server_close()
        self._thread.join(5)
