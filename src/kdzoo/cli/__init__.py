"""The ``kdzoo`` command line. ``main(argv)`` returns the exit status, so tests can call it.

This package is the only place that builds argparse parsers: here the top-level parser, the
logging set-up and the command table; each command's parser and function in a module of its
own (``run``: train, eval, cache-teacher and the shared run options; ``zoo``: zoo, report,
plot; ``tune``; ``catalog``: list; ``teachers``; ``demo``; ``bench``). Nothing below imports it.

Exit status 0 on success, 2 for bad input: every user error is one line on stderr naming the
problem and the fix, without a traceback.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Sequence

from ..errors import KdzooError
from ..version import __version__
from .bench import add_bench_parser, cmd_bench
from .catalog import add_list_parser, cmd_list
from .demo import add_demo_parser, cmd_demo
from .run import (add_cache_parser, add_eval_parser, add_train_parser, cmd_cache_teacher,
                  cmd_eval, cmd_train)
from .teachers import add_teachers_parser, cmd_teachers
from .tune import add_tune_parser, cmd_tune
from .zoo import (add_plot_parser, add_report_parser, add_zoo_parser, cmd_plot, cmd_report,
                  cmd_zoo)

log = logging.getLogger("kdzoo")


class UsageError(KdzooError):
    """Bad command-line syntax (argparse's complaint, as one line)."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line instead of usage + message
        raise UsageError(f"{message} (see `{self.prog} --help`)")


COMMANDS = {"train": cmd_train, "eval": cmd_eval, "list": cmd_list, "demo": cmd_demo,
            "cache-teacher": cmd_cache_teacher, "bench": cmd_bench, "teachers": cmd_teachers,
            "zoo": cmd_zoo, "report": cmd_report, "plot": cmd_plot, "tune": cmd_tune}


def make_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="kdzoo", description="kdzoo: the knowledge-distillation zoo")
    parser.add_argument("--version", action="version", version=f"kdzoo {__version__}")
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for add in (add_train_parser, add_zoo_parser, add_tune_parser, add_report_parser,
                add_plot_parser,
                add_eval_parser, add_list_parser, add_demo_parser, add_cache_parser,
                add_bench_parser, add_teachers_parser):
        add(sub)
    return parser


class _StdoutHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stdout`` is now (it may be replaced, e.g. by test capture)."""

    def __init__(self) -> None:
        super().__init__(sys.stdout)

    @property  # type: ignore[override]
    def stream(self):  # noqa: ANN201
        return sys.stdout

    @stream.setter
    def stream(self, value) -> None:  # noqa: ANN001
        pass


def _setup_logging(quiet: bool) -> None:
    # --quiet silences the console only: the logger stays at INFO so that every run's log.txt
    # (a file handler added for the run) is complete.
    logger = logging.getLogger("kdzoo")
    logger.setLevel(logging.INFO)
    logger.propagate = False
    handler = next((h for h in logger.handlers if isinstance(h, _StdoutHandler)), None)
    if handler is None:
        handler = _StdoutHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
    handler.setLevel(logging.WARNING if quiet else logging.INFO)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the kdzoo command; returns the exit status (0 ok, 2 bad input)."""
    parser = make_parser()
    try:
        args = parser.parse_args(argv)
        if args.command is None:
            parser.print_help()
            return 2
        _setup_logging(args.quiet)
        return COMMANDS[args.command](args)
    except KdzooError as exc:
        print(f"kdzoo: error: {exc}", file=sys.stderr)
        return exc.exit_status
    except SystemExit as exc:  # --help and --version exit through argparse
        return int(exc.code or 0)
    except BrokenPipeError:  # the reader stopped early (`kdzoo list methods | head`)
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # no second error when Python flushes stdout
        return 0
    except KeyboardInterrupt:
        print("kdzoo: interrupted; resume the run with --resume", file=sys.stderr)
        return 130

