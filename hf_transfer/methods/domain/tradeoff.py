"""Schedules of the transfer-loss weight (the ``trade_off`` every method shares).

    constant: w(p) = trade_off
    dann:     w(p) = trade_off * (2 / (1 + exp(-10 p)) - 1)        (DANN's ramp, https://arxiv.org/abs/1505.07818)
    linear:   w(p) = trade_off * min(1, p / warmup)

``p`` is the training progress ``global_step / max_steps`` in [0, 1]. The weight is a pure function
of ``p`` (no step counter), so a resumed run gets exactly the weights of an uninterrupted one. The
ramps keep a (possibly noisy) alignment term from dominating while the classifier is still at chance.
This is the weight in front of the whole transfer loss; a method's own schedules (e.g. DANN's
gradient-reversal coefficient) still apply inside it.
"""

from __future__ import annotations

import math

SCHEDULES = ("constant", "dann", "linear")


def trade_off_weight(progress: float, trade_off: float, schedule: str = "constant", warmup: float = 0.1) -> float:
    """The effective transfer-loss weight at training progress ``progress``."""
    p = min(max(float(progress), 0.0), 1.0)
    if schedule == "constant":
        return float(trade_off)
    if schedule == "dann":
        return float(trade_off * (2.0 / (1.0 + math.exp(-10.0 * p)) - 1.0))
    if schedule == "linear":
        if not 0.0 < warmup <= 1.0:
            raise ValueError(f"warmup must be in (0, 1], got {warmup}")
        return float(trade_off * min(1.0, p / warmup))
    raise ValueError(f"unknown trade-off schedule {schedule!r}; choose one of {SCHEDULES}")
