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


class _KafkaAtDebug(logging.Filter):
    """kafka-python logs every connection retry as a warning or error: shown as debug records (so only at debug
    level), unless -v or an explicit ``kafka=LEVEL`` in ``EXPNET_LOG``. Critical records pass unchanged."""

    def filter(self, record: logging.LogRecord) -> bool:
        if (record.name == "kafka" or record.name.startswith("kafka.")) and record.levelno < logging.CRITICAL:
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
            return logging.getLogger().getEffectiveLevel() <= logging.DEBUG
        return True


def setup_logging(level: str = "warning", json_lines: bool = False, verbose: bool = False) -> None:
    """Configure the root logger. ``EXPNET_LOG`` = ``"info,expnet_stream.worker=debug"`` sets per-module levels;
    ``verbose`` (-v) logs at info level at least, kafka-python's own records as they are."""
    spec = os.environ.get("EXPNET_LOG", level)
    if verbose and logging.getLevelName(spec.split(",")[0].strip().upper()) not in ("DEBUG", logging.DEBUG):
        spec = ",".join(["info", *(p for p in spec.split(",") if "=" in p)])
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
    kafka = logging.getLogger("kafka")
    if kafka.level == logging.NOTSET:  # not set in EXPNET_LOG
        kafka.setLevel(logging.INFO if verbose else logging.WARNING)  # kafka-python is chatty at INFO
        if not verbose:
            handler.addFilter(_KafkaAtDebug())
