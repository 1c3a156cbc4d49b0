"""What a decode costs in a worker process (cascade/decode_pool.py) against the decode thread, per image.

For a validator's 640x480 JPEG (decoded for a 224 input, as the engine does) and a 1920x1080 progressive one:
wall time per image in the calling thread (`decode_image`) and through `IsolatedDecoder` (send the bytes, decode in
the worker, read the pixels back), one at a time, after a warm-up; and how long a worker takes to start, which is
what a killed worker's replacement costs.

    .venv/bin/python scripts/decode_pool_overhead.py --images 200 --repeats 3
"""

from __future__ import annotations

import argparse
import asyncio
import io
import statistics
import time

import numpy as np
from PIL import Image

from cascade.config import DecodeConfig
from cascade.decode import HeavyImage, MemoryBudget, decode_image, decode_or_isolate
from cascade.decode_pool import IsolatedDecoder

MIN_SIDE = 224


def jpeg(width: int, height: int, seed: int, progressive: bool) -> bytes:
    rng = np.random.default_rng(seed)
    small = Image.fromarray(rng.integers(0, 256, (12, 16, 3), dtype=np.uint8))
    buffer = io.BytesIO()
    small.resize((width, height), Image.Resampling.BICUBIC).save(buffer, "JPEG", quality=75, progressive=progressive)
    return buffer.getvalue()


def per_image_ms(images: list[bytes], limits: DecodeConfig, pool: IsolatedDecoder | None) -> float:
    began = time.perf_counter()
    if pool is None:
        for data in images:
            decode_image(data, limits, MIN_SIDE)
    else:
        async def all_of_them() -> None:
            for data in images:
                heavy = decode_or_isolate(data, limits, MIN_SIDE, isolate_above=-1)
                assert isinstance(heavy, HeavyImage)
                await pool.decode(heavy, "bench", 1.0, time.monotonic() + 30)

        asyncio.run(all_of_them())
    return (time.perf_counter() - began) / len(images) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    limits = DecodeConfig(isolated_workers=1, isolate_above_work=0)
    pool = IsolatedDecoder(limits, MemoryBudget(limits.budget_bytes))
    starts = []
    for _ in range(3):
        began = time.perf_counter()
        for started in pool.prestart():
            started.result(60)
        starts.append((time.perf_counter() - began) * 1000)
        pool.close()
        pool = IsolatedDecoder(limits, MemoryBudget(limits.budget_bytes))
    for started in pool.prestart():
        started.result(60)
    print(f"worker start to ready: {', '.join(f'{s:.0f}' for s in starts)} ms")
    try:
        for name, (width, height, progressive) in {"640x480 baseline": (640, 480, False),
                                                   "1920x1080 progressive": (1920, 1080, True)}.items():
            images = [jpeg(width, height, seed, progressive) for seed in range(args.images)]
            per_image_ms(images[:20], limits, None)
            per_image_ms(images[:20], limits, pool)
            thread = [per_image_ms(images, limits, None) for _ in range(args.repeats)]
            worker = [per_image_ms(images, limits, pool) for _ in range(args.repeats)]
            extra = [w - t for w, t in zip(worker, thread, strict=True)]
            print(f"{name}: thread {statistics.mean(thread):.2f} ms/image ({min(thread):.2f}-{max(thread):.2f}), "
                  f"worker process {statistics.mean(worker):.2f} ({min(worker):.2f}-{max(worker):.2f}), "
                  f"overhead {statistics.mean(extra):+.2f} ms ({min(extra):+.2f} to {max(extra):+.2f})")
    finally:
        pool.close()


if __name__ == "__main__":
    main()
