"""``maclcore``: one command, a subcommand per stage. Each subcommand only parses and calls the API."""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys
import threading
import traceback
from typing import Any, Iterator, List, NoReturn, Optional, Sequence

from .. import __version__
from ..errors import MaclError, Stopped
from ..runtime.progress import Reporter, make_reporter
from ..runtime.device import is_out_of_memory
from . import cache, demo, evaluate, finetune, predict, pretrain, suggest
from .options import flag_name

COMMANDS = (pretrain, finetune, predict, evaluate, suggest, demo, cache)
EXIT_ERROR, EXIT_INTERRUPTED = 1, 130


class UsageError(Exception):
    """An option argparse rejected, raised instead of exiting so that :func:`main` can report it first."""

    def __init__(self, parser: argparse.ArgumentParser, message: str) -> None:
        super().__init__(message)
        self.parser, self.message = parser, message


class CommandParser(argparse.ArgumentParser):
    """argparse's parser (subcommands inherit its class), whose usage errors reach :func:`main`: a program
    reading ``--progress json`` then gets an ``error`` event, not only text on stderr."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(self, message)


def requested_progress(argv: Sequence[str]) -> str:
    """The ``--progress`` value in raw arguments (the last one given), for errors before they are parsed."""
    kind = "bar"
    for index, argument in enumerate(argv):
        if argument == "--progress" and index + 1 < len(argv):
            kind = argv[index + 1]
        elif argument.startswith("--progress="):
            kind = argument.split("=", 1)[1]
    return kind


def common_options(parser: argparse.ArgumentParser, device: bool = True) -> None:
    """Options every subcommand has."""
    if device:
        parser.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda or cuda:N "
                                                             "(default: auto)")
    parser.add_argument("--progress", choices=("bar", "json", "none"), default="bar",
                        help="bar: a progress bar for people; json: one JSON object per line on stdout for "
                             "programs such as the Slicer module; none: quiet (default: bar)")
    parser.add_argument("--debug", action="store_true", help="show Python tracebacks of errors")


def build_parser() -> argparse.ArgumentParser:
    parser = CommandParser(
        prog="maclcore",
        description="Label-efficient cardiac segmentation: MACL self-supervised pretraining on unlabelled "
                    "volumes, U-Net finetuning on a few labelled ones, prediction and evaluation.")
    parser.add_argument("--version", action="version", version=f"maclcore {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for command in COMMANDS:
        sub = command.add_parser(subparsers)
        common_options(sub, device=command not in (evaluate, cache))
        sub.set_defaults(run=command.run)
    return parser


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


@contextlib.contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    """SIGTERM (how a GUI cancels a job) unwinds like Ctrl-C: temp files are removed and the exit code is 130.
    Training replaces this with its polite stop (finish the step, save) while it runs."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    raw = list(sys.argv[1:] if argv is None else argv)
    try:
        args = parser.parse_args(raw)
    except UsageError as exc:
        if requested_progress(raw) == "json":
            make_reporter("json").error(f"{exc.parser.prog}: {exc.message}")
        exc.parser.print_usage(sys.stderr)
        exc.parser.exit(2, f"{exc.parser.prog}: error: {exc.message}\n")
    reporter: Reporter = make_reporter(args.progress)
    prog = f"maclcore {args.command}"
    try:
        with terminate_as_interrupt():
            return int(args.run(args, reporter) or 0)
    except Stopped as exc:  # training, prediction or ranking stopped on request
        reporter.close()
        reporter.message(exc.render(flag_name))
        print(f"{prog}: {exc.render(flag_name)}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except KeyboardInterrupt:
        reporter.error("interrupted")
        print(f"{prog}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:
        message = error_message(exc)
        reporter.error(message)
        if args.debug:
            traceback.print_exc()
        print(f"{prog}: error: {message}", file=sys.stderr)
        return EXIT_ERROR
    finally:
        reporter.close()


def error_message(exc: Exception) -> str:
    """One line for any failure: the user's to fix (MaclError), the system's (files, memory), or a bug."""
    if isinstance(exc, MaclError):
        return exc.render(flag_name)
    if isinstance(exc, MemoryError) or is_out_of_memory(exc):
        on_gpu = "cuda" in str(exc).lower() or type(exc).__name__ == "OutOfMemoryError"
        return ("out of memory on the GPU; use a smaller --batch-size, fewer or smaller volumes, or --device cpu"
                if on_gpu else "out of memory; use a smaller --batch-size, fewer or smaller volumes, or close other "
                               "programs")
    if isinstance(exc, OSError):  # disk full, permission denied on an output, ...: name the file
        return f"{exc.filename}: {exc.strerror}" if exc.filename else str(exc)
    detail = (str(exc).strip().splitlines() or [""])[0][:200]
    return f"unexpected {type(exc).__name__}: {detail} (please report it; --debug shows where it happened)"
