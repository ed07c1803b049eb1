"""Following a farm's event stream (``GET /v1/events``, Server-Sent Events) from a client: what
``farm status --watch`` and ``Farm.wait`` on a remote farm wake up on, instead of polling."""

from __future__ import annotations

import json
import threading
from typing import Iterator


def parse(lines: Iterator[str]) -> Iterator[dict]:
    """SSE lines -> events ({"id", "event", "data"}); a comment-only block yields {"comment": ...}."""
    block: dict = {}
    for raw in lines:
        line = raw.rstrip("\r")
        if not line:
            if block:
                yield block
            block = {}
            continue
        name, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if name == "":
            block.setdefault("comment", value)
        elif name == "data":
            block["data"] = block["data"] + "\n" + value if "data" in block else value
        elif name in ("id", "event", "retry"):
            block[name] = value
    if block:
        yield block


class Listener(threading.Thread):
    """Reads a batch's events in the background and sets ``moved`` on each (reconnecting with
    ``Last-Event-ID`` when the stream drops); ``connected`` is set once the stream is open, from
    which point nothing that happens is missed."""

    def __init__(self, http, batch: str | None):
        super().__init__(daemon=True, name="farm-events")
        self.http, self.batch = http, batch
        self.moved, self.connected, self.stopped = threading.Event(), threading.Event(), threading.Event()
        self.last_id: str | None = None
        self.events: list[dict] = []

    def run(self) -> None:
        while not self.stopped.is_set():
            headers = {"Accept": "text/event-stream"}
            if self.last_id is not None:
                headers["Last-Event-ID"] = self.last_id
            params = {"batch": self.batch} if self.batch else {}
            try:
                with self.http.stream("GET", "/v1/events", params=params, headers=headers,
                                      timeout=(10.0, 30.0)) as answer:
                    if answer.status_code != 200:
                        return  # an old server, a key without read: the caller's polling still works
                    for block in parse(answer.iter_lines()):
                        self.connected.set()
                        if "id" in block:
                            self.last_id = block["id"]
                            self.events.append({"id": int(block["id"]), "type": block.get("event"),
                                                **json.loads(block.get("data") or "{}")})
                            self.moved.set()
                        if self.stopped.is_set():
                            return
            except Exception:  # noqa: BLE001 - a dropped stream: reconnect after a breath
                self.stopped.wait(1.0)

    def wait_moved(self, timeout: float) -> None:
        self.moved.wait(timeout)
        self.moved.clear()

    def stop(self) -> None:
        self.stopped.set()
