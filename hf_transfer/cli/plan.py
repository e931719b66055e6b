"""``hf-transfer plan [--config FILE] [--flag value ...]``: the offline dry run of ``train``'s arguments
(:func:`hf_transfer.training.plan.plan_run`), printed as JSON."""

from __future__ import annotations

from hf_transfer.config import report_to_problem
from hf_transfer.errors import TransferConfigError
from hf_transfer.training.plan import plan_run


def parse_for_plan(argv: list[str]) -> tuple:
    """``config.parse_args`` for a dry run: (transfer args, training args, device problem or None).

    TrainingArguments refuses a precision this machine cannot run (bf16/fp16 without a GPU). The plan
    is then resolved as with ``--use_cpu true`` and the refusal is returned, to be reported.
    """
    from hf_transfer.config import parse_args

    try:
        return (*parse_args(argv), None)
    except TransferConfigError as err:
        refused = str(err)
    # any other problem (a device one is off the table now) is raised by this second parse
    return (*parse_args([*argv, "--use_cpu", "true"]), refused)


def plan_from_argv(argv: list[str]) -> dict:
    """What ``hf-transfer plan`` prints: the plan of ``[--config FILE] [--flag value ...]``."""
    transfer_args, training_args, device_problem = parse_for_plan(argv)
    plan = plan_run(transfer_args, training_args)
    if device_problem is not None:
        plan["training"]["use_cpu"] = False  # what the recipe asks; it was only parsed as use_cpu
    problems = [p for p in (device_problem, report_to_problem(training_args)) if p]
    plan["training"]["on_this_machine"] = f"train would stop here: {'; '.join(problems)}" if problems else "ok"
    return plan


def main(argv: list[str]) -> int:
    """Resolve and check a config offline (no download, no training) and print the plan."""
    import json

    print(json.dumps(plan_from_argv(argv), indent=2, default=str))  # resolves recipes meant for another machine
    return 0
