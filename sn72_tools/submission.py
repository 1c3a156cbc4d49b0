"""Assemble the model repository NATIX reads, and upload it to the Hugging Face hub.

    sn72-submit --config config/miner.production.yaml --dry-run           # write the folder only, upload nothing
    sn72-submit --config config/miner.production.yaml                     # repo from natix.model_url
    sn72-submit --cascade config/cascade.production.yaml --repo me/sn72-miner --submitted-by 5F...

The folder holds: `cascade.yaml` (the cascade, local model paths pointing inside the folder), its calibration
file when the cascade names one (`calibration:`), every local model folder or weights file it names under
`models/<expert>/`, `model_card.json` (model_name, description, version = the cascade's X.Y.Z release,
submitted_by = the hotkey's ss58 address, submission_time = unix time) and a README listing the component
models with their licences. The upload uses huggingface_hub (HF_TOKEN or `hf auth login`; HF_ENDPOINT is
honoured). Hub models are referenced, not copied: the miner downloads them (sn72-download-models).

Exit codes: 0 done; 2 usage or configuration error; 4 the hub refused (HTTP error); 5 no network.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import re
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from cascade.release import parse_release

CARD_FILE = "model_card.json"
CASCADE_FILE = "cascade.yaml"
# Ultralytics publishes its YOLO weights under AGPL-3.0 (or its enterprise licence).
ULTRALYTICS_LICENCE = "AGPL-3.0 (Ultralytics)"


class SubmitError(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


class ModelCard(BaseModel):
    """NATIX's model_card.json (streetvision-subnet docs/Mining.md at 28a1755)."""

    model_config = ConfigDict(extra="forbid")

    model_name: str = Field(..., min_length=1, max_length=200)
    description: str = Field(..., min_length=1, max_length=5000)
    version: str = Field(..., description="X.Y.Z: the cascade's release.")
    submitted_by: str = Field(..., description="ss58 address of the miner's hotkey.")
    submission_time: int = Field(..., gt=1_500_000_000, description="Unix time, seconds.")

    @field_validator("version")
    @classmethod
    def _x_y_z(cls, value: str) -> str:
        parse_release(value)
        return value

    @field_validator("submitted_by")
    @classmethod
    def _ss58(cls, value: str) -> str:
        from bittensor.utils import is_valid_ss58_address

        if not is_valid_ss58_address(value):
            raise ValueError(f"submitted_by must be an ss58 address, got {value!r}")
        return value


@dataclass(frozen=True)
class Component:
    level: str
    expert: str
    backend: str
    model: str  # as named in the source cascade
    source: str  # hub, local, ultralytics, remote
    licence: str
    packaged_as: str | None = None  # path inside the repository (local models only)


def classify(model: str, backend: str, base: Path) -> tuple[str, Path | None]:
    """Where a cascade's model comes from; the resolved path for local ones (as load_cascade resolves it)."""
    if backend == "vlm_remote":
        return "remote", None
    path = Path(model).expanduser()
    path = path if path.is_absolute() else (base / path)
    if model.startswith(("/", "./", "../", "~")) or path.exists():
        return "local", path.resolve()
    if backend == "detector" and (model.endswith(".pt") or model.startswith(("http://", "https://"))):
        return "ultralytics", None
    return "hub", None


def _front_matter_licence(folder: Path) -> str | None:
    readme = folder / "README.md"
    if not readme.is_file():
        return None
    match = re.match(r"^---\n(.*?)\n---", readme.read_text(errors="replace"), re.S)
    meta = yaml.safe_load(match.group(1)) if match else None
    value = meta.get("license") if isinstance(meta, dict) else None
    return str(value) if value else None


def hub_licence(repo_id: str) -> str | None:
    """The licence a hub model declares, when the hub can be reached (None otherwise)."""
    from huggingface_hub import HfApi

    try:
        card = HfApi().model_info(repo_id, timeout=10).card_data
    except Exception:  # noqa: BLE001 - offline, unknown repo, gated: the README then says 'unknown'
        return None
    value = getattr(card, "license", None) if card is not None else None
    return str(value) if value else None


def licence_of(source: str, model: str, path: Path | None, overrides: dict[str, str], expert: str,
               lookup: bool) -> str:
    if expert in overrides:
        return overrides[expert]
    if source == "ultralytics":
        return ULTRALYTICS_LICENCE
    if source == "local" and path is not None:
        return _front_matter_licence(path if path.is_dir() else path.parent) or "unknown (local model)"
    if source == "hub" and lookup:
        return hub_licence(model) or "unknown (see the model's hub page)"
    return "unknown (see the model's hub page)" if source == "hub" else "unknown (served remotely)"


def read_cascade(path: Path) -> tuple[dict[str, Any], Any]:
    """The raw YAML and its validated config. `calibration:` (a file, or inline) is read raw: optional here."""
    from cascade.config import CascadeConfig, format_validation_error, read_yaml

    try:
        raw = read_yaml(path)
    except ValueError as exc:
        raise SubmitError(2, str(exc)) from exc
    checked = {key: value for key, value in raw.items() if key != "calibration"}
    try:
        return raw, CascadeConfig.model_validate(checked)
    except ValidationError as exc:
        lines = "; ".join(format_validation_error(exc).splitlines())
        raise SubmitError(2, f"invalid cascade {path}: {lines}") from exc


def assemble(cascade_path: Path, out: Path, card: ModelCard, overrides: dict[str, str] | None = None,
             licence_lookup: bool = True, repo_licence: str = "other") -> list[Component]:
    """Write the repository folder; returns the components listed in its README."""
    overrides = overrides or {}
    raw, config = read_cascade(cascade_path)
    base = cascade_path.resolve().parent
    if out.exists():
        if any(out.iterdir()) and not (out / CARD_FILE).exists():
            raise SubmitError(2, f"{out} exists and is not an earlier submission folder: choose another --out")
        shutil.rmtree(out)
    (out / "models").mkdir(parents=True)
    components: list[Component] = []
    copied: dict[Path, str] = {}
    rewritten = False
    for level_raw, level in zip(raw["levels"], config.levels, strict=True):
        for expert_raw, expert in zip(level_raw["experts"], level.experts, strict=True):
            source, path = classify(expert.model, expert.backend, base)
            packaged = None
            if source == "local":
                assert path is not None
                if not path.exists():
                    raise SubmitError(2, f"expert {expert.name}: local model {expert.model} does not exist ({path})")
                packaged = copied.get(path)
                if packaged is None:
                    target = out / "models" / expert.name
                    if path.is_dir():
                        shutil.copytree(path, target)
                        packaged = f"./models/{expert.name}"
                    else:
                        target.mkdir()
                        shutil.copy2(path, target / path.name)
                        packaged = f"./models/{expert.name}/{path.name}"
                    copied[path] = packaged
                expert_raw["model"] = packaged
                rewritten = True
            licence = licence_of(source, expert.model, path, overrides, expert.name, licence_lookup)
            components.append(Component(level.name, expert.name, expert.backend, expert.model, source, licence,
                                        packaged))
    calibration = raw.get("calibration")
    if isinstance(calibration, str):
        calibration_path = (base / Path(calibration).expanduser()).resolve()
        if not calibration_path.is_file():
            raise SubmitError(2, f"calibration file {calibration} named by {cascade_path} does not exist")
        shutil.copy2(calibration_path, out / calibration_path.name)
        raw["calibration"] = calibration_path.name
        rewritten = True
    if rewritten:
        header = f"# {cascade_path.name} as submitted (release {config.release}); local models are under models/.\n"
        (out / CASCADE_FILE).write_text(header + yaml.safe_dump(raw, sort_keys=False))
    else:
        shutil.copy2(cascade_path, out / CASCADE_FILE)
    if not any((out / "models").iterdir()):
        (out / "models").rmdir()
    (out / CARD_FILE).write_text(json.dumps(card.model_dump(), indent=2) + "\n")
    (out / "README.md").write_text(render_readme(card, config, components, repo_licence))
    return components


def render_readme(card: ModelCard, config: Any, components: list[Component], repo_licence: str) -> str:
    rows = "\n".join(
        f"| {c.level} | {c.expert} | {c.backend} | `{c.packaged_as or c.model}` | {c.source} | {c.licence} |"
        for c in components
    )
    return f"""---
license: {repo_licence}
tags: [bittensor, natix, streetvision, subnet-72, roadwork, image-classification]
---

# {card.model_name}

{card.description}

Release {card.version} (cascade build `{config.version}`), submitted by `{card.submitted_by}` at unix time
{card.submission_time}. A cascade of {len(config.levels)} levels for Bittensor Subnet 72 (NATIX StreetVision):
each image goes through the levels cheapest first and leaves at the first confident one; the answer is
P(roadwork) in [0, 1].

## Component models

| level | expert | backend | model | source | licence |
| --- | --- | --- | --- | --- | --- |
{rows}

Models whose source is `hub` or `ultralytics` are referenced, not copied: their own licences and terms
apply. `local` models are included under `models/`.

## Files

- `cascade.yaml`: the cascade the miner runs (`cascade_file` in the miner's configuration).
- `model_card.json`: the card NATIX reads (model_name, description, version, submitted_by, submission_time).
"""


def upload(folder: Path, repo_id: str, release: str, private: bool, token: str | None) -> tuple[str, str]:
    """create_repo (if missing) then upload_folder; returns the repository's and the commit's URLs."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    api = HfApi(token=token)
    try:
        repo_url = api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
        commit = api.upload_folder(repo_id=repo_id, folder_path=str(folder), repo_type="model",
                                   commit_message=f"Release {release}")
    except OfflineModeIsEnabled as exc:
        raise SubmitError(5, "HF_HUB_OFFLINE is set: unset it to upload (or use --dry-run)") from exc
    except HfHubHTTPError as exc:
        status = exc.response.status_code if exc.response is not None else "?"
        hint = " (log in: hf auth login, or set HF_TOKEN)" if status in (401, 403) else ""
        raise SubmitError(4, f"the hub refused the upload: HTTP {status}{hint}: {_one_line(exc)}") from exc
    except _transport_errors() as exc:
        raise SubmitError(5, f"cannot reach the hub at {api.endpoint}: {_one_line(exc)}") from exc
    return str(repo_url), str(getattr(commit, "commit_url", commit))


def _transport_errors() -> tuple[type[BaseException], ...]:
    """Connection and timeout errors of whichever HTTP client this huggingface_hub release uses.

    huggingface_hub moved from requests to httpx (1.0) and to httpx2 (2.x); each raises its own types.
    """
    errors: list[type[BaseException]] = [OSError]
    for module_name, names in (("httpx2", ("TransportError",)), ("httpx", ("TransportError",)),
                               ("requests", ("ConnectionError", "Timeout"))):
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            continue
        errors += [getattr(module, name) for name in names if hasattr(module, name)]
    return tuple(errors)


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 240 else text[:237] + "..."


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sn72-submit", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, help="miner YAML: cascade, wallet and natix.model_url from it")
    parser.add_argument("--cascade", type=Path, help="cascade YAML (default: the miner config's cascade_file)")
    parser.add_argument("--repo", help="Hugging Face repository owner/name or its URL (default: natix.model_url)")
    parser.add_argument("--out", type=Path, help="folder to write (default: build/submission/<release>)")
    parser.add_argument("--name", help="model_name in the card (default: the repository's name)")
    parser.add_argument("--description", help="description in the card")
    parser.add_argument("--submitted-by", help="hotkey ss58 address (default: read from the wallet)")
    parser.add_argument("--wallet.name", dest="wallet_name")
    parser.add_argument("--wallet.hotkey", dest="wallet_hotkey")
    parser.add_argument("--wallet.path", dest="wallet_path")
    parser.add_argument("--licence", action="append", default=[], metavar="EXPERT=LICENCE",
                        help="licence of one component, when the README would say unknown")
    parser.add_argument("--repo-licence", default="other", help="the repository's own licence tag (other)")
    parser.add_argument("--no-licence-lookup", action="store_true", help="do not ask the hub for licences")
    parser.add_argument("--private", action="store_true", help="create the repository private")
    parser.add_argument("--token", help="hub token (default: HF_TOKEN or the stored login)")
    parser.add_argument("--dry-run", action="store_true", help="write the folder only; upload nothing")
    return parser


def _settings(args: argparse.Namespace) -> tuple[Path, str, Any]:
    from neurons.config import ConfigError, NatixConfig, WalletConfig, load_config
    from sn72_tools.natix import repo_id_from_url

    cascade, wallet, natix = args.cascade, WalletConfig(), NatixConfig()
    if args.config is not None:
        try:
            miner = load_config(["--config", str(args.config)])[0]
        except (ConfigError, ValueError) as exc:
            raise SubmitError(2, " ".join(str(exc).split())) from exc
        cascade, wallet, natix = cascade or miner.cascade_file, miner.wallet, miner.natix
    if cascade is None:
        raise SubmitError(2, "no cascade: pass --cascade FILE or --config MINER_YAML")
    repo = args.repo or natix.model_url
    if not repo:
        raise SubmitError(2, "no repository: pass --repo owner/name or set natix.model_url in the miner config")
    try:
        repo_id = repo_id_from_url(repo)
    except ValueError as exc:
        raise SubmitError(2, str(exc)) from exc
    wallet = wallet.model_copy(update={k: v for k, v in (("name", args.wallet_name), ("hotkey", args.wallet_hotkey),
                                                          ("path", args.wallet_path)) if v})
    return Path(cascade), repo_id, wallet


def _hotkey_address(args: argparse.Namespace, wallet: Any) -> str:
    if args.submitted_by:
        return str(args.submitted_by)
    import bittensor as bt

    try:
        return str(bt.Wallet(name=wallet.name, hotkey=wallet.hotkey, path=str(Path(wallet.path).expanduser()))
                   .hotkey.ss58_address)
    except Exception as exc:  # bittensor-wallet raises several types for a missing key
        raise SubmitError(2, f"cannot open hotkey {wallet.name}/{wallet.hotkey} in {wallet.path} "
                             f"(or pass --submitted-by SS58): {_one_line(exc)}") from exc


def run(args: argparse.Namespace) -> int:
    cascade_path, repo_id, wallet = _settings(args)
    overrides = dict(item.split("=", 1) for item in args.licence if "=" in item)
    if len(overrides) != len(args.licence):
        raise SubmitError(2, "--licence needs EXPERT=LICENCE")
    _, config = read_cascade(cascade_path)
    try:
        card = ModelCard(
            model_name=args.name or repo_id.split("/")[1],
            description=args.description or (f"Roadwork detection cascade for Bittensor Subnet 72 (NATIX StreetVision),"
                                              f" build {config.version}."),
            version=config.release,
            submitted_by=_hotkey_address(args, wallet),
            submission_time=int(time.time()),
        )
    except ValidationError as exc:
        raise SubmitError(2, "invalid model card: " + "; ".join(e["msg"] for e in exc.errors())) from exc
    out = args.out or Path("build") / "submission" / config.release
    lookup = not args.no_licence_lookup and os.environ.get("HF_HUB_OFFLINE", "0").lower() not in ("1", "true", "yes")
    components = assemble(cascade_path, out, card, overrides, lookup, args.repo_licence)
    files = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    print(f"wrote {out}: {len(files)} files, release {card.version}, {len(components)} component models")
    for component in components:
        print(f"  {component.level}/{component.expert}: {component.model} [{component.source}] {component.licence}")
    if args.dry_run:
        print(f"dry run: nothing uploaded (would upload to {repo_id})")
        return 0
    print(f"uploading to {repo_id} ...", flush=True)
    repo_url, commit_url = upload(out, repo_id, card.version, args.private, args.token)
    print(f"uploaded: {commit_url}")
    print(f"next: natix.model_url: {repo_url} in the miner config (the miner answers it), then sn72-register")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return run(args)
    except SubmitError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.code
    except BrokenPipeError:  # the output was piped into `head` or similar: not an error of ours
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
