"""A real local webhook receiver for the tests and bench/events.py: an HTTP server on a free
loopback port that records every POST (its headers, body and arrival time) and can be told to
fail (answer 503) or be stopped and started again on the same port."""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from tests import servers


class Receiver:
    def __init__(self, port: int | None = None):
        self.port = port or servers.free_port()
        self.url = f"http://127.0.0.1:{self.port}/hook"
        self.received: list[dict] = []
        self.failing = False
        self.lock = threading.Lock()
        self.server: ThreadingHTTPServer | None = None

    def start(self) -> "Receiver":
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if receiver.failing:
                    self.send_response(503)
                    self.end_headers()
                    return
                with receiver.lock:
                    receiver.received.append({"headers": {k.lower(): v for k, v in self.headers.items()},
                                              "body": body, "at": time.time()})
                self.send_response(204)
                self.end_headers()

            def log_message(self, *_args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None

    def messages(self) -> list[dict]:
        with self.lock:
            return list(self.received)
