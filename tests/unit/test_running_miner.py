"""How the miner's tools find the running miner and read a reload's outcome (neurons/running.py,
neurons/reload_command.py), where no miner is needed to tell: a config without a metrics port, a metrics port held by
another program, and the exit code of each outcome."""

from __future__ import annotations

from pathlib import Path

import pytest

from neurons.config import MinerConfig
from neurons.reload import RESTART_EXIT_CODE
from neurons.reload_command import EXIT_REFUSED, EXIT_SERVING, report
from neurons.running import NotRunning, find_running
from tests.factories.local_http import local_http_server


def config(metrics_port: int) -> MinerConfig:
    return MinerConfig.model_validate({"cascade_file": Path("cascade.yaml"), "metrics": {"port": metrics_port},
                                       "axon": {"port": 1}})


def test_a_config_without_a_metrics_port_is_refused_with_what_to_do():
    with pytest.raises(NotRunning, match=r"metrics.port is 0 in this config.*set metrics.port.*kill -HUP"):
        find_running(config(0))


def test_a_metrics_port_held_by_another_program_is_not_taken_for_a_miner():
    def not_a_miner(method: str, path: str, headers: object, body: bytes) -> tuple[int, str, bytes]:
        return 404, "", b""

    with local_http_server(not_a_miner) as url, \
            pytest.raises(NotRunning, match="answers 404: the metrics port is held by something that is not"):
        find_running(config(int(url.rsplit(":", 1)[1])))


@pytest.mark.parametrize(("outcome", "restart", "code"), [
    ("models", False, EXIT_SERVING), ("calibration", False, EXIT_SERVING), ("unchanged", False, EXIT_SERVING),
    ("refused_warmup", False, EXIT_REFUSED), ("failed", False, EXIT_REFUSED),
    ("refused_placement", True, RESTART_EXIT_CODE),
])
def test_each_outcome_has_its_exit_code(capsys, outcome, restart, code):
    last = {"outcome": outcome, "message": "the miner's line", "seconds": 0.1}
    assert report({"serving": "v+id.b", "restart_requested": restart}, last, "v+id.a") == code
    said = capsys.readouterr()
    assert "the miner's line" in said.out + said.err or outcome == "unchanged"
