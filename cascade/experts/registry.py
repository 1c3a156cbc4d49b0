"""Backend name -> implementation, imported lazily so optional extras stay optional."""

from __future__ import annotations

import importlib
import importlib.util

from cascade.config import ExpertConfig
from cascade.experts.base import Expert, ExpertError

_IMPLEMENTATIONS: dict[str, tuple[str, str]] = {
    "hf_classifier": ("cascade.experts.hf_classifier", "ClassifierExpert"),
    "zero_shot": ("cascade.experts.zero_shot", "ZeroShotExpert"),
    "detector": ("cascade.experts.detector", "DetectorExpert"),
    "owlv2": ("cascade.experts.owlv2", "OWLv2Expert"),
    "vlm_transformers": ("cascade.experts.vlm_transformers", "TransformersVLMExpert"),
    "vlm_vllm": ("cascade.experts.vlm_vllm", "VLLMExpert"),
    "vlm_remote": ("cascade.experts.vlm_remote", "RemoteVLMExpert"),
}

_EXTRAS = {"vlm_vllm": ("vllm", "pip install -e '.[vllm]'")}


def build_expert(config: ExpertConfig, device: str) -> Expert:
    """An unloaded expert of the configured backend on `device`."""
    module_name, class_name = _IMPLEMENTATIONS[config.backend]
    extra = _EXTRAS.get(config.backend)
    if extra is not None and importlib.util.find_spec(extra[0]) is None:
        raise ExpertError(
            f"expert {config.name!r} uses backend {config.backend}, which needs the optional package "
            f"{extra[0]!r}: install it with `{extra[1]}`, or remove the expert from the cascade"
        )
    module = importlib.import_module(module_name)
    cls: type[Expert] = getattr(module, class_name)
    return cls(config, device)
