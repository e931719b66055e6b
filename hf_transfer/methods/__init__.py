"""Transfer methods, one subpackage per mode: ``domain`` (alignment losses, partial weighting,
trade-off schedules), ``finetune`` (parameter groups, LR rules, unfreezing, regularisers) and
``feature`` (the frozen-feature cache), ``tta`` (test-time adaptation, ``hf-transfer tta``). Methods know data
and models, never training or hub.

The registrations are imported here, so that any import of the method registry
(``hf_transfer.methods.registry``, which runs this package first) sees every method and option scope; the
registry itself imports none of them (no import cycle).
"""

import hf_transfer.methods.domain  # noqa: F401  (the domain methods register themselves)
import hf_transfer.methods.finetune.catalog  # noqa: F401  (the task and feature methods)
import hf_transfer.methods.finetune.lp_ft  # noqa: F401  (LP-FT: probe, then fine-tune)
import hf_transfer.methods.options  # noqa: F401  (where each shared option acts)
import hf_transfer.methods.tta  # noqa: F401  (the test-time methods, mode tta)
