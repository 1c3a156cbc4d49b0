"""The decode memory budget holds in bytes whatever the mode (the second red-team pass, docs/security.md).

The budget counted pixels while a pixel costs 1 to 25 bytes by format and mode: 16-bit grey PNGs went through int64
at full size (~26 bytes a pixel), and three 5600x5600 ones at once took the miner from 1.0 to 2.55 GB. Each test
decodes in a fresh interpreter and reads the kernel's peak resident memory (VmHWM, reset through clear_refs), so
the figure is the decode's own: real PIL decodes, nothing mocked.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.security

MB = 1 << 20

HARNESS = textwrap.dedent('''
    import json, sys, threading
    from cascade.allocator import return_large_blocks
    from cascade.config import DecodeConfig
    from cascade.decode import decode_image
    from sn72_lab.hostile import payloads

    return_large_blocks(DecodeConfig().mmap_threshold_bytes)  # as the miner does: freed images leave the process

    def status(field):
        for line in open("/proc/self/status"):
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024

    def reset_peak():
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")

    def peak_growth(run):
        before = status("VmRSS")
        reset_peak()
        run()
        return status("VmHWM") - before
''')


def run_harness(body: str) -> dict:
    """`body` after the harness, in a fresh interpreter; it prints one JSON object."""
    script = HARNESS + textwrap.dedent(body)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_a_sixteen_bit_grey_png_decodes_in_a_few_bytes_a_pixel():
    figures = run_harness('''
        data = payloads.solid_png(2000, 2000, (40000,), bit_depth=16)
        limits = DecodeConfig(max_pixels=16_000_000)
        print(json.dumps({"growth": peak_growth(lambda: decode_image(data, limits))}))
    ''')
    per_pixel = figures["growth"] / (2000 * 2000)
    assert per_pixel <= 12, f"{per_pixel:.1f} bytes a pixel (an RGB image of that size takes ~10)"


KINDS = {  # name -> (expression building the image's bytes, DecodeConfig keywords, min_side)
    "grey16-png": ("payloads.solid_png(2000, 2000, (40000,), bit_depth=16)", {}, None),
    "grey16-png-downscaled": ("payloads.solid_png(2000, 2000, (40000,), bit_depth=16)", {"max_pixels": 500_000},
                              None),
    "rgba-png-downscaled": ("payloads.solid_png(2000, 2000, (1, 2, 3, 4))", {"max_pixels": 500_000}, None),
    "palette-png": ("payloads.encode(payloads.photo(1, (2000, 2000)).convert('P'), 'PNG')", {}, None),
    "rgb-jpeg": ("payloads.encode(payloads.photo(1, (2000, 2000)), 'JPEG')", {}, None),
    "progressive-jpeg-reduced": ("payloads.encode(payloads.photo(1, (2000, 2000)), 'JPEG', progressive=True)", {},
                                 224),
    "cmyk-jpeg": ("payloads.encode(payloads.photo(1, (2000, 2000)).convert('CMYK'), 'JPEG')", {}, None),
    "webp": ("payloads.encode(payloads.photo(1, (2000, 2000)), 'WEBP')", {}, None),
}


@pytest.mark.slow
def test_the_estimate_covers_the_peak_of_every_kind_of_image():
    body = "from cascade.decode import decode_or_isolate\nfigures = {}\n"
    for name, (build, limits, min_side) in KINDS.items():
        body += textwrap.dedent(f'''
            data = {build}
            limits = DecodeConfig(**{limits!r})
            estimate = decode_or_isolate(data, limits, {min_side}, isolate_above=-1).held_bytes
            figures[{name!r}] = [peak_growth(lambda: decode_image(data, limits, {min_side})), estimate]
        ''')
    body += "print(json.dumps(figures))\n"
    figures = run_harness(body)
    for name, (growth, estimate) in figures.items():
        assert growth <= estimate, f"{name}: peak {growth / MB:.1f} MB over its estimate {estimate / MB:.1f} MB"
        assert estimate <= 3 * growth + 4 * MB, f"{name}: estimate {estimate / MB:.1f} MB for {growth / MB:.1f} MB"


def test_concurrent_sixteen_bit_decodes_stay_within_the_budget_in_bytes():
    """Three 2400x2400 16-bit grey PNGs decoded at once with room for one: one at a time, the peak within it."""
    figures = run_harness('''
        from cascade.decode import MemoryBudget, decode_or_isolate
        limits = DecodeConfig(max_pixels=16_000_000)
        images = [payloads.solid_png(2400, 2400, (1000 * (i + 1),), bit_depth=16) for i in range(3)]
        one = decode_or_isolate(images[0], limits, isolate_above=-1).held_bytes
        budget = MemoryBudget(int(1.2 * one))
        barrier = threading.Barrier(3)

        def decode(data):
            barrier.wait()
            decode_image(data, limits, budget=budget, until_s=float("inf"))

        def all_at_once():
            threads = [threading.Thread(target=decode, args=(data,)) for data in images]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()

        print(json.dumps({"growth": peak_growth(all_at_once), "budget": budget.total}))
    ''')
    assert figures["growth"] <= figures["budget"], (figures["growth"] / MB, figures["budget"] / MB)
