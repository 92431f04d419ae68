"""Logging setup for the CLI (library code never configures handlers)."""

from __future__ import annotations

import json
import logging
import os
import sys
import time


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        data = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            data["exc"] = self.formatException(record.exc_info)
        return json.dumps(data)


def setup_logging(level: str = "warning", json_lines: bool = False) -> None:
    """Configure the root logger. ``EXPNET_LOG`` = ``"info,expnet_stream.worker=debug"`` sets per-module levels."""
    spec = os.environ.get("EXPNET_LOG", level)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        JsonFormatter() if json_lines else logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    for part in filter(None, (p.strip() for p in spec.split(","))):
        if "=" in part:
            name, _, lvl = part.partition("=")
            logging.getLogger(name.strip()).setLevel(lvl.strip().upper())
        else:
            root.setLevel(part.upper())
    # kafka-python is chatty at INFO
    if logging.getLogger("kafka").level == logging.NOTSET:
        logging.getLogger("kafka").setLevel(logging.WARNING)
