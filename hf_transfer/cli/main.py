"""The ``hf-transfer`` command: ``train``, ``plan`` (offline dry run), ``demo``, ``push``, ``rank`` (choose a
backbone), ``evaluate`` (score a classifier on a dataset), ``app`` (try a model in the browser), ``tta`` (adapt a
classifier online to a target's test split).

``hf-transfer train --config recipes/configs/x.yaml [--flag value ...]`` is the same run as
``accelerate launch recipes/train.py --config ...``; flags override the file.

Any error ends in one line naming what to fix and a non-zero exit (2: the input or options, 1: anything
else); ``--debug`` (or ``HF_TRANSFER_DEBUG=1``) shows the traceback instead, and ``--verbose`` (or
``HF_TRANSFER_VERBOSE=1``) keeps the library log lines the quiet default leaves out.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Callable

from hf_transfer.runtime.installation import conflict  # before any module that imports hf_transfer.errors


def _command(name: str) -> Callable[[list[str]], int]:
    """The sub-command's ``main`` (:mod:`hf_transfer.cli`.<name>), imported when it runs: ``hf-transfer --help``
    and a refused command start without torch."""

    def run(argv: list[str]) -> int:
        return importlib.import_module(f"hf_transfer.cli.{name}").main(argv)

    return run


COMMANDS = {name: _command(name) for name in ("train", "plan", "demo", "push", "rank", "evaluate", "app", "tta")}


def _take_debug_flag(argv: list[str]) -> tuple[list[str], bool]:
    """Our bare ``--debug`` (show tracebacks) out of ``argv``; ``--debug VALUE`` is the Trainer's own
    ``TrainingArguments.debug`` option (e.g. ``underflow_overflow``) and stays."""
    out, debug = [], False
    for i, arg in enumerate(argv):
        if arg == "--debug" and (i + 1 == len(argv) or argv[i + 1].startswith("--")):
            debug = True
        else:
            out.append(arg)
    return out, debug


def main(argv: list[str] | None = None) -> int:
    """Run the ``hf-transfer`` command named first in ``argv`` (the command line when None); returns its status."""
    problem = conflict(thorough=True)  # PyPI's hf-transfer shares our import name: nothing else can be trusted
    if problem:
        print(f"hf-transfer: error: {problem}", file=sys.stderr)
        return 2
    from hf_transfer.errors import TransferConfigError

    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        parser = argparse.ArgumentParser(
            prog="hf-transfer", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
        )
        parser.add_argument("command", choices=sorted(COMMANDS))
        if argv and argv[0] not in ("-h", "--help"):
            parser.error(f"unknown command {argv[0]!r}")
        parser.print_help()
        return 0 if argv else 2
    argv, debug = _take_debug_flag(argv)
    if "--verbose" in argv:  # every library's log lines and tables (the LOAD REPORT of a replaced head, ...)
        argv.remove("--verbose")
        os.environ["HF_TRANSFER_VERBOSE"] = "1"
    debug = debug or os.environ.get("HF_TRANSFER_DEBUG", "") not in ("", "0")
    try:
        return COMMANDS[argv[0]](argv[1:])
    except TransferConfigError as err:
        if debug:
            raise
        print(f"hf-transfer: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("hf-transfer: interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # one clear line; the traceback only when asked for
        if debug:
            raise
        first_line = (str(err).strip().splitlines() or [""])[0]
        print(
            f"hf-transfer: error: {type(err).__name__}: {first_line} (run again with --debug for the traceback)",
            file=sys.stderr,
        )
        return 1


if __name__ == "__main__":
    sys.exit(main())
