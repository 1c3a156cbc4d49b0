"""Fetch every model a cascade config names, so the miner then starts with no network.

    sn72-download-models --cascade config/cascade.production.yaml
    sn72-download-models --cascade config/cascade.production.yaml --dry-run

Each expert's `model` is one of:
- a hub id (`owner/name`): fetched with `huggingface_hub.snapshot_download` into the hub cache, config,
  tokenizer and weight files only (safetensors when the repo has them, else .bin);
- an ultralytics weight name (`yolo11m.pt`) or a weights URL (detector backend): fetched with
  ultralytics' own `attempt_download_asset` into its weights folder, where `YOLO("yolo11m.pt")` finds
  it offline;
- a local path (folder or file): checked, never fetched;
- the name a remote server knows (`vlm_remote`): nothing to fetch here.

Every model is tried even when one fails; the exit code is 1 if any failed, 2 if the config is bad.
Afterwards, start the miner with HF_HUB_OFFLINE=1 (and HF_HUB_CACHE=<dir> if --cache-dir was given).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from loguru import logger
from pydantic import ValidationError

from cascade.config import format_validation_error, load_cascade
from cascade.model_sources import (
    ModelRef,
    Source,
    check_local,
    default_weights_dir,
    plan_downloads,
    ultralytics_target,
)

# Configs, tokenizers (json, sentencepiece, tiktoken, merges/vocab txt) and chat templates.
_SUPPORT_PATTERNS = ("*.json", "*.txt", "*.model", "*.tiktoken", "*.jinja")
# Other frameworks' copies of the weights: never needed by torch, often larger than the model itself.
IGNORE_PATTERNS = ("*.onnx", "onnx/*", "openvino/*", "*.msgpack", "*.h5", "*.ot", "*.gguf", "original/*")
_DETECTOR_PATTERNS = ("*.pt", "*.yaml", "*.json")


def allow_patterns(backend: str, repo_files: Sequence[str] | None) -> list[str]:
    """Files worth fetching from a hub repo: configs, tokenizers and one format of weights.

    Repos often carry the same weights as safetensors and as .bin; fetching both doubles the
    download, so .bin is fetched only when there are no safetensors. Without the file list
    (a dry run) both are named, as the real run would decide between them.
    """
    if backend == "detector":
        return list(_DETECTOR_PATTERNS)
    patterns = list(_SUPPORT_PATTERNS)
    files = list(repo_files) if repo_files is not None else None
    if files is None:
        return [*patterns, "*.safetensors", "*.bin"]
    if any(name.endswith(".safetensors") for name in files):
        return [*patterns, "*.safetensors"]
    if any(name.endswith(".bin") for name in files):
        return [*patterns, "*.bin"]
    return [*patterns, "*.pt", "*.pth"]


def fetch_hub(ref: ModelRef, cache_dir: Path | None, token: str | None) -> str:
    """Snapshot the repo into the hub cache (huggingface_hub draws its own progress bars)."""
    from huggingface_hub import HfApi, snapshot_download

    files = HfApi().list_repo_files(ref.model, token=token)
    folder = snapshot_download(
        ref.model,
        cache_dir=cache_dir,
        allow_patterns=allow_patterns(ref.backend, files),
        ignore_patterns=list(IGNORE_PATTERNS),
        token=token,
    )
    text = f"downloaded to {folder}"
    if ref.backend == "detector":
        weights = sorted(str(p) for p in Path(folder).rglob("*.pt"))
        text += f"; weights: {', '.join(weights) or 'none (.pt) found'}; set the expert's model to one of them"
    return text


def fetch_ultralytics(ref: ModelRef, weights_dir: Path) -> str:
    """Download an ultralytics release asset (or a weights URL) into `weights_dir`."""
    from ultralytics.utils.downloads import attempt_download_asset, safe_download

    target = ultralytics_target(ref.model, weights_dir)
    if target.is_file():
        return f"present at {target}"
    if ref.model.lower().startswith(("http://", "https://")):
        # attempt_download_asset would save a URL into the working folder; name the file ourselves.
        safe_download(url=ref.model, file=target, min_bytes=1e5)
        path = target
    else:
        # Given a full path, it downloads the release asset of the same name to exactly that path.
        path = Path(attempt_download_asset(target))
    if not path.is_file():
        raise ValueError(f"ultralytics has no release asset named {ref.model!r} (nothing saved at {path})")
    return f"downloaded to {path}"


def default_hub_cache() -> Path:
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def describe_target(ref: ModelRef, cache_dir: Path | None, weights_dir: Path | None) -> str:
    """Where the model will be (or is) on disk, as the dry run prints it; no network."""
    if ref.problem:
        return f"error: {ref.problem}"
    if ref.source is Source.HUB:
        folder = (cache_dir or default_hub_cache()) / f"models--{ref.model.replace('/', '--')}"
        return f"into {folder} ({', '.join(allow_patterns(ref.backend, None))})"
    if ref.source is Source.ULTRALYTICS:
        return f"into {ultralytics_target(ref.model, weights_dir or default_weights_dir())}"
    if ref.source is Source.REMOTE:
        return "served by the remote server, nothing to fetch"
    try:
        return check_local(ref)
    except ValueError as exc:
        return f"error: {exc}"


def run(refs: Sequence[ModelRef], cache_dir: Path | None, weights_dir: Path | None, token: str | None) -> list[str]:
    """Fetch or check every reference once; return one failure line per model that failed."""
    failures: list[str] = []
    done: dict[tuple[Source, str], str | None] = {}  # the same model named twice is fetched once
    for index, ref in enumerate(refs, 1):
        head = f"[{index}/{len(refs)}] {ref.expert} ({ref.backend}, {ref.source}): {ref.model}"
        key = (ref.source, ref.model)
        if key in done:
            error = done[key]
            print(f"{head}: same as above{'' if error is None else ' (failed)'}", flush=True)
            if error is not None:
                failures.append(f"{ref.expert} ({ref.model}): {error}")
            continue
        print(f"{head} ...", flush=True)
        try:
            if ref.problem:
                raise ValueError(ref.problem)
            if ref.source is Source.HUB:
                result = fetch_hub(ref, cache_dir, token)
            elif ref.source is Source.ULTRALYTICS:
                result = fetch_ultralytics(ref, weights_dir or default_weights_dir())
            elif ref.source is Source.REMOTE:
                result = "served by the remote server, nothing to fetch"
            else:
                result = check_local(ref)
        # NOTE: deliberately broad. Hub, HTTP and file-system errors come from three libraries with
        # unrelated exception trees; an operator tool must report each and go on to the next model.
        except Exception as exc:  # noqa: BLE001 - isolated failure, counted and logged
            error = f"{type(exc).__name__}: {exc}"
            logger.error("{} failed: {}", ref.expert, error)
            failures.append(f"{ref.expert} ({ref.model}): {error}")
            done[key] = error
            continue
        done[key] = None
        print(f"    {result}", flush=True)
    return failures


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--cascade", type=Path, default=None, help="cascade YAML whose models are fetched")
    parser.add_argument("--synth-model", action="append", default=[], metavar="REPO",
                        help="an SDXL pipeline repo for sn72-synth (stabilityai/stable-diffusion-xl-base-1.0), "
                             "repeatable")
    parser.add_argument("--synth-variant", default="fp16",
                        help="precision of --synth-model's weights: fp16 (default, half the download) or none")
    parser.add_argument(
        "--cache-dir", type=Path, default=None, help="hub cache folder (default: huggingface_hub's, HF_HUB_CACHE)"
    )
    parser.add_argument(
        "--weights-dir", type=Path, default=None, help="ultralytics weights folder (default: ultralytics' own)"
    )
    parser.add_argument("--dry-run", action="store_true", help="print the plan and check local paths; no network")
    parser.add_argument(
        "--token-env", default="HF_TOKEN", help="environment variable holding a hub token, for gated repos"
    )
    return parser.parse_args(argv)


def fetch_synth_models(args: argparse.Namespace) -> int:
    """Fetch (or, dry run, describe) each --synth-model: one precision, no single-file or ONNX copies. Failures."""
    from sn72_tools.synth import snapshot

    variant = None if args.synth_variant.lower() == "none" else args.synth_variant
    cache_dir = args.cache_dir.expanduser().resolve() if args.cache_dir else None
    failed = 0
    for model in args.synth_model:
        if args.dry_run:
            folder = (cache_dir or default_hub_cache()) / f"models--{model.replace('/', '--')}"
            print(f"  sn72-synth: {model} -> hub, into {folder} ({', '.join(snapshot.allow_patterns(variant))})")
            continue
        print(f"sn72-synth: {model} ...", flush=True)
        try:
            token = os.environ.get(args.token_env) or None
            print(f"    {snapshot.fetch(model, variant, cache_dir, token)}", flush=True)
        except Exception as exc:  # noqa: BLE001 - as in run(): reported, counted, the next model still tried
            logger.error("{} failed: {}: {}", model, type(exc).__name__, exc)
            failed += 1
    return failed


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.cascade is None and not args.synth_model:
        print("name a --cascade, a --synth-model, or both", file=sys.stderr)
        return 2
    synth_failed = fetch_synth_models(args) if args.synth_model else 0
    if args.cascade is None:
        return 1 if synth_failed else 0
    try:
        config = load_cascade(args.cascade)
    except ValidationError as exc:
        print(f"invalid cascade {args.cascade}:\n{format_validation_error(exc)}", file=sys.stderr)
        return 2
    except ValueError as exc:
        print(str(exc), file=sys.stderr)
        return 2
    refs = plan_downloads(config)
    cache_dir = args.cache_dir.expanduser().resolve() if args.cache_dir else None
    weights_dir = args.weights_dir.expanduser().resolve() if args.weights_dir else None

    if args.dry_run:
        print(f"plan for {args.cascade} (cascade version {config.version}), dry run: nothing is fetched")
        bad = 0
        for ref in refs:
            target = describe_target(ref, cache_dir, weights_dir)
            bad += target.startswith("error:")
            print(f"  {ref.expert} ({ref.backend}): {ref.model} -> {ref.source}, {target}")
        print(f"summary: {len(refs)} model(s), {bad} with errors")
        return 1 if bad or synth_failed else 0

    token = os.environ.get(args.token_env) or None
    if token is None and args.token_env != "HF_TOKEN":
        logger.warning("${} is not set; using huggingface_hub's stored login, if any", args.token_env)
    failures = run(refs, cache_dir, weights_dir, token)
    print(f"summary: {len(refs) - len(failures)} of {len(refs)} model(s) ready, {len(failures)} failed")
    for line in failures:
        print(f"  failed: {line}")
    if not failures:
        hint = "HF_HUB_OFFLINE=1" + (f" HF_HUB_CACHE={cache_dir}" if cache_dir else "")
        print(f"start the miner with {hint} so nothing reaches the network")
        if weights_dir is not None and any(ref.source is Source.ULTRALYTICS for ref in refs):
            print(f"detector weights are in {weights_dir}: name that full path as the expert's model")
    return 1 if failures or synth_failed else 0


if __name__ == "__main__":
    sys.exit(main())
