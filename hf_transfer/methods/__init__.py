"""Transfer methods, one subpackage per mode: ``domain`` (alignment losses, partial weighting,
trade-off schedules), ``finetune`` (parameter groups, LR rules, unfreezing, regularisers) and
``feature`` (the frozen-feature cache). Methods know data and models, never training or hub."""
