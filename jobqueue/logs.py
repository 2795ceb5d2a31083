"""Logging for the service's processes: plain text, or one JSON object a line (``BDIA_LOG_FORMAT=json``).

A JSON line carries ``time``, ``level``, ``logger``, ``message``, and ``job_id`` / ``inversion_id``
whenever the message names one (or the record has them as ``extra``), so logs join with jobs.
"""

from __future__ import annotations

import json
import logging
import re
import time

from .settings import Settings

IDS = {"job_id": re.compile(r"\bjob_[0-9a-f]{24}\b"), "inversion_id": re.compile(r"\binv_[0-9a-f]{32}\b")}
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class JsonFormatter(logging.Formatter):
    """One JSON object per record."""

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        line = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": message,
        }
        for name, pattern in IDS.items():
            found = getattr(record, name, None) or (m.group(0) if (m := pattern.search(message)) else None)
            if found:
                line[name] = found
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False)


def configure_logging(settings: Settings) -> None:
    """Configure the root logger (and uvicorn's) from ``log_format`` and ``log_level``."""
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if settings.log_format == "json" else logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(settings.log_level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
