"""Yes/no pooling from log-probabilities, token variants, missing tokens, prompts and image scaling."""

from __future__ import annotations

import math
from typing import Any, ClassVar

import numpy as np
import pytest
from loguru import logger

from cascade.experts.base import ExpertError
from cascade.experts.vlm_common import (
    TokenLogprob,
    YesNoReader,
    YesNoVocabulary,
    build_prompt,
    fit_pixels,
    normalise_token,
    to_pil_within,
    user_messages,
    yes_no_probability,
    yes_no_token_ids,
)

YES = ["Yes", "yes", " Yes", " yes"]
NO = ["No", "no", " No", " no"]


def vocab(**ids: Any) -> YesNoVocabulary:
    return YesNoVocabulary.from_options(YES, NO, **ids)


def lp(token: str, probability: float, token_id: int | None = None) -> TokenLogprob:
    return TokenLogprob(math.log(probability), token=token, token_id=token_id)


def test_yes_mass_over_yes_plus_no_mass() -> None:
    entries = [lp("Yes", 0.6), lp("No", 0.2), lp("The", 0.15)]
    assert yes_no_probability(entries, vocab()) == pytest.approx(0.6 / 0.8)


def test_token_variants_add_up() -> None:
    entries = [lp("Yes", 0.3), lp(" yes", 0.1), lp("ĠYes", 0.1), lp("▁No", 0.2), lp("no", 0.05), lp("Maybe", 0.2)]
    assert yes_no_probability(entries, vocab()) == pytest.approx(0.5 / 0.75)
    assert normalise_token("ĠNo") == " No" and normalise_token("▁yes") == " yes" and normalise_token("Yes") == "Yes"


def test_distinct_tokens_with_the_same_text_both_count() -> None:
    entries = [lp("Yes", 0.3, token_id=1), lp("Yes", 0.1, token_id=2), lp("No", 0.4, token_id=3)]
    assert yes_no_probability(entries, vocab()) == pytest.approx(0.4 / 0.8)


def test_ids_decide_when_known() -> None:
    ids = vocab(yes_ids=[10], no_ids=[20])
    # the text is ignored for a known id; an unknown id falls back to the text
    entries = [lp("whatever", 0.3, token_id=10), lp("Yes", 0.2, token_id=99), lp("No", 0.1, token_id=20)]
    assert yes_no_probability(entries, ids) == pytest.approx(0.5 / 0.6)


def test_a_side_missing_from_a_top_k_list_gets_the_smallest_shown_logprob() -> None:
    entries = [lp("Yes", 0.5), lp("The", 0.2), lp("A", 0.01)]
    assert yes_no_probability(entries, vocab(), truncated=True) == pytest.approx(0.5 / 0.51)
    assert yes_no_probability(entries, vocab(), truncated=False) == 1.0
    only_no = [lp("No", 0.7), lp("It", 0.05)]
    assert yes_no_probability(only_no, vocab(), truncated=True) == pytest.approx(0.05 / 0.75)
    assert yes_no_probability(only_no, vocab(), truncated=False) == 0.0


def test_extreme_logprobs_do_not_overflow() -> None:
    entries = [TokenLogprob(-1000.0, "Yes"), TokenLogprob(-1001.0, "No")]
    assert yes_no_probability(entries, vocab()) == pytest.approx(1 / (1 + math.exp(-1.0)))
    entries = [TokenLogprob(0.0, "Yes"), TokenLogprob(-800.0, "No")]
    assert yes_no_probability(entries, vocab()) == pytest.approx(1.0)
    entries = [TokenLogprob(float("nan"), "Yes"), TokenLogprob(-1.0, "No"), TokenLogprob(-2.0, "Yes")]
    assert yes_no_probability(entries, vocab()) == pytest.approx(1 / (1 + math.e))


def test_neither_side_gives_none_and_the_reader_answers_half_and_counts() -> None:
    entries = [lp("The", 0.5), lp("I", 0.3)]
    assert yes_no_probability(entries, vocab()) is None
    assert yes_no_probability([], vocab()) is None
    messages: list[str] = []
    sink = logger.add(messages.append, level="WARNING")
    try:
        reader = YesNoReader("vlm", vocab())
        assert reader.probability(entries) == 0.5
        assert reader.probability([lp("Yes", 0.9), lp("No", 0.1)]) == pytest.approx(0.9)
        assert reader.probability(entries) == 0.5
    finally:
        logger.remove(sink)
    assert (reader.missing, reader.answered) == (2, 3)
    assert len(messages) == 1 and "no yes/no token" in messages[0]  # logged once, not per answer


def test_overlapping_token_sets_are_refused() -> None:
    with pytest.raises(ValueError, match="both yes and no"):
        YesNoVocabulary.from_options(["Yes", "ĠOk"], ["No", " Ok"])
    with pytest.raises(ValueError, match="both yes and no"):
        YesNoVocabulary.from_options(["Yes"], ["No"], yes_ids=[1, 2], no_ids=[2])


class _Tokenizer:
    """Encodes from a fixed table; anything else splits into one token per character."""

    table: ClassVar[dict[str, list[int]]] = {
        "Yes": [5],
        " Yes": [6],
        "yes": [7, 8],
        "No": [9],
        " No": [10],
        "Nope": [9],
    }

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return self.table.get(text, [ord(c) for c in text])


def test_token_ids_of_single_token_strings_only() -> None:
    assert yes_no_token_ids(_Tokenizer(), ["Yes", " Yes", "yes"], ["No", " No", "Nope"]) == ([5, 6], [9, 10])
    with pytest.raises(ExpertError, match="single-token yes"):
        yes_no_token_ids(_Tokenizer(), ["yes"], ["No"])
    with pytest.raises(ExpertError, match="share token ids"):
        yes_no_token_ids(_Tokenizer(), ["Yes", "Nope"], ["No"])


class _Processor:
    chat_template = "template"

    def apply_chat_template(self, messages: list[dict[str, Any]], add_generation_prompt: bool, tokenize: bool) -> str:
        assert add_generation_prompt and not tokenize
        parts = messages[0]["content"]
        return f"<user>{'<image>' if parts[0]['type'] == 'image' else ''}{parts[1]['text']}<assistant>"


def test_prompt_from_the_chat_template() -> None:
    assert build_prompt(_Processor(), "Roadwork?") == "<user><image>Roadwork?<assistant>"

    class NoTemplate:
        chat_template = None
        tokenizer = None

    with pytest.raises(ValueError, match="chat template"):
        build_prompt(NoTemplate(), "Roadwork?")


def test_messages_put_the_image_before_the_question() -> None:
    url_part = {"type": "image_url", "image_url": {"url": "data:image/jpeg;base64,xx"}}
    messages = user_messages("Roadwork?", url_part)
    assert messages == [{"role": "user", "content": [url_part, {"type": "text", "text": "Roadwork?"}]}]
    assert user_messages("Q")[0]["content"][0] == {"type": "image"}


@pytest.mark.parametrize(("h", "w"), [(480, 640), (50, 900), (2000, 3000), (100, 100)])
def test_images_are_scaled_down_to_max_pixels_keeping_aspect(h: int, w: int) -> None:
    max_pixels = 200 * 200
    height, width = fit_pixels(h, w, max_pixels)
    assert height * width <= max_pixels
    if h * w <= max_pixels:
        assert (height, width) == (h, w)  # never scaled up
    else:
        assert width / height == pytest.approx(w / h, rel=0.05)
    image = np.zeros((h, w, 3), dtype=np.uint8)
    image[..., 0] = 255
    pil = to_pil_within(image, max_pixels)
    assert (pil.height, pil.width) == (height, width) and pil.mode == "RGB"
    assert np.asarray(pil)[0, 0].tolist() == [255, 0, 0]  # channels stay RGB


def test_bad_image_arrays_are_refused() -> None:
    with pytest.raises(ValueError, match="HxWx3 uint8"):
        to_pil_within(np.zeros((10, 10), dtype=np.uint8), 100)
