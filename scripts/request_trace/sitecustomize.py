"""Loaded by Python at start-up when this folder is on PYTHONPATH (a measurement aid, never on the miner's path).

With SN72_TRACE_ROOT (a checkout) and SN72_TRACE_OUT set, every Python call into that checkout's runtime packages
(neurons/, cascade/) is recorded with its thread and a monotonic time stamp, in every thread, and written to
SN72_TRACE_OUT.<pid> at exit or on SIGUSR2. `trace_one_request.py` drives it.
"""

import atexit
import contextlib
import os
import signal
import sys
import threading
import time

ROOT = os.environ.get("SN72_TRACE_ROOT")
OUT = os.environ.get("SN72_TRACE_OUT")

if ROOT and OUT:
    _prefixes = tuple(os.path.join(ROOT, package) + os.sep for package in ("neurons", "cascade"))
    _events: list[tuple[float, str, str, str]] = []
    _now = time.monotonic
    _thread = threading.current_thread

    def _record(frame, event, arg):  # type: ignore[no-untyped-def]
        if event == "call":
            name = frame.f_code.co_filename
            if name.startswith(_prefixes):
                _events.append((_now(), _thread().name, name[len(ROOT) + 1:], frame.f_code.co_name))

    def _dump(*_: object) -> None:
        with open(f"{OUT}.{os.getpid()}", "w") as out:
            out.writelines(f"{stamp:.6f}\t{thread}\t{path}\t{function}\n"
                           for stamp, thread, path, function in list(_events))

    sys.setprofile(_record)
    threading.setprofile(_record)
    atexit.register(_dump)
    with contextlib.suppress(ValueError):  # not the main thread
        signal.signal(signal.SIGUSR2, _dump)
