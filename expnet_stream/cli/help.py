"""Help for people: every option shows its default, the top-level help lists commands by what they are for."""

from __future__ import annotations

import argparse
from collections.abc import Iterator

#: The top-level help's groups, in order. Every command is in exactly one (tests/unit/test_cli_help.py checks).
COMMAND_GROUPS: dict[str, tuple[str, ...]] = {
    "run it": ("demo", "ingest", "worker", "run", "tail", "view", "annotate", "timeline", "mesh"),
    "operate it": ("config", "schema", "build-engine", "engine-info"),
    "model": ("export-onnx", "import-official", "label", "select-basis", "choose-recipe", "train", "ship"),
    "evaluate": ("evaluate", "bench"),
}

EPILOG = """\
Run `expnet-stream COMMAND -h` for a command's options (each with its default).
Without --config every command uses the settings packaged with expnet-stream;
`expnet-stream config show` prints each effective value and where it came from."""


class HelpFormatter(argparse.HelpFormatter):
    """Wraps one-paragraph descriptions, keeps multi-line ones (epilogs, tables) as written, and appends
    "(default: X)" to an option's help when the default says something (not None or False) and the help does not
    already mention it."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        if "\n" in text.strip():
            return "".join(indent + line for line in text.splitlines(keepends=True))
        return super()._fill_text(text, width, indent)

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        default = action.default
        if (
            default is None
            or default is False
            or default is argparse.SUPPRESS
            or default == []
            or "default" in text.lower()
            or "%(default)" in text
            or action.nargs == 0  # store_true/store_const and -h
        ):
            return text
        return f"{text} (default: %(default)s)"


class TopLevelParser(argparse.ArgumentParser):
    """The ``expnet-stream`` parser: its help lists the commands in :data:`COMMAND_GROUPS`."""

    def format_help(self) -> str:
        formatter = self._get_formatter()
        formatter.add_usage(self.usage, self._actions, self._mutually_exclusive_groups)
        formatter.add_text(self.description)
        commands = _subcommands(self)
        width = max((len(n) for n in commands), default=0) + 2
        for title, names in COMMAND_GROUPS.items():
            formatter.start_section(title)
            formatter.add_text("\n".join(f"{n.ljust(width)}{commands[n]}" for n in names if n in commands))
            formatter.end_section()
        for group in self._action_groups:
            actions = [a for a in group._group_actions if not isinstance(a, argparse._SubParsersAction)]
            if not actions:
                continue
            formatter.start_section(group.title)
            formatter.add_arguments(actions)
            formatter.end_section()
        formatter.add_text(self.epilog)
        return formatter.format_help()


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, str]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return {a.dest: a.help or "" for a in action._choices_actions}
    return {}


def iter_parsers(parser: argparse.ArgumentParser, prefix: str = "") -> Iterator[tuple[str, argparse.ArgumentParser]]:
    """Every (sub)parser below ``parser`` with its command path, e.g. ``("config show", parser)``."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                path = f"{prefix} {name}".strip()
                yield path, sub
                yield from iter_parsers(sub, path)


def finish(parser: argparse.ArgumentParser) -> None:
    """Give every subcommand the defaults-showing formatter and its one-line help as description."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help for a in action._choices_actions}
            for name, sub in action.choices.items():
                sub.formatter_class = HelpFormatter
                # descriptions often come from module docstrings: show reST literals as `x`, not ``x``
                description = sub.description or helps.get(name)
                sub.description = description and description.replace("``", "`")
                sub.epilog = sub.epilog and sub.epilog.replace("``", "`")
                finish(sub)
