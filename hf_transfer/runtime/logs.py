"""Console hygiene: the lines a user sees are the project's own and the ones they can act on."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from transformers import TrainingArguments


class _DropMessages(logging.Filter):
    def __init__(self, *prefixes: str):
        super().__init__()
        self.prefixes = prefixes

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.prefixes)


def quiet_unactionable_logs(http: bool = True) -> None:
    """Drop log lines a user can do nothing about, so the ones left are worth reading.

    * one INFO line per HTTP request of the Hub client (22 on a push);
    * transformers' "Requested torchvision backend is not available" on every pipeline() of a timm
      model: TimmWrapperImageProcessor only has a PIL backend, so nothing can be installed to avoid it.

    ``http=False`` (the Python API) leaves the HTTP loggers to the caller's logging configuration."""
    for name in ("httpx", "httpx2", "httpcore", "httpcore2") if http else ():
        logging.getLogger(name).setLevel(logging.WARNING)
    auto = logging.getLogger("transformers.models.auto.image_processing_auto")
    if not any(isinstance(f, _DropMessages) for f in auto.filters):
        auto.addFilter(_DropMessages("Requested torchvision backend is not available"))


def verbose() -> bool:
    """``--verbose`` (or ``HF_TRANSFER_VERBOSE=1``): show what the quiet defaults leave out."""
    import os

    return os.environ.get("HF_TRANSFER_VERBOSE", "") not in ("", "0")


class _DropLoadReport(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "LOAD REPORT" not in str(record.msg)


class quiet_load_report:
    """Drop transformers' LOAD REPORT table (``MISMATCH | Reinit due to size mismatch``) while a backbone loads with
    a head we replace on purpose; the caller logs one line instead, and names any other key that did not load.
    With :func:`verbose` the table is kept."""

    def __enter__(self) -> quiet_load_report:
        self._logger = logging.getLogger("transformers.modeling_utils")
        self._filter = _DropLoadReport()
        if not verbose():
            self._logger.addFilter(self._filter)
        return self

    def __exit__(self, *exc: object) -> None:
        self._logger.removeFilter(self._filter)


def setup_logging(training_args: TrainingArguments | None = None) -> None:
    """Set up the console of a command.

    Timestamped INFO lines (WARNING on the processes that do not log), the
    libraries at WARNING, and without the lines nobody can act on (:func:`quiet_unactionable_logs`)."""
    import datasets
    import transformers

    level = logging.INFO
    if training_args is not None and not training_args.should_log:
        level = logging.WARNING
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=level, force=True)
    transformers.utils.logging.set_verbosity_warning()
    datasets.utils.logging.set_verbosity_warning()
    quiet_unactionable_logs()
