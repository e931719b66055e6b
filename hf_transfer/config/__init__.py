"""Run arguments: :class:`TransferArguments` next to every ``transformers.TrainingArguments`` field, from one
YAML/JSON file, flags, or both (flags override the file), or a Python dict.

* :mod:`~hf_transfer.config.arguments`: the ``TransferArguments`` dataclass;
* :mod:`~hf_transfer.config.checks`: what the method registry's declarations allow (an option set where it
  has no effect is refused, naming it), and the checks of TrainingArguments, all before anything loads;
* :mod:`~hf_transfer.config.parse`: file, flags and dicts into the dataclasses (no command-line round trip);
* :mod:`~hf_transfer.config.file`: the bounded YAML/JSON reader.
"""

from hf_transfer.config.arguments import TransferArguments
from hf_transfer.config.checks import (
    check_backbone_needs,
    check_report_to,
    check_training_arguments,
    push_repo_id,
    report_to_problem,
)
from hf_transfer.config.parse import (
    RETIRED_OPTIONS,
    _parser,  # hf_transfer.help lists the options of the same parser
    arguments_from_dict,
    load_config_file,
    parse_args,
    reject_placeholders,
    resolve_precision,
)

__all__ = [
    "RETIRED_OPTIONS",
    "TransferArguments",
    "_parser",
    "arguments_from_dict",
    "check_backbone_needs",
    "check_report_to",
    "check_training_arguments",
    "load_config_file",
    "parse_args",
    "push_repo_id",
    "reject_placeholders",
    "report_to_problem",
    "resolve_precision",
]
