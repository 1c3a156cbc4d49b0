"""SDXL speed for sn72-synth: images per second and peak GPU memory at 1024x1024, batch 1, 2 and 4, t2i and i2i.

    python3 -m sn72_lab.synth_bench --out bench-out/synth --seconds 300        # on a GPU machine, no hub
    python3 -m sn72_lab.synth_bench --out /tmp/synth-bench --tiny              # the CPU path, tiny model

Builds stabilityai/stable-diffusion-xl-base-1.0's architecture (configs below, copied from the repository's
config files: no hub) with random weights, bfloat16 on CUDA, and times the tool's own batch call
(sn72_tools/synth/pipelines.py `generate`) with the validators' parameters: 25 steps, guidance 8.5, i2i strength
0.7 (so 17 denoising steps) from a 1920x1080 frame squashed to 1024x1024. Random weights cost the same as trained
ones. Each (mode, batch) runs once to warm up, then `--repeats` times; the JSON holds every repetition, the mean,
min, max and standard deviation, and peak memory. It is rewritten after each measurement and the run stops
starting new ones when `--seconds` would be exceeded (what was skipped is listed), so a kill keeps what was done.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

# stabilityai/stable-diffusion-xl-base-1.0: unet/config.json, vae/config.json, text_encoder(_2)/config.json.
SDXL_UNET: dict[str, Any] = {
    "sample_size": 128, "in_channels": 4, "out_channels": 4, "layers_per_block": 2,
    "block_out_channels": (320, 640, 1280), "attention_head_dim": (5, 10, 20),
    "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    "up_block_types": ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    "transformer_layers_per_block": (1, 2, 10), "cross_attention_dim": 2048, "use_linear_projection": True,
    "addition_embed_type": "text_time", "addition_embed_type_num_heads": 64, "addition_time_embed_dim": 256,
    "projection_class_embeddings_input_dim": 2816, "norm_num_groups": 32,
}
SDXL_VAE: dict[str, Any] = {
    "in_channels": 3, "out_channels": 3, "latent_channels": 4, "layers_per_block": 2, "sample_size": 1024,
    "block_out_channels": (128, 256, 512, 512), "down_block_types": ("DownEncoderBlock2D",) * 4,
    "up_block_types": ("UpDecoderBlock2D",) * 4, "scaling_factor": 0.13025, "force_upcast": True,
}
SDXL_TEXT: dict[str, Any] = {  # CLIP ViT-L/14's text tower
    "vocab_size": 49408, "hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12,
    "num_attention_heads": 12, "hidden_act": "quick_gelu", "projection_dim": 768,
}
SDXL_TEXT_2: dict[str, Any] = {  # OpenCLIP ViT-bigG/14's text tower, with its projection
    "vocab_size": 49408, "hidden_size": 1280, "intermediate_size": 5120, "num_hidden_layers": 32,
    "num_attention_heads": 20, "hidden_act": "gelu", "projection_dim": 1280,
}


def build(tiny: bool, device: str, work: Path) -> Any:
    """The pipelines to time: real-size on `device` built in place, or the tiny one saved and loaded like a hub id."""
    from sn72_lab.tiny_models import build_tiny_sdxl
    from sn72_tools.synth.pipelines import load_pipelines

    if tiny:
        return load_pipelines(str(build_tiny_sdxl(work / "tiny-sdxl")), device)
    return in_memory(SDXL_UNET, SDXL_VAE, SDXL_TEXT, SDXL_TEXT_2, device)


def in_memory(unet: dict[str, Any], vae: dict[str, Any], text: dict[str, Any], text_2: dict[str, Any],
              device: str) -> Any:
    """Random-weight pipelines built on `device` (nothing saved: 7 GB of random weights are not worth writing)."""
    from diffusers import StableDiffusionXLImg2ImgPipeline

    from sn72_lab.tiny_models import assemble_sdxl
    from sn72_tools.synth.pipelines import Pipelines

    text_to_image = assemble_sdxl(unet, vae, text, text_2, device=device)
    text_to_image.set_progress_bar_config(disable=True)
    image_to_image = StableDiffusionXLImg2ImgPipeline.from_pipe(text_to_image)
    image_to_image.set_progress_bar_config(disable=True)
    return Pipelines(text_to_image, image_to_image, device)


def _frame(folder: Path) -> Path:
    """A dashcam-sized frame (1920x1080) of smooth noise: i2i squashes it to the bench's size like a real one."""
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    small = np.random.default_rng(0).integers(0, 256, (9, 16, 3), dtype=np.uint8)
    Image.fromarray(small).resize((1920, 1080), Image.Resampling.BICUBIC).save(folder / "frame.jpg")
    return folder


def _spread(values: list[float]) -> dict[str, float]:
    return {"mean": statistics.fmean(values), "min": min(values), "max": max(values),
            "stdev": statistics.stdev(values) if len(values) > 1 else 0.0}


def measure(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from sn72_tools.synth.pipelines import encode, generate
    from sn72_tools.synth.plan import Settings, list_frames, make_job

    started = time.monotonic()
    deadline = started + args.seconds
    cuda = args.device.startswith("cuda")
    report: dict[str, Any] = {
        "command": " ".join(["python3 -m sn72_lab.synth_bench", *sys.argv[1:]]),
        "device": torch.cuda.get_device_name(args.device) if cuda else platform.processor() or "cpu",
        "torch": torch.__version__, "dtype": "bfloat16" if cuda else "float32",
        "model": "tiny random SDXL" if args.tiny else "stable-diffusion-xl-base-1.0 architecture, random weights",
        "size": args.size, "steps": args.steps, "guidance": args.guidance, "strength": args.strength,
        "i2i_denoising_steps": int(args.steps * args.strength), "repeats": args.repeats,
        "results": [], "skipped": [],
    }
    with tempfile.TemporaryDirectory(prefix="synth-bench-") as work:
        pipelines = build(args.tiny, args.device, Path(work))
        import diffusers

        report["diffusers"] = diffusers.__version__
        report["build_s"] = round(time.monotonic() - started, 1)
        print(f"built the pipelines in {report['build_s']} s on {report['device']}", flush=True)
        frames_root = _frame(Path(work) / "frames")
        frames = list_frames(frames_root)
        assert not frames.labelled  # one flat folder: every i2i job starts from the one frame
        for mode in args.modes:
            settings = Settings(model="bench", mode=mode, seed=0, steps=args.steps, guidance=args.guidance,
                                strength=args.strength, size=args.size, frames=str(frames_root))
            last_per_image_s = 0.0
            for batch_size in args.batch_sizes:
                jobs = [make_job(settings, index, frames) for index in range(batch_size)]
                needed_s = last_per_image_s * batch_size * (args.repeats + 1)
                if time.monotonic() + needed_s > deadline:
                    report["skipped"].append({"mode": mode, "batch_size": batch_size,
                                              "why": f"time budget (--seconds {args.seconds}): ~{needed_s:.0f} s"})
                    print(f"{mode} batch {batch_size}: skipped, would pass --seconds", flush=True)
                    continue
                generate(pipelines, jobs, settings, frames_root)  # warm-up: kernels chosen, memory pools grown
                if cuda:
                    torch.cuda.synchronize(args.device)
                    torch.cuda.reset_peak_memory_stats(args.device)
                rates = []
                for repeat in range(args.repeats):
                    began = time.perf_counter()
                    images = generate(pipelines, jobs, settings, frames_root)
                    if cuda:
                        torch.cuda.synchronize(args.device)
                    elapsed = time.perf_counter() - began
                    rates.append(len(images) / elapsed)
                    print(f"{mode} batch {batch_size} repeat {repeat + 1}/{args.repeats}: "
                          f"{rates[-1]:.3f} img/s ({elapsed:.2f} s)", flush=True)
                last_per_image_s = 1 / min(rates)
                began = time.perf_counter()
                encode(images[0], "png")  # the tool's write cost per image, on the CPU, outside the GPU figure
                result: dict[str, Any] = {"mode": mode, "batch_size": batch_size, "images_per_s": _spread(rates),
                                          "values": rates, "image_size": list(images[0].size),
                                          "png_encode_s": time.perf_counter() - began}
                if cuda:
                    result["peak_allocated_gib"] = torch.cuda.max_memory_allocated(args.device) / 2**30
                    result["peak_reserved_gib"] = torch.cuda.max_memory_reserved(args.device) / 2**30
                report["results"].append(result)
                _write(args.out, report)
    report["total_s"] = round(time.monotonic() - started, 1)
    _write(args.out, report)
    return report


def _write(out: Path, report: dict[str, Any]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    temp = out / "synth_bench.json.tmp"
    temp.write_text(json.dumps(report, indent=2) + "\n")
    temp.replace(out / "synth_bench.json")


def _sizes(text: str) -> list[int]:
    try:
        sizes = [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected sizes like 1,2,4, got {text!r}") from None
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError(f"batch sizes must be at least 1, got {text!r}")
    return sizes


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python3 -m sn72_lab.synth_bench",
                                     description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--out", type=Path, required=True, help="folder for synth_bench.json")
    parser.add_argument("--seconds", type=float, default=300, help="no new measurement starts past this budget")
    parser.add_argument("--batch-sizes", type=_sizes, default=[1, 2, 4], help="comma-separated (default 1,2,4)")
    parser.add_argument("--modes", nargs="+", choices=("t2i", "i2i"), default=["t2i", "i2i"])
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per (mode, batch), after one warm-up")
    parser.add_argument("--steps", type=int, default=25, help="validators: 25")
    parser.add_argument("--guidance", type=float, default=8.5, help="validators: 8.5")
    parser.add_argument("--strength", type=float, default=0.7, help="validators: 0.7")
    parser.add_argument("--size", type=int, default=None, help="image side (default 1024; 64 with --tiny)")
    parser.add_argument("--tiny", action="store_true", help="the tiny random SDXL (CPU-friendly test path)")
    parser.add_argument("--device", default=None, help="default: cuda (cpu allowed only with --tiny)")
    args = parser.parse_args(argv)
    args.size = args.size or (64 if args.tiny else 1024)
    if args.repeats < 1:
        parser.error(f"--repeats must be at least 1, got {args.repeats}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    import torch

    args.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if not args.tiny and not args.device.startswith("cuda"):
        print("synth_bench: error: the real-size SDXL needs CUDA (use --tiny for the CPU path)", file=sys.stderr)
        return 2
    report = measure(args)
    print(f"wrote {args.out / 'synth_bench.json'}: {len(report['results'])} measurement(s), "
          f"{len(report['skipped'])} skipped, {report['total_s']} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
