"""Real and synthetic images in one training set: `--synthetic DIR --synthetic-share S`.

Each epoch holds every real training image once plus `round(n_real * S / (1 - S))` synthetic ones, so that S of
the epoch's samples are synthetic; the synthetic images are drawn afresh each epoch (a seeded permutation of the
synthetic set, repeated when the epoch needs more than the set holds), so over epochs every synthetic image is
used about equally. The Trainer shuffles the epoch's indices as usual.

Synthetic images train only: they are read after the real images have their roles, never enter the dev or fit
sets (so neither early stopping, the run's verdicts nor `--refit`'s calibration ever sees one), and an image that
is also a real image of any role, or one `--exclude` names, is dropped from the synthetic side. They are recorded
in the model's lineage (`sn72_data.json`) as trained on, so the eval tool and `sn72-promote` refuse them in a later
fit or judge set.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from sn72_tools.training.data import Example
from sn72_tools.training.model import PixelSet
from sn72_tools.training.recipe import TrainError


def synthetic_per_epoch(real: int, share: float) -> int:
    """How many synthetic samples an epoch of `real` real images holds so that `share` of it is synthetic."""
    if not 0.0 <= share < 1.0:
        raise TrainError(f"--synthetic-share must be in [0, 1), got {share}")
    return round(real * share / (1.0 - share))


@dataclass
class SyntheticSide:
    """The synthetic images kept for training, and what was dropped (already a real image, or excluded)."""

    examples: list[Example]
    dropped: int
    source: str


def keep_for_training(synthetic: Sequence[Example], taken: Collection[str], source: str) -> SyntheticSide:
    """The synthetic images whose content hash no real role (train, dev, fit) nor --exclude holds."""
    kept = [e for e in synthetic if e.sha256 not in taken]
    if not kept:
        raise TrainError(f"--synthetic {source}: no readable labelled image that is not already a real image of the "
                         "run or excluded")
    return SyntheticSide(kept, len(synthetic) - len(kept), source)


class MixedSet(torch.utils.data.Dataset[dict[str, Any]]):
    """Every real image once per epoch, then `synthetic_per_epoch` synthetic ones drawn for that epoch (seeded)."""

    def __init__(self, real: PixelSet, synthetic: PixelSet, share: float, seed: int = 0) -> None:
        if len(synthetic) == 0:
            raise TrainError("--synthetic: the synthetic set is empty")
        self.real = real
        self.synthetic = synthetic
        self.share = share
        self.seed = seed
        self.per_epoch = synthetic_per_epoch(len(real), share)
        self.epoch = 0
        self.draw = self._draw(0)

    def _draw(self, epoch: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, epoch, 0x5E7])
        rounds = -(-self.per_epoch // len(self.synthetic)) if self.per_epoch else 0
        order = [rng.permutation(len(self.synthetic)) for _ in range(rounds)]
        return np.concatenate(order)[: self.per_epoch] if order else np.zeros(0, dtype=np.int64)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.real.set_epoch(epoch)
        self.synthetic.set_epoch(epoch)
        self.draw = self._draw(epoch)

    def __len__(self) -> int:
        return len(self.real) + self.per_epoch

    def is_synthetic(self, index: int) -> bool:
        return index >= len(self.real)

    def source_example(self, index: int) -> Example:
        """The image behind sample `index` of the current epoch."""
        if index < len(self.real):
            return self.real.examples[index]
        return self.synthetic.examples[int(self.draw[index - len(self.real)])]

    def __getitem__(self, index: int) -> dict[str, Any]:
        if index < len(self.real):
            return self.real[index]
        return self.synthetic[int(self.draw[index - len(self.real)])]
