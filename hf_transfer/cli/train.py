"""``hf-transfer train [--config FILE] [--flag value ...]``: one transfer run (:mod:`hf_transfer.training.run`);
prints the target metrics and the output folder."""

from __future__ import annotations


def main(argv: list[str]) -> int:
    """Run ``hf-transfer train`` with ``argv``; prints the target metrics, returns the exit status."""
    from hf_transfer.config import parse_args
    from hf_transfer.runtime.logs import setup_logging
    from hf_transfer.training.results import summarize
    from hf_transfer.training.run import run_transfer

    transfer_args, training_args = parse_args(argv)
    setup_logging(training_args)
    results = run_transfer(transfer_args, training_args)
    if training_args.process_index == 0:
        print(summarize(results))
        print(f"Output: {training_args.output_dir}")
    return 0
