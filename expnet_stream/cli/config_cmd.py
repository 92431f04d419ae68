"""``expnet-stream config show``: the effective settings, secrets masked, each value with where it came from."""

from __future__ import annotations

import argparse

from .common import BOOTSTRAP_HELP, CONFIG_HELP, kafka_overrides


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``config`` command (and its ``show`` subcommand) to the ``expnet-stream`` parser."""
    s = subparsers.add_parser("config", help="the effective settings and where each value came from")
    cs = s.add_subparsers(dest="config_command", required=True, metavar="SUBCOMMAND", help="show")
    c = cs.add_parser(
        "show",
        help="print the effective settings (secrets masked), each value with its source",
        description="Print the effective worker settings as YAML, secrets masked. Each value says where it came "
        "from: 'default' (packaged with expnet-stream), the YAML file, an EXPNET_... environment variable, or a "
        "command-line option. Precedence, highest first: command line, environment, file, defaults.",
    )
    c.add_argument("--config", default=None, help=CONFIG_HELP)
    c.add_argument("--bootstrap", help=BOOTSTRAP_HELP)
    c.add_argument("--plain", action="store_true", help="YAML without the source comments")
    c.set_defaults(func=cmd_config_show)


def cmd_config_show(args: argparse.Namespace) -> int:
    import yaml

    from ..config.settings import load_settings, setting_sources, settings_yaml_with_sources

    overrides = kafka_overrides(args)
    settings = load_settings(args.config, overrides)
    if args.plain:
        print(yaml.safe_dump(settings.masked(), sort_keys=False))
    else:
        print(settings_yaml_with_sources(settings, setting_sources(args.config, overrides, settings=settings)), end="")
    return 0
