"""An offline miner to attack: wallets, a metagraph with several validators, a tiny cascade with a detector.

Shared by the security tests and `sn72-redteam --setup-offline`. The cascade includes a tiny YOLO so that
ultralytics is imported in the miner (its import patches `PIL.Image.open`). Guard limits are the production ones
(2/s, burst 20). The HTTP-layer keys (`axon.max_request_bytes`, ...) are written only when this code's
configuration knows them, so the same set-up starts the miner before and after they exist.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

PRODUCTION_GUARDS = {"rate_per_s": 2.0, "burst": 20.0}
TEST_DECODE = {"max_pixels": 1_000_000, "max_decode_pixels": 40_000_000, "oversize": "downscale",
               "max_payload_bytes": 12 * 1024 * 1024}  # under the 16 MB body limit below
# Small HTTP-layer limits, so that the tests see them act within seconds.
TEST_HTTP_LIMITS: dict[str, Any] = {
    "max_request_bytes": 16 * 1024 * 1024,
    "header_timeout_s": 2.0,
    "body_timeout_s": 2.0,
    "max_connections": 2048,
    "max_connections_per_ip": 64,
    "max_header_bytes": 32 * 1024,
}
VALIDATOR_STAKE = 5000.0


def keypair(name: str) -> Any:
    """A deterministic throwaway keypair (no wallet files): probers, strangers."""
    from bittensor_wallet import Keypair

    return Keypair.create_from_uri(f"//sn72-hostile/{name}")


def known_axon_keys() -> set[str]:
    from neurons.config import AxonConfig

    return set(AxonConfig.model_fields)


def http_limits(wanted: dict[str, Any] | None = None) -> dict[str, Any]:
    """The HTTP-layer limits this code's configuration accepts (none before the fix)."""
    known = known_axon_keys()
    return {key: value for key, value in (wanted or TEST_HTTP_LIMITS).items() if key in known}


def cascade(models: Path) -> dict[str, Any]:
    """Tiny ViT and tiny YOLO in one level (both run on every request), CPU."""
    from sn72_lab.tiny_models import build_tiny_vit, build_tiny_yolo

    vit = models / "tiny-vit"
    yolo = models / "tiny-yolo" / "tiny-yolo.pt"
    if not vit.exists():
        build_tiny_vit(vit)
    if not yolo.exists():
        build_tiny_yolo(yolo.parent)
    return {
        "version": "hostile",
        "prior": 0.5,
        "levels": [{
            "name": "tiny",
            "exit_margin": 0.5,
            "experts": [
                {"name": "vit", "backend": "hf_classifier", "model": str(vit), "device": "cpu", "max_batch": 8,
                 "max_wait_ms": 2.0, "options": {"positive_labels": ["Roadwork"]}},
                {"name": "yolo", "backend": "detector", "model": str(yolo), "device": "cpu", "input_size": 64,
                 "max_batch": 8, "max_wait_ms": 2.0, "options": {"classes": ["cone", "barrier", "construction sign"]}},
            ],
        }],
    }


def miner_overrides(http: dict[str, Any] | None = None) -> dict[str, Any]:
    """Sections merged into the miner YAML: production guards, test decode limits, HTTP limits if known."""
    extra: dict[str, Any] = {"guards": dict(PRODUCTION_GUARDS), "decode": dict(TEST_DECODE)}
    limits = http_limits(http)
    if limits:
        extra["axon"] = limits
    return extra


@dataclass
class Cast:
    """Who is who on the offline metagraph."""

    miner: Any  # wallet
    validator: Any  # wallet: the honest validator whose answers are measured
    attacker: Any  # wallet: a registered validator that misbehaves (signs malformed requests, floods)
    non_validator: Any  # wallet: registered, no permit
    probers: list[Any]  # keypairs: more validators, so that many signed probes never meet the rate limit


def write_cast(folder: Path, probers: int = 0) -> Cast:
    """Wallets under folder/wallets and folder/metagraph.json (sn72_lab.offline helpers)."""
    from sn72_lab.offline import ensure_wallet, make_wallets, write_offline_metagraph

    wallets = make_wallets(folder)
    attacker = ensure_wallet(wallets.path, "attacker")
    prober_keys = [keypair(f"prober-{i}") for i in range(probers)]
    validators = {wallets.validator.hotkey.ss58_address: VALIDATOR_STAKE,
                  attacker.hotkey.ss58_address: VALIDATOR_STAKE}
    validators.update({key.ss58_address: VALIDATOR_STAKE for key in prober_keys})
    write_offline_metagraph(folder / "metagraph.json", 72, wallets.miner.hotkey.ss58_address, validators,
                            others=[wallets.non_validator.hotkey.ss58_address])
    return Cast(wallets.miner, wallets.validator, attacker, wallets.non_validator, prober_keys)
