"""``hf-transfer demo``: its options; the runs are :mod:`hf_transfer.demo`'s."""

from __future__ import annotations

import argparse

from hf_transfer import demo
from hf_transfer.runtime.logs import setup_logging


def main(argv: list[str] | None = None) -> int:
    """Run ``hf-transfer demo`` with ``argv`` (the command line when None); returns the exit status."""
    parser = argparse.ArgumentParser(
        prog="hf-transfer demo", description=demo.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--output_dir", default=demo.DEFAULT_OUTPUT)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--steps", type=int, default=600, help="training steps of the image-based runs")
    parser.add_argument("--only", nargs="+", default=None, help="run only these (names in the table)")
    parser.add_argument(
        "--report_to",
        default=None,
        help="live tracking of every run (the Trainer's integrations: trackio, tensorboard, ...; default none)",
    )
    args = parser.parse_args(argv)
    setup_logging()
    demo.run_demo(args.output_dir, tuple(args.seeds), args.steps, args.only, report_to=args.report_to)
    return 0
