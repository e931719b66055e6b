"""What the run-based benchmarks (domain_adaptation, task_adaptation, rank_backbones) share: the options every one of
their runs takes from the command line, and one training run through hf_transfer."""

from __future__ import annotations

import argparse

#: every run's options, set once by the script's ``main`` from its command line (:func:`set_run_options`)
RUN_OPTIONS: dict = {"channels_last": "auto"}


def add_run_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--channels_last",
        choices=("auto", "true", "false"),
        default="auto",
        help="every run's channels_last (auto: NHWC for a convnet, also on the CPU; false: NCHW, the setting of "
        "the committed results measured before auto covered the CPU)",
    )


def set_run_options(opts: argparse.Namespace) -> None:
    RUN_OPTIONS["channels_last"] = opts.channels_last


def transfer_arguments(args: dict):
    """``(TransferArguments, TrainingArguments)`` of one run: ``args`` over the command line's run options."""
    from hf_transfer.config import arguments_from_dict

    return arguments_from_dict({**RUN_OPTIONS, **args})


def train(args: dict) -> dict:
    """One run, as ``hf-transfer train`` runs it (the mode attaches its own callbacks, e.g. gradual unfreezing)."""
    from hf_transfer.training.run import run_transfer

    return run_transfer(*transfer_arguments(args))
