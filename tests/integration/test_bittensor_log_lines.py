"""bittensor's own log lines reach the miner's log once, in the miner's format (and, in a front, with its mark).

bittensor gives its logger a console handler of its own and also passes each record on to the root logger, where the
miner's handler writes it: every bittensor warning was written twice in the miner process, once coloured and
unformatted; a front process wrote it only in bittensor's way, without `front N`. Each check runs in a fresh
interpreter, as the miner and its fronts do, with stdout and stderr read together.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.slow

MARK = "a-bittensor-warning-4711"


def output_of(code: str) -> str:
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout + done.stderr


def test_the_miner_process_writes_a_bittensor_warning_once_in_its_own_format():
    out = output_of(f"""
        import logging, time
        import bittensor
        from neurons.config import LogConfig
        from neurons.logs import configure
        configure(LogConfig(), "INFO")
        logging.getLogger("bittensor").warning("{MARK}")
        time.sleep(0.5)  # bittensor's handler writes from a thread of its own
    """)
    lines = [line for line in out.splitlines() if MARK in line]
    assert len(lines) == 1, out
    assert "| WARNING  |" in lines[0] and f"bittensor: {MARK}" in lines[0] and "\x1b[" not in lines[0], lines


def test_a_front_process_marks_bittensor_warnings_as_its_own_lines():
    out = output_of(f"""
        import logging, time, types
        import bittensor
        from neurons.front import _configure_logs
        _configure_logs(types.SimpleNamespace(log_level="INFO"), 3)
        logging.getLogger("bittensor").warning("{MARK}")
        time.sleep(0.5)
    """)
    lines = [line for line in out.splitlines() if MARK in line]
    assert len(lines) == 1, out
    assert f"| front 3 | bittensor: {MARK}" in lines[0] and "\x1b[" not in lines[0], lines


def test_a_library_warning_is_one_line_of_the_log_not_two_bare_ones():
    out = output_of(f"""
        import warnings
        from neurons.config import LogConfig
        from neurons.logs import configure
        configure(LogConfig(), "INFO")
        warnings.warn("{MARK}", UserWarning, stacklevel=1)
    """)
    lines = [line for line in out.splitlines() if MARK in line]
    assert len(lines) == 1 and "| WARNING  |" in lines[0] and "py.warnings: " in lines[0], out
    assert "warnings.warn(" not in out, out  # Python's own display adds the source line as a second, bare line
