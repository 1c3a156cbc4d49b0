"""What the three VLM backends share: the question, the image size cap, and reading P(yes) from log-probabilities.

The answer is never parsed from generated text. The model is asked a yes/no question and we read the
log-probabilities of its first answer token:

    P(roadwork) = sum_{t in yes} exp(lp_t) / (sum_{t in yes} exp(lp_t) + sum_{t in no} exp(lp_t))

over the configured yes/no token strings ("Yes", " yes", ...). This is the model's conditional belief given
that it answers yes or no at all, so mass on other tokens ("The", "I") does not drag the answer towards no.

Backends that only see a truncated top-k list may miss one side entirely. A token absent from a top-k list has
a log-probability of at most the smallest one shown, so the missing side is given that value: the answer stays
finite and is pulled towards 0.5 instead of reading exactly 0 or 1 from an absence. When neither side appears,
the answer is 0.5 and the event is counted and logged: the question or the token lists are probably wrong for
this model.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from loguru import logger
from PIL import Image

from cascade.experts.base import Expert, ExpertError

# Raw BPE / SentencePiece spellings of a leading space, as some servers return undecoded tokens.
_SPACE_MARKERS = ("Ġ", "▁")


@dataclass(frozen=True)
class TokenLogprob:
    """One candidate of the first answer position: its log-probability and what identifies it."""

    logprob: float
    token: str | None = None
    token_id: int | None = None


def normalise_token(token: str) -> str:
    """A token string with a raw leading-space marker ('ĠYes', '▁Yes') spelled as a space (' Yes')."""
    for marker in _SPACE_MARKERS:
        if token.startswith(marker):
            return " " + token[len(marker) :]
    return token


def _logsumexp(values: Sequence[float]) -> float:
    top = max(values)
    if top == -math.inf:
        return -math.inf
    return top + math.log(sum(math.exp(v - top) for v in values))


@dataclass(frozen=True)
class YesNoVocabulary:
    """Which candidates count as yes and as no: by token string, and by token id where the ids are known."""

    yes_tokens: frozenset[str]
    no_tokens: frozenset[str]
    yes_ids: frozenset[int] = frozenset()
    no_ids: frozenset[int] = frozenset()

    @classmethod
    def from_options(
        cls,
        yes_tokens: Iterable[str],
        no_tokens: Iterable[str],
        yes_ids: Iterable[int] = (),
        no_ids: Iterable[int] = (),
    ) -> YesNoVocabulary:
        vocab = cls(
            frozenset(normalise_token(t) for t in yes_tokens),
            frozenset(normalise_token(t) for t in no_tokens),
            frozenset(yes_ids),
            frozenset(no_ids),
        )
        clash = (vocab.yes_tokens & vocab.no_tokens) or (vocab.yes_ids & vocab.no_ids)
        if clash:
            raise ValueError(f"tokens {sorted(map(str, clash))} would count as both yes and no")
        return vocab

    def side(self, entry: TokenLogprob) -> bool | None:
        """True for yes, False for no, None for any other token; an id, when present, decides."""
        if entry.token_id is not None and (self.yes_ids or self.no_ids):
            if entry.token_id in self.yes_ids:
                return True
            if entry.token_id in self.no_ids:
                return False
        if entry.token is not None:
            token = normalise_token(entry.token)
            if token in self.yes_tokens:
                return True
            if token in self.no_tokens:
                return False
        return None


def yes_no_probability(entries: Sequence[TokenLogprob], vocab: YesNoVocabulary, truncated: bool = True) -> float | None:
    """P(yes) from the first answer position's candidates, or None when neither yes nor no is among them.

    Each entry is one distinct token, so entries that decode to the same text ('Yes' twice, from two ids) both
    add their mass. With `truncated` (a top-k list), a missing side is given the smallest log-probability shown
    (see the module docstring); otherwise (all logprobs of the yes/no ids are known) a missing side has no mass.
    """
    yes, no = [], []
    for entry in entries:
        if math.isnan(entry.logprob):
            continue
        side = vocab.side(entry)
        if side is True:
            yes.append(entry.logprob)
        elif side is False:
            no.append(entry.logprob)
    if not yes and not no:
        return None
    if truncated and (not yes or not no):
        floor = min(entry.logprob for entry in entries if not math.isnan(entry.logprob))
        (yes if not yes else no).append(floor)
    lse_yes = _logsumexp(yes) if yes else -math.inf
    lse_no = _logsumexp(no) if no else -math.inf
    if lse_yes == -math.inf and lse_no == -math.inf:
        return None
    if lse_no == -math.inf:
        return 1.0
    if lse_yes == -math.inf:
        return 0.0
    # sigmoid of the log-odds: the yes mass over the yes + no mass, without overflow
    diff = lse_yes - lse_no
    if diff >= 0:
        return 1.0 / (1.0 + math.exp(-diff))
    odds = math.exp(diff)
    return odds / (1.0 + odds)


@dataclass
class YesNoReader:
    """`yes_no_probability` with the fallback applied: 0.5 when neither side was seen, counted and logged."""

    name: str
    vocab: YesNoVocabulary
    truncated: bool = True
    answered: int = 0
    missing: int = field(default=0)

    def probability(self, entries: Sequence[TokenLogprob]) -> float:
        p = yes_no_probability(entries, self.vocab, self.truncated)
        self.answered += 1
        if p is None:
            self.missing += 1
            # first occurrence and then every 100th: a wrong token list would otherwise flood the log
            if self.missing == 1 or self.missing % 100 == 0:
                shown = sorted(entries, key=lambda e: -e.logprob)[:5]
                logger.warning(
                    "expert {}: no yes/no token among the answer candidates ({} of {} answers so far); "
                    "answering 0.5. Top candidates: {}",
                    self.name,
                    self.missing,
                    self.answered,
                    [(e.token, e.token_id, round(e.logprob, 3)) for e in shown],
                )
            return 0.5
        return min(1.0, max(0.0, p))


def user_messages(question: str, image: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """One user turn holding the image (first, as VLM chat formats expect) and the question.

    `image` is the content part: {"type": "image"} for a transformers chat template, or
    {"type": "image_url", "image_url": {"url": ...}} for an OpenAI-compatible server.
    """
    part = image if image is not None else {"type": "image"}
    return [{"role": "user", "content": [part, {"type": "text", "text": question}]}]


def build_prompt(processor: Any, question: str) -> str:
    """The model's own chat-formatted prompt for the question, ending where the assistant's answer begins.

    It is the same text for every image (only the image differs), so it is built once at load, and engines
    with prefix caching reuse the shared prefix.
    """
    template_owner = processor if getattr(processor, "chat_template", None) else getattr(processor, "tokenizer", None)
    if template_owner is None or not getattr(template_owner, "chat_template", None):
        raise ValueError("the model's processor has no chat template; a VLM backend needs one to place the image")
    prompt = template_owner.apply_chat_template(user_messages(question), add_generation_prompt=True, tokenize=False)
    if not isinstance(prompt, str):
        raise ValueError(f"chat template returned {type(prompt).__name__}, expected text")
    return prompt


def vlm_input_side(max_pixels: int) -> int:
    """Shorter side the VLM needs: an image whose both sides reach it holds at least `max_pixels`."""
    return math.isqrt(max_pixels) + 1


class VLMExpert(Expert):
    """What the three VLM backends share: images are looked at up to `options.max_pixels`."""

    def input_side(self) -> int | None:
        return vlm_input_side(self.options.max_pixels)


def fit_pixels(height: int, width: int, max_pixels: int) -> tuple[int, int]:
    """(height, width) scaled down, aspect kept, to at most `max_pixels`; never scaled up."""
    if height * width <= max_pixels:
        return height, width
    scale = math.sqrt(max_pixels / (height * width))
    return max(1, math.floor(height * scale)), max(1, math.floor(width * scale))


def to_pil_within(image: np.ndarray, max_pixels: int) -> Image.Image:
    """An RGB PIL image of at most `max_pixels`: visual tokens (and latency) grow with pixels, not information."""
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected HxWx3 uint8 images, got shape {image.shape} dtype {image.dtype}")
    pil = Image.fromarray(np.ascontiguousarray(image))
    height, width = fit_pixels(image.shape[0], image.shape[1], max_pixels)
    if (height, width) != image.shape[:2]:
        # reducing_gap: a cheap box pre-shrink, then bilinear; near-antialiased quality at a fraction of the cost
        pil = pil.resize((width, height), Image.Resampling.BILINEAR, reducing_gap=2.0)
    return pil


def single_token_ids(tokenizer: Any, strings: Sequence[str]) -> dict[str, int]:
    """The token id of each string that the tokenizer encodes as exactly one token; others are left out.

    A string split into several tokens ("yes" -> "y", "es") cannot be read from one position, and taking its
    first piece would count unrelated words.
    """
    ids: dict[str, int] = {}
    for text in strings:
        encoded = tokenizer.encode(text, add_special_tokens=False)
        if len(encoded) == 1:
            ids[text] = int(encoded[0])
    return ids


def yes_no_token_ids(
    tokenizer: Any, yes_tokens: Sequence[str], no_tokens: Sequence[str]
) -> tuple[list[int], list[int]]:
    """Distinct single-token ids of the yes and of the no strings; an error when a side has none or they overlap."""
    yes, no = single_token_ids(tokenizer, yes_tokens), single_token_ids(tokenizer, no_tokens)
    skipped = [t for t in (*yes_tokens, *no_tokens) if t not in yes and t not in no]
    if skipped:
        logger.warning("yes/no strings {} are not single tokens of this tokenizer and are ignored", skipped)
    if not yes or not no:
        raise ExpertError(
            f"no single-token {'yes' if not yes else 'no'} string among {list(yes_tokens if not yes else no_tokens)}; "
            "set options.yes_tokens / options.no_tokens to tokens of this model"
        )
    yes_ids, no_ids = sorted(set(yes.values())), sorted(set(no.values()))
    overlap = set(yes_ids) & set(no_ids)
    if overlap:
        raise ExpertError(f"yes and no strings share token ids {sorted(overlap)}")
    return yes_ids, no_ids
