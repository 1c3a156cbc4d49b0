"""The real miner process: it answers ExtendedImageSynapse with its model_url, and notices deregistration."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import pytest

from neurons.chain import Neuron, write_metagraph_json
from neurons.protocol import ExtendedImageSynapse, ImageSynapse
from sn72_lab.offline import MinerProcess, make_wallets, run_miner
from sn72_lab.tiny_models import build_tiny_vit
from sn72_tools.client import axon_info, encode_jpeg, synthetic_image
from tests.factories.cascades import cascade_of, level, vit_expert
from tests.factories.dendrites import dendrite_of
from tests.factories.metrics import families

pytestmark = pytest.mark.slow

MODEL_URL = "https://huggingface.co/someone/sn72-cascade"


def tiny_cascade(model: Path) -> dict:
    return cascade_of(level(vit_expert(model, max_batch=4)), version="e2e", release="1.0.0")


def send(process: MinerProcess, wallet, synapse_cls: type[ImageSynapse]) -> ImageSynapse:
    async def go() -> ImageSynapse:
        async with dendrite_of(wallet) as dendrite:
            responses = await dendrite.forward(axons=[axon_info("127.0.0.1", process.port, process.hotkey)],
                                               synapse=synapse_cls(image=encode_jpeg(synthetic_image(7))),
                                               deserialize=False, timeout=9.0)
            return responses[0]

    return asyncio.run(go())


def registration_metrics(process: MinerProcess) -> tuple[float, float]:
    scraped = families(process.metrics_port)
    values = {name: scraped[name].samples[0].value for name in ("sn72_miner_registered", "sn72_miner_uid")}
    return values["sn72_miner_registered"], values["sn72_miner_uid"]


def wait_for(condition, what: str, timeout_s: float = 30.0) -> None:
    """The miner re-reads its metagraph file every 2 s; wait for the observable effect, bounded."""
    until = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < until, f"timed out waiting for {what}"
        time.sleep(0.1)


def test_model_url_is_answered_and_deregistration_is_noticed(tmp_path):
    wallets = make_wallets(tmp_path)
    model = build_tiny_vit(tmp_path / "models" / "tiny-vit")
    extra = {"natix": {"model_url": MODEL_URL}}
    with run_miner(tmp_path, wallets.path, wallets.miner, tiny_cascade(model), extra=extra) as process:
        extended = send(process, wallets.validator, ExtendedImageSynapse)
        assert extended.dendrite.status_code == 200 and 0.0 <= extended.prediction <= 1.0
        assert extended.model_url == MODEL_URL
        plain = send(process, wallets.validator, ImageSynapse)
        assert plain.dendrite.status_code == 200 and not hasattr(plain, "model_url")
        assert registration_metrics(process) == (1.0, 0.0)

        miner = wallets.miner.hotkey.ss58_address
        validator = Neuron(1, wallets.validator.hotkey.ss58_address, True, 5000.0)
        metagraph = tmp_path / "metagraph.json"

        def rewrite(neurons: list[Neuron], bump_s: float) -> None:
            write_metagraph_json(metagraph, 72, neurons)
            os.utime(metagraph, (time.time() + bump_s, time.time() + bump_s))  # distinct mtime on coarse clocks

        rewrite([Neuron(0, "someone-new", False, 0.0), validator, Neuron(2, miner, False, 0.0)], 5)
        wait_for(lambda: registration_metrics(process) == (1.0, 2.0), "the uid change")
        assert any("uid changed on netuid 72: 0 -> 2" in line for line in process.lines)

        rewrite([Neuron(0, "someone-new", False, 0.0), validator], 10)
        wait_for(lambda: registration_metrics(process) == (0.0, -1.0), "the deregistration")
        wait_for(lambda: any("DEREGISTERED: hotkey " + miner in line for line in process.lines), "the log line", 5)
        assert process.alive()
        assert send(process, wallets.validator, ExtendedImageSynapse).model_url == MODEL_URL
