"""Worker logs: one line per event, as text or JSON (`farm worker --log-format json`), each
carrying the worker's name and, where there is one, the job and batch ids."""

from __future__ import annotations

import json
import logging
import sys
import time

FIELDS = ("job", "batch", "jobs")


class JsonFormatter(logging.Formatter):
    def __init__(self, worker: str):
        super().__init__()
        self.worker = worker

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(), "logger": record.name, "worker": self.worker,
            "message": record.getMessage(),
        }
        for field in FIELDS:
            if hasattr(record, field):
                entry[field] = getattr(record, field)
        if record.exc_info:
            entry["error"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class TextFormatter(logging.Formatter):
    def __init__(self, worker: str):
        super().__init__("%(asctime)s %(levelname)s %(name)s [" + worker + "] %(message)s%(ids)s")

    def format(self, record: logging.LogRecord) -> str:
        ids = " ".join(f"{f}={getattr(record, f)}" for f in FIELDS if hasattr(record, f))
        record.ids = f" ({ids})" if ids else ""
        return super().format(record)


def configure(worker: str, fmt: str = "text", level: str = "INFO") -> None:
    """``fmt``: "text" or "json" (the worker's settings say which)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(worker) if fmt == "json" else TextFormatter(worker))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
