"""Active-learning selection: each reason triggers on constructed inputs, and only there."""

from __future__ import annotations

import hashlib
import math
import random
from typing import Any

import pytest

from cascade.config import ActiveLearningConfig
from cascade.observers.active_learning import select, to_sample
from cascade.observers.al_store import Reason, image_extension
from cascade.observers.base import Finished
from cascade.request import ExpertAnswer, Job, Result, Status
from sn72_tools.al.export import parse_size

JPEG = b"\xff\xd8\xff\xe0 not really a jpeg"


def answer(p: float, expert: str = "e", level: int = 0) -> ExpertAnswer:
    return ExpertAnswer(expert=expert, level=level, probability=p, logit=math.log(p / (1 - p)), weight=1.0)


def make_finished(
    p: float = 0.95, *, label: int = -1, answers: tuple[ExpertAnswer, ...] | None = None,
    status: Status = Status.CONFIDENT, image: bytes | None = JPEG, size: tuple[int, int] | None = (8, 6),
) -> Finished:
    job = Job(payload="", hotkey="5Caller", testnet_label=label)
    answers = (answer(p),) if answers is None else answers
    result = Result(request_id=job.request_id, probability=p, status=status, levels_run=1, answers=answers)
    digest = None if image is None else hashlib.sha256(image).hexdigest()
    return Finished(job, result, digest, image, size if image is not None else None, "v7")


def make_config(**overrides: Any) -> ActiveLearningConfig:
    fields: dict[str, Any] = {"uncertain_band": 0.15, "disagreement": 0.5, "sample_rate": 0.0}
    fields.update(overrides)
    return ActiveLearningConfig(**fields)


class FixedRng(random.Random):
    """random() returns `value`; counts how often it was asked."""

    def __init__(self, value: float) -> None:
        super().__init__(0)
        self.value, self.calls = value, 0

    def random(self) -> float:
        self.calls += 1
        return self.value


def test_confident_agreeing_unlabelled_answer_is_not_kept() -> None:
    finished = make_finished(0.95, answers=(answer(0.9), answer(0.97)))
    assert select(finished, make_config(), FixedRng(0.5)) is None


@pytest.mark.parametrize(("p", "expected"), [(0.5, Reason.UNCERTAIN), (0.36, Reason.UNCERTAIN),
                                             (0.64, Reason.UNCERTAIN), (0.35, None), (0.66, None), (0.02, None)])
def test_uncertain_band_is_strict(p: float, expected: Reason | None) -> None:
    assert select(make_finished(p), make_config(), FixedRng(0.9)) is expected


@pytest.mark.parametrize(("probabilities", "expected"), [
    ((0.1, 0.9), Reason.DISAGREEMENT),
    ((0.2, 0.95, 0.9), Reason.DISAGREEMENT),
    ((0.3, 0.7), None),  # 0.4 apart: within the threshold
    ((0.25, 0.75), None),  # exactly 0.5 apart: not more than it
    ((0.9,), None),  # one expert cannot disagree
])
def test_disagreement_needs_a_spread_above_the_threshold(probabilities: tuple[float, ...],
                                                         expected: Reason | None) -> None:
    answers = tuple(answer(p, expert=f"e{i}") for i, p in enumerate(probabilities))
    assert select(make_finished(0.95, answers=answers), make_config(), FixedRng(0.9)) is expected


@pytest.mark.parametrize("status", [Status.DEADLINE, Status.PRIOR])
def test_deadline_cut_is_kept_and_can_be_turned_off(status: Status) -> None:
    finished = make_finished(0.9, status=status)
    assert select(finished, make_config(), FixedRng(0.9)) is Reason.DEADLINE
    assert select(finished, make_config(keep_deadline_cut=False), FixedRng(0.9)) is None


@pytest.mark.parametrize("status", [Status.CONFIDENT, Status.EXHAUSTED, Status.CACHED])
def test_other_statuses_are_not_deadline_cuts(status: Status) -> None:
    assert select(make_finished(0.9, status=status), make_config(), FixedRng(0.9)) is None


@pytest.mark.parametrize("label", [0, 1])
def test_testnet_label_is_kept_and_can_be_turned_off(label: int) -> None:
    finished = make_finished(0.9, label=label)
    assert select(finished, make_config(), FixedRng(0.9)) is Reason.LABELLED
    assert select(finished, make_config(keep_labelled=False), FixedRng(0.9)) is None


def test_random_sample_of_the_rest_uses_the_injected_rng() -> None:
    config = make_config(sample_rate=0.1)
    assert select(make_finished(0.95), config, FixedRng(0.05)) is Reason.SAMPLE
    assert select(make_finished(0.95), config, FixedRng(0.1)) is None
    never = FixedRng(0.0)
    assert select(make_finished(0.95), make_config(sample_rate=0.0), never) is None
    assert never.calls == 0


def test_rng_is_not_drawn_when_another_reason_applies() -> None:
    rng = FixedRng(0.0)
    assert select(make_finished(0.5), make_config(sample_rate=1.0), rng) is Reason.UNCERTAIN
    assert rng.calls == 0


def test_most_informative_reason_wins() -> None:
    everything = make_finished(0.5, label=1, status=Status.DEADLINE, answers=(answer(0.05), answer(0.95)))
    config = make_config(sample_rate=1.0)
    assert select(everything, config, FixedRng(0.0)) is Reason.LABELLED
    assert select(everything, make_config(keep_labelled=False), FixedRng(0.0)) is Reason.DEADLINE
    no_cut = make_finished(0.5, answers=(answer(0.05), answer(0.95)))
    assert select(no_cut, config, FixedRng(0.0)) is Reason.DISAGREEMENT


def test_no_image_bytes_is_never_kept() -> None:
    finished = make_finished(0.5, label=1, status=Status.PRIOR, image=None)
    assert select(finished, make_config(sample_rate=1.0), FixedRng(0.0)) is None


def test_reason_order_is_the_eviction_order() -> None:
    assert [r.rank for r in Reason] == [0, 1, 2, 3, 4]
    assert Reason.SAMPLE.rank < Reason.UNCERTAIN.rank < Reason.DISAGREEMENT.rank < Reason.DEADLINE.rank
    assert Reason.DEADLINE.rank < Reason.LABELLED.rank


def test_to_sample_carries_what_the_record_needs() -> None:
    finished = make_finished(0.6, label=1, status=Status.DEADLINE, answers=(answer(0.2, "a", 0), answer(0.7, "b", 1)))
    sample = to_sample(finished, Reason.LABELLED, created_at=123.0)
    assert sample.image == JPEG and sample.label == 1 and sample.status == "deadline"
    assert (sample.width, sample.height) == (8, 6)
    assert sample.hotkey == "5Caller" and sample.cascade_version == "v7" and sample.created_at == 123.0
    assert [e["expert"] for e in sample.experts] == ["a", "b"]
    assert sample.experts[1]["probability"] == 0.7 and sample.experts[1]["level"] == 1
    assert to_sample(make_finished(0.5), Reason.UNCERTAIN, 0.0).label is None


def test_image_extension_from_magic_bytes() -> None:
    assert image_extension(JPEG) == "jpg"
    assert image_extension(b"\x89PNG\r\n\x1a\n....") == "png"
    assert image_extension(b"RIFF\x00\x00\x00\x00WEBPVP8 ") == "webp"
    assert image_extension(b"hello") == "bin"


@pytest.mark.parametrize(("text", "expected"), [("1024", 1024), ("5k", 5 * 1024), ("500M", 500 * 1024**2),
                                                ("2GiB", 2 * 1024**3), ("1.5g", int(1.5 * 1024**3))])
def test_parse_size(text: str, expected: int) -> None:
    assert parse_size(text) == expected


def test_parse_size_rejects_garbage() -> None:
    import argparse

    with pytest.raises(argparse.ArgumentTypeError):
        parse_size("lots")
