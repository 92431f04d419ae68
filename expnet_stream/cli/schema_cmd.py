"""``expnet-stream schema``: write the JSON Schemas of every event (the package's ``events/schemas`` by default), or
``--check`` that the written ones are current."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``schema`` command to the ``expnet-stream`` parser."""
    s = subparsers.add_parser("schema", help="write (or --check) the JSON Schemas of every event")
    s.add_argument("--out", default=None, help="folder to write to (default: the package's events/schemas)")
    s.add_argument("--check", action="store_true", help="write nothing; exit 1 when a schema file is stale")
    s.set_defaults(func=cmd_schema)


def cmd_schema(args: argparse.Namespace) -> int:
    from ..events.codec import SCHEMA_DIR, json_schemas, write_json_schemas

    directory = Path(args.out) if args.out else SCHEMA_DIR
    if args.check:
        stale = [
            n
            for n, s in json_schemas().items()
            if not (directory / n).is_file() or json.loads((directory / n).read_text()) != s
        ]
        if stale:
            print(f"stale JSON schemas in {directory}: {stale}; run `expnet-stream schema`", file=sys.stderr)
            return 1
        return 0
    for p in write_json_schemas(directory):
        print(p)
    return 0
