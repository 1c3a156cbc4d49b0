"""bittensor's per-request ERROR lines are dropped from the log (the outcomes count them), whatever the exception's
text: one with none (Starlette's ClientDisconnect) came out as `ClientDisconnect#<uuid>:` and got through."""

from __future__ import annotations

import logging

import pytest
from bittensor.core.axon import log_and_handle_error
from bittensor.core.synapse import Synapse
from starlette.requests import ClientDisconnect

from neurons.outcomes import DropAxonErrorLines


class Seen(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@pytest.mark.parametrize("exception", [ClientDisconnect(), RuntimeError("the handler broke"), ValueError("")])
def test_a_per_request_error_line_of_bittensors_axon_is_dropped(exception):
    bittensor = logging.getLogger("bittensor")
    dropper, seen = DropAxonErrorLines(), Seen()
    bittensor.addFilter(dropper)
    bittensor.addHandler(seen)
    try:
        log_and_handle_error(Synapse(), exception)
        bittensor.error("a line of the operator's own")  # not bittensor's axon: kept
    finally:
        bittensor.removeFilter(dropper)
        bittensor.removeHandler(seen)
    assert dropper.dropped == 1
    assert seen.lines == ["a line of the operator's own"]
