"""A fixed metagraph for a miner served in the test's own process: the miner at uid 0 without a permit, then the
given signers as validators with a permit (the shape every in-process security test uses)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from neurons.chain import MetagraphSnapshot, Neuron


class StaticMetagraph:
    """Stands in for the chain: the miner reads `.snapshot` and nothing ever changes it."""

    def __init__(self, snapshot: MetagraphSnapshot) -> None:
        self.snapshot = snapshot


def validators_snapshot(miner_hotkey: str, signers: Sequence[Any], stake: float = 1000.0) -> MetagraphSnapshot:
    return MetagraphSnapshot.of(72, [Neuron(0, miner_hotkey, False, 0.0)] + [
        Neuron(i + 1, signer.ss58_address, True, stake) for i, signer in enumerate(signers)])
