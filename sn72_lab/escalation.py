"""A chosen escalation rate from random-weight models, through the cascade's own calibration and exit rule.

Random weights are never confident on their own, so `sn72-bench traffic` sets the rate with nothing but settings
an operator has: level 1's `calibration` (temperature, bias) and `exit_margin`. It first sends the run's images
through the real miner with level 1 alone answering (exit margin 0, identity calibration): each answer is then
level 1's probability p_i exactly as the engine computes it for that image. A request escalates past level 1 when
its calibrated log-odds z_i = logit(p_i) / T + b is within L of 0 (|sigmoid(z) - 0.5| < margin). So the images whose
u_i = logit(p_i) fall in one interval (lo, hi) escalate and the rest exit: choose the interval holding the wanted
share of the u_i, centre it on 0 with b = -c / T, and size it with T = w / L (c, w: its centre and half-width).

The interval is a run of consecutive sorted u_i whose edges sit in the widest gaps available, so that the small
differences a GPU's bf16 kernels give the same image in another batch rarely move an image across an edge; the
share the engine will actually escalate is computed with the engine's own functions (`planned`), and the miner's
counters measure what it did.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from cascade.config import Calibration
from cascade.consensus import calibrate, is_confident, logit, sigmoid

PREFERRED_MARGIN = 0.35  # production's level-1 exit margin, used where the bias bound allows it
MAX_BIAS = 20.0  # Calibration.bias bounds
MAX_TEMPERATURE = 100.0


@dataclass(frozen=True)
class Escalation:
    """Level 1's settings for one rate, and what they do to the images they were fitted on."""

    target: float
    temperature: float
    bias: float
    exit_margin: float
    planned: float  # share of the fitted images the engine's exit rule sends past level 1
    escalated: tuple[int, ...]  # their indices

    def calibration(self) -> dict[str, float]:
        return {"temperature": self.temperature, "bias": self.bias}


def escalates(probability: float, temperature: float, bias: float, exit_margin: float) -> bool:
    """The engine's decision for a level-1 answer alone: not confident after calibration."""
    z = calibrate(probability, Calibration(temperature=temperature, bias=bias))
    return not is_confident(sigmoid(z), exit_margin)


def _best_window(values: Sequence[float], size: int) -> tuple[int, float]:
    """Start of the run of `size` consecutive sorted values whose edge gaps are widest (the ends count as infinite)."""
    best, best_gap = 0, -1.0
    for start in range(len(values) - size + 1):
        left = values[start] - values[start - 1] if start > 0 else math.inf
        end = start + size
        right = values[end] - values[end - 1] if end < len(values) else math.inf
        gap = min(left, right)
        if gap > best_gap:
            best, best_gap = start, gap
    return best, best_gap


def fit(probabilities: Sequence[float], target: float) -> Escalation:
    """Level-1 calibration and exit margin that send `target` of these level-1 answers on (see the module doc)."""
    n = len(probabilities)
    if n == 0:
        raise ValueError("no level-1 answers to fit the escalation on")
    if not 0.0 <= target <= 1.0:
        raise ValueError(f"escalation target must be in [0, 1], got {target}")
    if target >= 1.0 or target <= 0.0:
        margin = 0.5 if target >= 1.0 else 0.0  # 0.5: never confident; 0: always
        chosen = tuple(range(n)) if target >= 1.0 else ()
        return Escalation(target, 1.0, 0.0, margin, len(chosen) / n, chosen)
    order = sorted(range(n), key=lambda i: logit(probabilities[i]))
    values = [logit(probabilities[i]) for i in order]
    size = min(n - 1, max(1, round(target * n)))
    start, gap = _best_window(values, size)
    for delta in range(1, n):  # all tied at the wanted size: the nearest size that can be separated
        if gap > 0:
            break
        for candidate in (size - delta, size + delta):
            if 1 <= candidate < n:
                start_c, gap_c = _best_window(values, candidate)
                if gap_c > 0:
                    size, start, gap = candidate, start_c, gap_c
                    break
    span = values[-1] - values[0] + 1.0
    lo = (values[start - 1] + values[start]) / 2 if start > 0 else values[0] - span
    end = start + size
    hi = (values[end - 1] + values[end]) / 2 if end < n else values[-1] + span
    centre, half_width = (lo + hi) / 2, (hi - lo) / 2
    limit = logit(0.5 + PREFERRED_MARGIN)
    if centre != 0.0:
        limit = min(limit, 0.9 * MAX_BIAS * half_width / abs(centre))  # keeps |bias| = |centre| / T in bounds
    limit = max(limit, half_width / MAX_TEMPERATURE)
    temperature = half_width / limit
    bias = -centre / temperature
    margin = sigmoid(limit) - 0.5
    chosen = tuple(i for i in range(n) if escalates(probabilities[i], temperature, bias, margin))
    return Escalation(target, temperature, bias, margin, len(chosen) / n, chosen)
