"""The validators' wire protocol, field for field (docs/protocol.md): route names are the class names.

Importable without torch. `get_required_fields` is cached per class: the stock implementation
rebuilds the pydantic JSON schema for every response header set (2-4 ms per response in 10.5).
"""

from typing import ClassVar

import bittensor as bt
import pydantic


class ImageSynapse(bt.Synapse):
    """A base64 image in; P(roadwork) in [0, 1] out (validators round at 0.5, which counts as 'no')."""

    # Set False to measure the stock per-response schema cost (scripts/bench_axon.py does).
    cache_required_fields: ClassVar[bool] = True
    _required_cache: ClassVar[dict[type, list[str]]] = {}

    testnet_label: int = -1  # ground truth, filled by validators on testnet only

    image: str = pydantic.Field(title="Image", description="A base64 encoded image", default="", frozen=False)

    prediction: float = pydantic.Field(
        title="Prediction",
        description="Probability that the image shows roadwork",
        default=-1.0,
        frozen=False,
    )

    def deserialize(self) -> float:  # type: ignore[override]  # validators read a float
        return self.prediction

    def get_required_fields(self) -> list[str]:
        cls = type(self)
        if not cls.cache_required_fields:
            return super().get_required_fields()
        cached = ImageSynapse._required_cache.get(cls)
        if cached is None:
            cached = list(super().get_required_fields())
            ImageSynapse._required_cache[cls] = cached
        return cached


class ExtendedImageSynapse(ImageSynapse):
    """What an older validator build sent: the same plus two fields the miner may leave empty."""

    model_url: str = ""
    explanation: str = pydantic.Field(
        title="Explanation",
        description="Textual explanation of visual indicators for roadwork detection",
        default="",
        frozen=False,
    )
