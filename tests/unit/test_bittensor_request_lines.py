"""bittensor's per-request ERROR lines are dropped from the log (the outcomes count them), whatever the exception's
text: one with none (Starlette's ClientDisconnect) came out as `ClientDisconnect#<uuid>:` and got through.

The records are built as bittensor's axon writes them (its message format, its LoggingMachine's stripping, its
file as the caller): the bittensor logger's own state is shared with every other test of the process.
"""

from __future__ import annotations

import logging
import uuid

import bittensor.core.axon as bittensor_axon
import pytest
from bittensor.utils.btlogging.loggingmachine import _concat_message
from starlette.requests import ClientDisconnect

from neurons.outcomes import DropAxonErrorLines


def axon_error_record(exception: Exception) -> logging.LogRecord:
    """The record `log_and_handle_error` makes: f"{type}#{uuid}: {exception}", stripped by bittensor's logger."""
    message = _concat_message(f"{type(exception).__name__}#{uuid.uuid4()}: {exception}")
    return logging.LogRecord("bittensor", logging.ERROR, bittensor_axon.__file__, 1047, message, None, None)


@pytest.mark.parametrize("exception", [ClientDisconnect(), RuntimeError("the handler broke"), ValueError("")])
def test_a_per_request_error_line_of_bittensors_axon_is_dropped(exception):
    dropper = DropAxonErrorLines()
    assert dropper.filter(axon_error_record(exception)) is False
    assert dropper.dropped == 1


def test_other_lines_are_kept():
    dropper = DropAxonErrorLines()
    own = logging.LogRecord("bittensor", logging.ERROR, __file__, 1, "RuntimeError#not-a-uuid: x", None, None)
    axon_but_not_per_request = logging.LogRecord("bittensor", logging.ERROR, bittensor_axon.__file__, 1,
                                                 "Axon started on port 8091", None, None)
    assert dropper.filter(own) and dropper.filter(axon_but_not_per_request)
    assert dropper.dropped == 0
