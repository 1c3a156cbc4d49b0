"""Process-wide settings the miner runs under, applied by whoever owns the process: the miner's entry point
(neurons/miner.py) and the tools whose measurements must match it (sn72_lab's benches, eval mode).

The engine is a service inside a process, not the process: it sets none of these itself. Two moments matter:
before the models load (the interpreter's switch interval and the allocator's threshold, so that loading and warm-up
already run under them) and after they load (the heap frozen, once, with the models in it).
`start_with_process_settings` does both around `Engine.start`, in that order.
"""

from __future__ import annotations

import gc
import sys
from typing import TYPE_CHECKING

from cascade.allocator import return_large_blocks
from cascade.config import EngineConfig

if TYPE_CHECKING:
    from cascade.engine import Engine, StartupReport


def apply_process_settings(config: EngineConfig) -> None:
    """Before the models load: the interpreter's thread switch interval and the C allocator's mmap threshold."""
    # Expert threads drop the GIL inside every torch call and must win it back from the loop and decode threads; at
    # Python's 5 ms default a batch of small calls waits longer for the GIL than for the GPU.
    sys.setswitchinterval(config.scheduler.gil_switch_interval_ms / 1000.0)
    return_large_blocks(config.decode.mmap_threshold_bytes)


def freeze_heap() -> None:
    """After the models load: collect once, then keep everything alive now (models, libraries) out of later
    collections.

    With torch and transformers loaded a full collection scans millions of objects: 0.1-0.3 s with the
    GIL held, every few thousand requests, which stalled every request in flight (measured: 30 requests
    at 0.3-0.5 s in a 3,000-request run). Frozen objects are still freed by reference counting; a reload
    that frees models unfreezes, collects and freezes again (cascade/replicas.py `Replicas.discard`).
    """
    gc.collect()
    gc.freeze()


def start_with_process_settings(engine: Engine) -> StartupReport:
    """`engine.start()` in a process set up as the miner's: settings before its models load, the heap frozen after."""
    apply_process_settings(engine.config)
    report = engine.start()
    freeze_heap()
    return report
