"""ViT-B/16's batch-1 forward on one GPU: device time of the eager forward in a CUDA graph against torch.compile'd
forwards (inductor's default mode and max-autotune-no-cudagraphs) in one, with each one's kernel count and top kernels.

    PYTHONPATH=. python3 scripts/forward_variants.py OUT.json      (after `sn72-make-tiny-models --out .bench/models
                                                                    --device cuda:0 vit-b16`; ~4 minutes on an H100)

The experiment behind `compile_max_batch` (docs/performance.md, "Where batch 1 goes").
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

from cascade.config import load_cascade
from cascade.experts.cuda_graphs import GraphedForward
from cascade.experts.hf_classifier import eager_logits
from cascade.experts.registry import build_expert
from sn72_lab.bench_stages import device_times

out = sys.argv[1]

first = load_cascade(Path("config/cascade.bench-gpu.yaml")).levels[0].experts[0]
config = first.model_copy(update={"options": {**first.options, "cuda_graphs": False}})
expert: Any = build_expert(config, "cuda:0")
expert.load()
model = expert.model
x = torch.randn(1, 3, 224, 224, device="cuda:0", dtype=torch.bfloat16)
report: dict = {"torch": torch.__version__, "attn": getattr(model.config, "_attn_implementation", None)}


def device_ms(fn, reps=200):
    times = sorted(device_times(fn, x, reps, warmup=20))
    return {"p50": times[len(times) // 2], "p10": times[len(times) // 10]}


def kernels(fn):
    from torch.profiler import ProfilerActivity, profile

    with torch.inference_mode():
        fn(x)
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            fn(x)
            torch.cuda.synchronize()
    events = [e for e in prof.key_averages() if e.device_time_total > 0]
    total = sum(e.count for e in events)
    top = sorted(events, key=lambda e: -e.device_time_total)[:12]
    return {"kernels": total, "top": [(e.key[:80], e.count, round(e.device_time_total / 1000, 3)) for e in top]}


eager = eager_logits(model)
report["eager_kernels"] = kernels(eager)
graphed = GraphedForward(eager, (3, 224, 224), 1, "cuda:0", torch.bfloat16)
report["graphed_eager"] = device_ms(graphed)
print(json.dumps(report, indent=1), flush=True)
for mode in ("default", "max-autotune-no-cudagraphs"):
    try:
        torch._dynamo.reset()
        compiled = torch.compile(eager, mode=mode, dynamic=False, fullgraph=True)
        t0 = time.monotonic()
        with torch.inference_mode():
            compiled(x)
        torch.cuda.synchronize()
        compile_s = time.monotonic() - t0
        g = GraphedForward(compiled, (3, 224, 224), 1, "cuda:0", torch.bfloat16)
        report[f"compiled_{mode}"] = {"compile_s": compile_s, **device_ms(g), **kernels(compiled)}
    except Exception as exc:  # noqa: BLE001
        report[f"compiled_{mode}"] = {"error": repr(exc)[:500]}
    print(json.dumps(report[f"compiled_{mode}"], indent=1), flush=True)
with open(out, "w") as f:
    json.dump(report, f, indent=1)
