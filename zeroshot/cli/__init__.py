"""``zeroshot`` command line: a thin layer over the Python API, one module per verb group."""
from __future__ import annotations

import argparse
import sys

from . import classify, distill, fewshot, ood, retrieval

VERB_GROUPS = (classify, fewshot, ood, retrieval, distill)  # each adds its sub-commands: add_commands(sub)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="zeroshot", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for group in VERB_GROUPS:
        group.add_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except (ValueError, FileNotFoundError, TypeError) as exc:
        sys.exit(f"error: {exc}")
