"""Metagraph sources: the offline file is re-read when it changes; a chain metagraph converts exactly."""

from __future__ import annotations

import os
import time

import numpy as np

from neurons.chain import Neuron, chain_source, offline_source, write_metagraph_json


def test_the_offline_file_is_reloaded_when_it_changes(tmp_path):
    path = tmp_path / "metagraph.json"
    write_metagraph_json(path, 72, [Neuron(0, "miner", False, 0.0)])
    source = offline_source(path, interval_s=0.05).start()
    try:
        assert source.snapshot.get("val") is None
        write_metagraph_json(path, 72, [Neuron(0, "miner", False, 0.0), Neuron(1, "val", True, 10.0)])
        os.utime(path, (time.time() + 5, time.time() + 5))  # a distinct mtime even on coarse clocks
        until = time.monotonic() + 5
        while source.snapshot.get("val") is None:
            assert time.monotonic() < until, "the changed file was not re-read"
            time.sleep(0.01)
        assert source.snapshot.get("val").stake == 10.0
        path.write_text("{broken")  # a bad edit keeps the last good snapshot
        os.utime(path, (time.time() + 10, time.time() + 10))
        time.sleep(0.2)
        assert source.snapshot.get("val") is not None
    finally:
        source.stop()


class _Chain:
    """Stands in for the network only: hands out a real bittensor Metagraph object."""

    def __init__(self, metagraph) -> None:
        self.metagraph_object = metagraph

    def metagraph(self, netuid: int, lite: bool = True):
        assert netuid == 72 and lite
        return self.metagraph_object


def test_a_chain_metagraph_converts_hotkeys_permits_and_stake():
    import bittensor as bt

    metagraph = bt.Metagraph(netuid=72, network="finney", lite=True, sync=False)
    metagraph.uids = np.array([0, 1, 2])
    metagraph.validator_permit = np.array([False, True, False])
    metagraph.stake = np.array([0.0, 5000.0, 12.5])
    metagraph.axons = [bt.AxonInfo(version=0, ip="0.0.0.0", port=0, ip_type=4, hotkey=h, coldkey="c")
                       for h in ("hk-miner", "hk-validator", "hk-peer")]
    source = chain_source(_Chain(metagraph), 72, interval_s=600)
    validator = source.snapshot.get("hk-validator")
    assert validator == Neuron(1, "hk-validator", True, 5000.0)
    assert source.snapshot.get("hk-peer") == Neuron(2, "hk-peer", False, 12.5)
    assert source.snapshot.get("stranger") is None
