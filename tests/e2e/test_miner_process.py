"""The real miner process on loopback, queried by real bittensor dendrites with throwaway wallets."""

from __future__ import annotations

import base64
import io
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cascade.config import DecodeConfig
from neurons.protocol import ExtendedImageSynapse
from sn72_lab.offline import make_wallets, run_miner
from sn72_lab.tiny_models import build_tiny_vit
from sn72_tools.client import encode_jpeg, synthetic_image
from tests.factories.cascades import vit_cascade
from tests.factories.dendrites import ask as ask_miner
from tests.factories.engine import wait_for
from tests.factories.metrics import axon_outcomes, families
from tests.factories.processes import children_of, gone

pytestmark = pytest.mark.slow


def tiny_cascade(model: Path) -> dict:
    return vit_cascade(model, max_batch=8, max_wait_ms=2.0)


@pytest.fixture(scope="module")
def tiny_vit(tmp_path_factory) -> Path:
    """One tiny ViT for the module: every miner here serves the same (read-only) model folder."""
    return build_tiny_vit(tmp_path_factory.mktemp("models") / "tiny-vit")


@pytest.fixture(scope="module")
def miner(tmp_path_factory, tiny_vit):
    folder = tmp_path_factory.mktemp("miner")
    wallets = make_wallets(folder)
    limits = {"decode": {"max_pixels": 1_000_000, "max_decode_pixels": 4_000_000, "oversize": "downscale"}}
    with run_miner(folder, wallets.path, wallets.miner, tiny_cascade(tiny_vit), extra=limits) as process:
        yield process, wallets


def ask(miner_and_wallets, who: str, payloads: list[str], synapse_cls=None):
    """`payloads` signed by the module's wallet `who` (validator, non_validator, stranger)."""
    process, wallets = miner_and_wallets
    return ask_miner(process, getattr(wallets, who), payloads, synapse_cls=synapse_cls)


def png_b64(width: int, height: int) -> str:
    image = Image.fromarray(np.zeros((height, width, 3), np.uint8) + 90)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def test_a_validator_gets_probabilities(miner):
    outcomes = ask(miner, "validator", [encode_jpeg(synthetic_image(i, (320 + i * 50, 240))) for i in range(6)])
    assert all(o.status_code == 200 for o in outcomes), outcomes
    assert all(0.0 <= o.prediction <= 1.0 for o in outcomes)
    extended = ask(miner, "validator", [encode_jpeg(synthetic_image(99))], synapse_cls=ExtendedImageSynapse)
    assert extended[0].status_code == 200 and 0.0 <= extended[0].prediction <= 1.0


def test_strangers_and_non_validators_are_refused_without_harm(miner):
    stranger = ask(miner, "stranger", [encode_jpeg(synthetic_image(1))])[0]
    peer = ask(miner, "non_validator", [encode_jpeg(synthetic_image(2))])[0]
    assert stranger.status_code == 403 and "not registered" in stranger.message
    assert peer.status_code == 403 and "validator permit" in peer.message
    assert stranger.prediction == -1.0 and peer.prediction == -1.0
    assert miner[0].alive()
    assert ask(miner, "validator", [encode_jpeg(synthetic_image(3))])[0].status_code == 200


def test_bad_payloads_get_a_clear_error(miner):
    bad_base64, not_image = ask(miner, "validator", ["%%% definitely not base64 %%%",
                                                     base64.b64encode(b"just some text").decode()])
    assert bad_base64.status_code == 400 and "invalid base64" in bad_base64.message
    assert not_image.status_code == 400 and "not a readable image" in not_image.message
    assert miner[0].alive()


def test_huge_images_are_downscaled_or_refused_never_crashing(miner):
    downscaled, refused = ask(miner, "validator", [png_b64(2000, 1000), png_b64(3000, 2000)])
    assert downscaled.status_code == 200 and 0.0 <= downscaled.prediction <= 1.0
    assert refused.status_code == 400 and "hard limit" in refused.message
    assert miner[0].alive()
    assert ask(miner, "validator", [encode_jpeg(synthetic_image(4))])[0].status_code == 200


def test_metrics_are_exposed_in_prometheus_format(miner):
    process, _ = miner
    # The module's miner is shared: count what this test causes, from a reading taken before it.
    refused_before = axon_outcomes(process.metrics_port).get("refused_bad_image", 0.0)
    bad = ["%%% definitely not base64 %%%", base64.b64encode(b"just some text").decode()]
    outcomes = ask(miner, "validator", [encode_jpeg(synthetic_image(5)), *bad])
    assert [o.status_code for o in outcomes] == [200, 400, 400], outcomes
    scraped = families(process.metrics_port)
    answered = sum(s.value for s in scraped["sn72_miner_requests"].samples if s.name.endswith("_total"))
    assert answered >= 1
    # counted before the 400 is sent (neurons/miner.py), so the scrape after the answers sees both
    assert axon_outcomes(process.metrics_port).get("refused_bad_image", 0.0) - refused_before == len(bad)


@pytest.mark.parametrize("worker", ["thread", "process"])
def test_sigterm_drains_and_exits_cleanly(tmp_path, tiny_vit, worker):
    wallets = make_wallets(tmp_path)
    cascade = tiny_cascade(tiny_vit)
    cascade["levels"][0]["experts"][0]["worker"] = worker
    with run_miner(tmp_path, wallets.path, wallets.miner, cascade) as process:
        # One worker process per replica (worker: process), and the decode pool's workers for costly images
        # (decode.isolated_workers, 2 by default), which the miner starts in the background once it serves.
        # With front processes (SN72_TEST_AXON_PROCESSES), those too.
        fronts = int(os.environ.get("SN72_TEST_AXON_PROCESSES") or 0)
        expected = (1 if worker == "process" else 0) + DecodeConfig().isolated_workers + fronts
        wait_for(lambda: len(children_of(process.process.pid)) == expected, timeout_s=30)
        children = children_of(process.process.pid)
        assert ask((process, wallets), "validator", [encode_jpeg(synthetic_image(6))])[0].status_code == 200
        process.process.send_signal(signal.SIGTERM)
        assert process.process.wait(30) == 0
    assert any("drained" in line for line in process.lines)
    wait_for(lambda: all(gone(pid) for pid in children), timeout_s=10)  # no worker outlives its miner


def test_query_script_reports_latency_and_scores_for_labelled_folders(miner, tmp_path):
    process, wallets = miner
    for label in ("0", "1"):
        (tmp_path / "images" / label).mkdir(parents=True)
        for i in range(3):
            synthetic_image(int(label) * 10 + i).save(tmp_path / "images" / label / f"{i}.jpg")
    report_path = tmp_path / "report.json"
    completed = subprocess.run(
        [sys.executable, "-m", "sn72_tools.query", str(tmp_path / "images"), "--wallet.name", "validator",
         "--wallet.path", str(wallets.path), "--miner", f"127.0.0.1:{process.port}",
         "--miner-hotkey", process.hotkey, "--concurrency", "3", "--json", str(report_path)],
        cwd=Path(__file__).resolve().parents[2], capture_output=True, text=True, timeout=120,
        env={**os.environ, "HOME": str(tmp_path)},
    )
    assert completed.returncode == 0, completed.stdout + completed.stderr
    report = json.loads(report_path.read_text())
    assert report["requests"] == report["answered"] == 6 and report["labelled"] == 6
    assert -1.0 <= report["mcc"] <= 1.0 and 0.0 <= report["accuracy"] <= 1.0
    assert report["latency_ms"]["p50"] > 0
