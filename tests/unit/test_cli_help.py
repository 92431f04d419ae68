"""The CLI explains itself: every option has a help text that states its default, no raw markup, every command is in
one group of the top-level help and in the README's command table."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest

from expnet_stream.cli.help import COMMAND_GROUPS, HelpFormatter, iter_parsers
from expnet_stream.cli.main import build_parser, main

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]


def _commands() -> list[tuple[str, argparse.ArgumentParser]]:
    return list(iter_parsers(build_parser()))


def test_every_option_has_help_and_a_default() -> None:
    problems = []
    for path, parser in _commands():
        for action in parser._actions:
            if isinstance(action, argparse._HelpAction | argparse._SubParsersAction):
                continue
            name = "/".join(action.option_strings) or action.dest
            text = action.help or ""
            if not text.strip():
                problems.append(f"{path} {name}: no help")
                continue
            if "``" in text:
                problems.append(f"{path} {name}: raw markup in help")
            # an option whose default is None must say what happens without it; the formatter shows other defaults
            optional = bool(action.option_strings) and not action.required and action.nargs != 0
            if optional and action.default is None and "default" not in text.lower():
                problems.append(f"{path} {name}: default None not explained")
        for text in (parser.description or "", parser.epilog or ""):
            if "``" in text:
                problems.append(f"{path}: raw markup in description/epilog")
    assert not problems, "\n".join(problems)


def test_defaults_shown_in_help(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["ingest", "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "(default: 1)" in out  # --loop
    assert "exit status:" in out  # the epilog keeps its layout
    assert all(p.formatter_class is HelpFormatter for _, p in _commands())


def test_top_level_help_groups_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    top = [path for path, _ in _commands() if " " not in path]
    grouped = [c for names in COMMAND_GROUPS.values() for c in names]
    assert sorted(grouped) == sorted(top), "every command in exactly one group"
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    for title, names in COMMAND_GROUPS.items():
        block = out.split(f"\n{title}:\n", 1)[1].split("\n\n", 1)[0]
        assert [line.split()[0] for line in block.splitlines()] == list(names)


def test_readme_table_lists_every_command() -> None:
    readme = (ROOT / "README.md").read_text()
    table = readme.split("## The command", 1)[1].split("\n## ", 1)[0]
    listed = set(re.findall(r"`expnet-stream ([a-z-]+)", table)) | set(re.findall(r"/ `([a-z-]+)`", table))
    top = {path for path, _ in _commands() if " " not in path}
    assert top - listed == set(), f"missing from the README table: {sorted(top - listed)}"
