"""The comparison behind `sn72-promote`: candidate against what is served, on the judge set, paired.

Both cascades run every judge image through the real engine in eval mode (sn72_tools/evaluation/record.py: every
expert's raw output, cached by content and model identity), and each side's deployed answer is replayed with
the engine's own pooling, threshold maps and exits (sn72_tools/evaluation/replay.py, the code the miner runs).
The difference of the two sides on the same images is resampled (stratified, paired) for MCC, accuracy and
the reward estimate (consensus tasks and the answer policy included). The candidate is better beyond noise when
the whole interval of the decision metric's difference lies above 0, and no other figure is worse beyond noise.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from cascade import consensus
from cascade.config import CascadeConfig
from sn72_tools.evaluation import record, replay
from sn72_tools.evaluation.bootstrap import Interval, paired_difference, percentile_interval, stratified_indices
from sn72_tools.evaluation.datasets import EvalError, Source
from sn72_tools.evaluation.fit_parameters import raw_logits
from sn72_tools.evaluation.metrics import binary_metrics
from sn72_tools.evaluation.report import population, shaped_answers
from sn72_tools.evaluation.reward import ConsensusModel, estimate_reward, reward_difference_samples

METRICS = ("mcc", "accuracy", "reward")
REWARD_ROUNDS = 200  # resampled judge sets for the reward's interval (each simulates `REWARD_TRIALS` windows)
REWARD_TRIALS = 200


@dataclass(frozen=True)
class GateSettings:
    metric: str = "mcc"
    confidence: float = 0.95
    rounds: int = 2000
    consensus_share: float = 0.1
    latency_sample: int = 50
    deadline_s: float = 8.4
    seed: int = 0
    progress: bool = True


@dataclass
class Side:
    """One cascade on the judge set: its experts' raw outputs and its deployed answer per image."""

    title: str
    cascade: CascadeConfig
    recording: record.Recording
    deployed: np.ndarray = field(default_factory=lambda: np.empty(0))
    latency: dict[str, Any] | None = None

    @property
    def late_rate(self) -> float:
        return float(self.latency["late_rate"]) if self.latency else 0.0

    @property
    def prior_rate(self) -> float:
        return float(self.latency["prior_rate"]) if self.latency else 0.0


def run_side(title: str, cascade: CascadeConfig, source: Source, cache: record.OutputCache,
             settings: GateSettings) -> Side:
    engine = record.EvalEngine(cascade)
    try:
        recording = record.record(source, cascade, engine, cache, seed=settings.seed,
                                  sample_size=settings.latency_sample, progress=settings.progress)
        latency = (record.measure_latency(engine, recording.sample, settings.deadline_s,
                                          [level.name for level in cascade.levels], settings.progress)
                   if recording.sample else None)
        if engine.fatal is not None:
            raise EvalError(engine.fatal)
    finally:
        engine.close()
    return Side(title, cascade, recording, latency=latency)


def deployed_answers(cascade: CascadeConfig, recording: record.Recording) -> np.ndarray:
    pooling = consensus.Pooling.from_config(cascade)
    levels = replay.level_probabilities(cascade, pooling, recording.experts, recording.outputs)
    return replay.answers_at(levels, replay.exit_levels(replay.pooling_margins(pooling), levels))


def align(served: Side, candidate: Side) -> None:
    """Keep the images both sides answered, in one order; fill each side's deployed answers."""
    common = [name for name in served.recording.names if name in set(candidate.recording.names)]
    for side in (served, candidate):
        position = {name: i for i, name in enumerate(side.recording.names)}
        side.recording = side.recording.subset(np.array([position[name] for name in common], dtype=int))
        side.deployed = deployed_answers(side.cascade, side.recording)


def _binary(probabilities: np.ndarray) -> np.ndarray:
    return np.round(probabilities).astype(int)


def single_experts(side: Side) -> dict[str, np.ndarray]:
    """Each expert of a side answering alone, calibrated as the side calibrates it."""
    by_name = {e.name: e for e in side.cascade.experts()}
    raw = raw_logits(side.recording.outputs)
    return {name: 1.0 / (1.0 + np.exp(-(raw[:, j] / by_name[name].calibration.temperature
                                        + by_name[name].calibration.bias)))
            for j, name in enumerate(side.recording.experts)}


def reward_interval(labels: np.ndarray, served: Side, candidate: Side, model: ConsensusModel,
                    settings: GateSettings) -> tuple[Interval, dict[str, Any]]:
    """Candidate minus served in the reward estimate (each under its own answer policy), paired."""
    answers = {side.title: shaped_answers(side.deployed, side.cascade.answer) for side in (served, candidate)}
    # The other miners of consensus tasks start from both sides' experts alike: one crowd for both, which favours
    # neither (a crowd of the served experts alone agreed with the served answers, an outside review found).
    columns: dict[tuple[str, str], np.ndarray] = {}
    for side in (served, candidate):
        block = population(side.cascade, side.recording.experts, side.recording.outputs)
        for j, name in enumerate(side.recording.experts):
            columns[(side.cascade.version, name)] = block[:, j]
    crowd = np.column_stack([columns[key] for key in sorted(columns)])  # in an order that does not name the roles
    common: dict[str, Any] = {"consensus": model, "population": crowd, "prior": served.cascade.prior}
    estimates = {}
    for side in (served, candidate):
        estimate = estimate_reward(labels, answers[side.title], late_rate=side.late_rate,
                                   prior_rate=side.prior_rate, trials=2000, seed=settings.seed, **common)
        estimates[side.title] = None if estimate is None else estimate.as_dict()
    rows = stratified_indices(labels, min(settings.rounds, REWARD_ROUNDS), settings.seed + 11)
    samples = reward_difference_samples(labels, answers[candidate.title], answers[served.title], rows,
                                        trials=REWARD_TRIALS, seed=settings.seed,
                                        late_rates=(candidate.late_rate, served.late_rate),
                                        prior_rates=(candidate.prior_rate, served.prior_rate), **common)
    estimate = (estimates[candidate.title] or {}).get("mean", 0.0) - (estimates[served.title] or {}).get("mean", 0.0)
    return percentile_interval(estimate, samples, settings.confidence), estimates


@dataclass
class Verdict:
    promote: bool
    reason: str
    differences: dict[str, Interval]
    report: dict[str, Any]


def compare(served: Side, candidate: Side, settings: GateSettings) -> Verdict:
    """The paired comparison and the decision; `report` holds every figure for report.json."""
    align(served, candidate)
    labels = served.recording.labels
    if labels.size == 0 or np.unique(labels).size < 2:
        raise EvalError("the judge set needs images of both classes that both sides could answer")
    paired: dict[str, Any] = {"confidence": settings.confidence, "rounds": settings.rounds, "seed": settings.seed}
    a, b = _binary(candidate.deployed), _binary(served.deployed)
    differences = {metric: paired_difference(labels, a, b, metric, **paired) for metric in ("mcc", "accuracy")}
    model = ConsensusModel(share=settings.consensus_share)
    differences["reward"], rewards = reward_interval(labels, served, candidate, model, settings)
    singles = single_experts(candidate)
    best = max(singles, key=lambda name: binary_metrics(labels, singles[name]).mcc or 0.0)
    versus_single = paired_difference(labels, a, _binary(singles[best]), "mcc", **paired)
    report = {
        "images": int(labels.size), "counts": {str(c): int((labels == c).sum()) for c in (0, 1)},
        "metric": settings.metric, "confidence": settings.confidence, "rounds": settings.rounds,
        "consensus": model.as_dict(),
        "sides": {side.title: {"version": side.cascade.version, "release": side.cascade.release,
                               "answer_policy": side.cascade.answer.policy,
                               "metrics": binary_metrics(labels, side.deployed).as_dict(),
                               "reward": rewards[side.title], "latency": side.latency}
                  for side in (served, candidate)},
        "differences": {metric: interval.as_dict() for metric, interval in differences.items()},
        "candidate_best_single_expert": {"expert": best, "mcc": binary_metrics(labels, singles[best]).mcc,
                                         "cascade_minus_expert": versus_single.as_dict()},
    }
    promote, reason = decide(differences, settings.metric, bool(np.array_equal(a, b)))
    report["decision"] = {"promote": promote, "reason": reason}
    return Verdict(promote, reason, differences, report)


def decide(differences: dict[str, Interval], metric: str, same_answers: bool) -> tuple[bool, str]:
    """Promote only when the decision metric is better beyond noise and nothing is worse beyond noise."""
    main = differences[metric]
    if same_answers:
        return False, "the candidate gives the same answer as the served cascade on every judge image"
    worse = [name for name, interval in differences.items() if interval.below_zero]
    if worse:
        return False, f"the candidate is worse beyond noise in {', '.join(worse)} ({metric} {main.text()})"
    if not main.above_zero:
        return False, f"the candidate is not better beyond noise: {metric} difference {main.text()}"
    return True, f"the candidate is better beyond noise: {metric} difference {main.text()}"
