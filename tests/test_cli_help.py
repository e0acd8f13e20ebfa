"""Every ``zeroshot ... --help`` documents every option and shows its default; ``--output`` is the one spelling of an
output (``--out`` stays a hidden alias for one release); the README names exactly the commands taking the model
options."""
from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest

from zeroshot.cli import build_parser

README = Path(__file__).resolve().parents[1] / "README.md"


def subcommands(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()):
    """(command words, parser) of every sub-command that runs something, nested ones (``ood fit``) included."""
    groups = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not groups:
        yield path, parser
    for group in groups:
        for name, sub in group.choices.items():
            yield from subcommands(sub, (*path, name))


COMMANDS = dict(subcommands(build_parser()))


def options(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    """The options ``--help`` lists (not -h/--help, not hidden ones)."""
    return [a for a in parser._actions if a.option_strings and a.help is not argparse.SUPPRESS
            and not isinstance(a, argparse._HelpAction)]


def help_of(parser: argparse.ArgumentParser, action: argparse.Action) -> str:
    """The option's help text as ``--help`` renders it (its default appended), without the option's name and
    metavar (which list the choices), and without whitespace (a long default wraps at its hyphens)."""
    return "".join(parser._get_formatter()._expand_help(action).split())


def test_the_walk_finds_nested_commands():
    assert {("ood", "fit"), ("index", "build"), ("concepts", "count"), ("cache", "prune"), ("eval",)} <= set(COMMANDS)


@pytest.mark.parametrize("path", list(COMMANDS), ids=" ".join)
def test_every_option_has_help_and_shows_its_default(path):
    parser = COMMANDS[path]
    parser.format_help()  # renders (a stray % in a help string would raise here)
    for action in options(parser):
        name = "/".join(action.option_strings)
        assert action.help and action.help.strip(), f"zeroshot {' '.join(path)} {name} has no help line"
        if action.default is not None and action.default is not False and action.default is not argparse.SUPPRESS:
            entry = help_of(parser, action)
            assert "default" in entry and "".join(str(action.default).split()) in entry, \
                f"zeroshot {' '.join(path)} {name}: --help does not show its default {action.default!r}: {entry}"


def test_every_sub_command_has_a_help_line():
    parsers = [build_parser(), *(p for p in COMMANDS.values())]
    for parser in parsers:
        for group in (a for a in parser._actions if isinstance(a, argparse._SubParsersAction)):
            for choice in group._choices_actions:
                assert choice.help, f"sub-command {choice.dest} has no help line"


@pytest.mark.parametrize("path", list(COMMANDS), ids=" ".join)
def test_output_is_the_one_spelling(path):
    parser = COMMANDS[path]
    shown = [s for a in options(parser) for s in a.option_strings]
    assert "--out" not in shown and not re.search(r"--out\b(?!put)", parser.format_help())
    hidden = [a for a in parser._actions if "--out" in a.option_strings]
    assert all(a.dest == "output" and a.help is argparse.SUPPRESS for a in hidden)


def test_out_is_still_accepted_and_hidden():
    args = build_parser().parse_args(["ood", "fit", "--detector", "mcm", "--card", "cifar10", "--out", "det"])
    assert args.output == "det"
    assert "--out " not in COMMANDS[("ood", "fit")].format_help()


def test_output_and_out_together_are_refused(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["distill", "--data", "x", "--output", "a", "--out", "b"])
    assert "not allowed with" in capsys.readouterr().err


def test_readme_names_the_commands_that_take_the_model_options():
    text = " ".join(README.read_text().split())
    sentence = re.search(r"Every command that runs a model \((.*?)\) takes (.*?)\.", text)
    assert sentence, "README: the sentence naming the commands that take --decode/--workers is missing"
    named = {tuple(c.split()) for c in re.findall(r"`([^`]+)`", sentence[1])}
    with_model_options = {path for path, p in COMMANDS.items() if "--decode" in p._option_string_actions}
    assert named == with_model_options
    for option in re.findall(r"`(--[a-z-]+)`", sentence[2]):
        assert all(option in COMMANDS[path]._option_string_actions for path in named), option
