"""Disagreement is measured on what each expert contributes to pooling: sigmoid(weight * calibrated logit).

Answers are built by `consensus.make_answer`, the engine's own path from an expert's config (calibration,
weight) to an `ExpertAnswer`, so the test covers the calibration arithmetic the miner runs.
"""

from __future__ import annotations

import hashlib
import random

import pytest

from cascade import consensus
from cascade.config import ActiveLearningConfig, Calibration, ExpertConfig
from cascade.observers.active_learning import select
from cascade.observers.al_store import Reason
from cascade.observers.base import Finished
from cascade.request import ExpertAnswer, Job, Result, Status

JPEG = b"\xff\xd8\xff\xe0 not really a jpeg"


def expert(name: str, *, temperature: float = 1.0, bias: float = 0.0, weight: float = 1.0) -> ExpertConfig:
    return ExpertConfig(name=name, backend="detector", model=f"{name}.pt", device="cpu", weight=weight,
                        calibration=Calibration(temperature=temperature, bias=bias))


def finished(*answers: ExpertAnswer) -> Finished:
    job = Job(payload="", hotkey="5Caller")
    pooled = consensus.pooled_probability(answers)
    result = Result(request_id=job.request_id, probability=pooled, status=Status.EXHAUSTED, levels_run=2,
                    answers=answers)
    return Finished(job, result, hashlib.sha256(JPEG).hexdigest(), JPEG, (8, 6), "v1")


CONFIG = ActiveLearningConfig(uncertain_band=0.0, disagreement=0.5, sample_rate=0.0)


def test_weighted_probability_is_the_calibrated_weighted_answer() -> None:
    from cascade.observers.active_learning import weighted_probability  # here: the old code had none

    answer = consensus.make_answer(expert("d", temperature=2.0, bias=0.5, weight=3.0), 0, 0.2)
    assert weighted_probability(answer) == pytest.approx(consensus.sigmoid(3.0 * (consensus.logit(0.2) / 2 + 0.5)))
    # with the identity calibration and weight 1 it is the raw probability
    assert weighted_probability(consensus.make_answer(expert("v"), 0, 0.83)) == pytest.approx(0.83)


@pytest.mark.parametrize("useless", [
    expert("constant", temperature=100.0),  # fitted: its log-odds carry ~no evidence
    expert("constant", weight=0.0),  # weighted out of the pooling
])
def test_an_uninformative_constant_expert_no_longer_disagrees_with_everything(useless: ExpertConfig) -> None:
    """The outsider's case: a random-weight detector that says 0.02 to every image, beside a real classifier."""
    classifier, rng = expert("vit"), random.Random(7)
    kept = [select(finished(consensus.make_answer(classifier, 0, rng.uniform(0.05, 0.95)),
                            consensus.make_answer(useless, 1, 0.02)), CONFIG, rng)
            for _ in range(200)]
    assert kept.count(Reason.DISAGREEMENT) == 0
    # the same answers with the constant expert uncalibrated and weighted 1: most of them "disagree"
    raw = expert("constant")
    kept_raw = [select(finished(consensus.make_answer(classifier, 0, rng.uniform(0.05, 0.95)),
                                consensus.make_answer(raw, 1, 0.02)), CONFIG, rng)
                for _ in range(200)]
    assert kept_raw.count(Reason.DISAGREEMENT) > 50


def test_calibrated_experts_that_really_disagree_are_still_kept() -> None:
    sure_yes = consensus.make_answer(expert("a", temperature=0.8), 0, 0.9)
    sure_no = consensus.make_answer(expert("b", bias=-1.0), 1, 0.2)
    assert select(finished(sure_yes, sure_no), CONFIG, random.Random(0)) is Reason.DISAGREEMENT


def test_a_calibration_that_sharpens_an_expert_can_make_a_disagreement() -> None:
    """0.3 against 0.7 is within 0.5 raw; an expert the fit trusts more (weight 2) pulls them apart."""
    mild = [consensus.make_answer(expert(name), level, p) for level, (name, p) in enumerate((("a", 0.3), ("b", 0.7)))]
    assert select(finished(*mild), CONFIG, random.Random(0)) is None
    sharp = [consensus.make_answer(expert(name, weight=2.0), level, p)
             for level, (name, p) in enumerate((("a", 0.3), ("b", 0.7)))]
    assert select(finished(*sharp), CONFIG, random.Random(0)) is Reason.DISAGREEMENT
