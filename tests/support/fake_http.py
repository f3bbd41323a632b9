"""A fake HTTP server on loopback that records every request's headers, then answers.

`with FakeHTTP("127.0.0.2") as web:` listens on that loopback address; `web.seen`
lists (method, path, headers) per request and `web.raw` every byte received. GET
and HEAD of `/file.txt` answer a small body; anything else is a 404. Used as the
"unlisted host" of the allow-list tests: whatever reaches it is recorded.
"""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

BODY = b"hello from the fake server\n"


class FakeHTTP:
    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.seen: list[tuple[str, str, dict[str, str]]] = []
        self.raw = bytearray()
        self.host = host
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def _record(self) -> None:
                headers = dict(self.headers.items())
                with owner._lock:
                    owner.seen.append((self.command, self.path, headers))
                    owner.raw += f"{self.requestline}\r\n{self.headers}".encode("utf-8", "replace")

            def _answer(self, body: bool) -> None:
                self._record()
                found = self.path.split("?", 1)[0] == "/file.txt"
                self.send_response(200 if found else 404)
                self.send_header("Content-Length", str(len(BODY) if found else 0))
                self.end_headers()
                if found and body:
                    self.wfile.write(BODY)

            def do_GET(self) -> None:
                self._answer(body=True)

            def do_HEAD(self) -> None:
                self._answer(body=False)

            def log_message(self, format: str, *args: Any) -> None:
                pass  # quiet: the records are the output

        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer((host, port), Handler)
        self._server.daemon_threads = True
        self.port: int = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def __enter__(self) -> FakeHTTP:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)
