"""What several commands share: the help texts of ``--config`` and ``--bootstrap``, and the settings overrides
``--bootstrap`` makes."""

from __future__ import annotations

import argparse
from typing import Any

CONFIG_HELP = "worker settings YAML (default: the settings packaged with expnet-stream)"
BOOTSTRAP_HELP = "Kafka bootstrap servers, host:port[,host:port] (default: kafka.bootstrap of the settings)"


def kafka_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """Settings overrides of the command line: ``--bootstrap`` (when given) as ``kafka.bootstrap``."""
    over: dict[str, Any] = {}
    if getattr(args, "bootstrap", None):
        over.setdefault("kafka", {})["bootstrap"] = args.bootstrap
    return over
