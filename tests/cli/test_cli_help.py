"""Every ``ntpy`` option, argument and command has help text (issue 11, newcomer 8).

Walks the real parser, so a new argument without ``help=`` fails here rather than showing
up as a blank line in ``--help``.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator

from ntpy.cli.main import build_parser


def _walk(parser: argparse.ArgumentParser, name: str) -> Iterator[tuple[str, argparse.Action]]:
    for action in parser._actions:
        yield name, action
        if isinstance(action, argparse._SubParsersAction):
            for sub_name, sub in action.choices.items():
                yield from _walk(sub, f"{name} {sub_name}")
            for choice in action._choices_actions:  # the COMMAND list in 'ntpy --help'
                yield f"{name} {choice.dest}", choice


def _label(action: argparse.Action) -> str:
    return "/".join(action.option_strings) or str(action.metavar or action.dest)


def test_every_argument_has_help() -> None:
    missing = [
        f"{where}: {_label(action)}"
        for where, action in _walk(build_parser(), "ntpy")
        if action.help is not argparse.SUPPRESS and not (action.help or "").strip()
    ]
    assert missing == []


def test_the_reported_ones_say_something_useful() -> None:
    parser = build_parser()
    text = {
        cmd: sub.format_help()
        for cmd, sub in next(
            a for a in parser._actions if isinstance(a, argparse._SubParsersAction)
        ).choices.items()
    }
    assert "--log-level" in text["serve"] and "default info" in text["serve"]
    assert "the ntp.conf to check" in text["check-config"]
    assert "NTP version" in text["query"]
