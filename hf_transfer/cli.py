"""The ``hf-transfer`` command: ``train``, ``plan`` (offline dry run), ``demo``, ``push``, ``rank`` (choose a
backbone), ``evaluate`` (score a classifier on a dataset).

``hf-transfer train --config recipes/configs/x.yaml [--flag value ...]`` is the same run as
``accelerate launch recipes/train.py --config ...``; flags override the file.

Any error ends in one line naming what to fix and a non-zero exit (2: the input or options, 1: anything
else); ``--debug`` (or ``HF_TRANSFER_DEBUG=1``) shows the traceback instead, and ``--verbose`` (or
``HF_TRANSFER_VERBOSE=1``) keeps the library log lines the quiet default leaves out.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from hf_transfer.runtime.installation import conflict  # before any module that imports hf_transfer.errors


def _setup_logging(training_args=None) -> None:
    import datasets
    import transformers

    from hf_transfer.runtime.logs import quiet_unactionable_logs

    level = logging.INFO
    if training_args is not None and not training_args.should_log:
        level = logging.WARNING
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=level, force=True)
    transformers.utils.logging.set_verbosity_warning()
    datasets.utils.logging.set_verbosity_warning()
    quiet_unactionable_logs()


def cmd_train(argv: list[str]) -> int:
    from hf_transfer.config import parse_args
    from hf_transfer.training.run import run_transfer, summarize

    transfer_args, training_args = parse_args(argv)
    _setup_logging(training_args)
    results = run_transfer(transfer_args, training_args)
    if training_args.process_index == 0:
        print(summarize(results))
        print(f"Output: {training_args.output_dir}")
    return 0


def cmd_plan(argv: list[str]) -> int:
    """Resolve and check a config offline (no download, no training) and print the plan."""
    import json

    from hf_transfer.plan import plan_from_argv

    print(json.dumps(plan_from_argv(argv), indent=2, default=str))  # resolves recipes meant for another machine
    return 0


def cmd_demo(argv: list[str]) -> int:
    from hf_transfer.demo import main as demo_main

    _setup_logging()
    return demo_main(argv)


def cmd_push(argv: list[str]) -> int:
    """``hf-transfer push OUTPUT_DIR REPO_ID [--private] [--revision BRANCH] [--create_pr] ...``"""
    parser = argparse.ArgumentParser(
        prog="hf-transfer push",
        description="Check a finished run folder (round trip through pipeline()), write its model card and push "
        "it to the Hub in one commit. The token comes from HF_TOKEN or `hf auth login`.",
    )
    parser.add_argument("output_dir", help="the run's output folder (with results.json)")
    parser.add_argument("repo_id", help="Hub repo id (namespace/name, or name for your own namespace)")
    parser.add_argument("--private", action="store_true", default=None, help="create the repo as private")
    parser.add_argument("--revision", default=None, help="branch to push to (created when new)")
    parser.add_argument("--create_pr", action="store_true", help="open a pull request instead of committing")
    parser.add_argument("--commit_message", default=None, help="default: a summary of the run")
    parser.add_argument(
        "--baseline", default=None, help="results.json (or run folder) of the source-only baseline, shown in the card"
    )
    parser.add_argument(
        "--upper_bound", default=None, help="results.json (or run folder) of a model trained on the target labels"
    )
    parser.add_argument("--license", default=None, help="default: the base model's license when known")
    parser.add_argument("--skip_round_trip_check", action="store_true", help="push without the pipeline() check")
    parser.add_argument(
        "--allow_local_base",
        action="store_true",
        help="push a LoRA adapter whose base is a local folder (it then loads only where that folder exists)",
    )
    args = parser.parse_args(argv)
    _setup_logging()

    from hf_transfer.hub.push import push_run

    # PushError, RoundTripError and the rest end in main(): one line, or the traceback with --debug
    result = push_run(
        args.output_dir,
        args.repo_id,
        private=args.private,
        revision=args.revision,
        create_pr=args.create_pr,
        commit_message=args.commit_message,
        baseline_results=args.baseline,
        upper_bound_results=args.upper_bound,
        license=args.license,
        check=not args.skip_round_trip_check,
        allow_local_base=args.allow_local_base,
    )
    if result is not None:
        print(
            f"Pushed {len(result.files)} files to {result.repo_id}@{result.revision}: "
            f"{result.pr_url or result.commit_url}"
        )
    return 0


def cmd_rank(argv: list[str]) -> int:
    """``hf-transfer rank --target DATASET --backbones ID [ID ...] --output_dir DIR``: transferability scores."""
    from hf_transfer.rank import main as rank_main

    _setup_logging()
    return rank_main(argv)


def cmd_evaluate(argv: list[str]) -> int:
    """``hf-transfer evaluate MODEL DATASET [--split test] [--output_dir DIR]``: score a classifier, classes by name."""
    from hf_transfer.evaluate import main as evaluate_main

    _setup_logging()
    return evaluate_main(argv)


COMMANDS = {
    "train": cmd_train,
    "plan": cmd_plan,
    "demo": cmd_demo,
    "push": cmd_push,
    "rank": cmd_rank,
    "evaluate": cmd_evaluate,
}


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
