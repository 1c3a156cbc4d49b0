"""The answer a validator is sent, shaped from the cascade's calibrated probability (docs/learning.md).

Validators score only `np.round(prediction)`, and a consensus task's label is `round(mean of every miner's raw
answer)`, this miner's own included. So, for the miner's score:
- on a known-answer task the calibrated value and a decisive one round the same way: nothing changes;
- on a consensus task a decisive answer pulls the mean, and so the label it is scored against, harder to its
  own side than a calibrated 0.6 does.
`decisive` therefore never scores less than `calibrated` and sometimes more. An answer from the prior (no level
answered in time) says nothing about the image, so it is sent as it is under either policy.
"""

from __future__ import annotations

from cascade.config import AnswerConfig
from cascade.request import Result


def shaped_probability(probability: float, answered: bool, answer: AnswerConfig) -> float:
    """What to send for a cascade answer of `probability` (`answered`: some expert answered, not the prior)."""
    if answer.policy == "calibrated" or not answered:
        return probability
    # np.round(0.5) == 0: exactly 0.5 is "no roadwork", and stays on that side.
    return answer.decisive_value if probability > 0.5 else 1.0 - answer.decisive_value


def shaped(result: Result, answer: AnswerConfig) -> float:
    """What to send for `result` (a cached or coalesced answer carries its experts' answers; the prior none)."""
    return shaped_probability(result.probability, bool(result.answers), answer)
