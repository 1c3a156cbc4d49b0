"""The version a cascade is served under: its YAML version plus a digest of what answers.

The YAML's `version` is written by people (and `+cal.<hash>` by the calibration), so a model retrained into the same
folder, or a new model under an unchanged version, served under the old name: metrics and kept samples could not tell
the answers before a reload from those after. The served version appends `+id.<10 hex>`, a digest of

- every expert's model by content (cascade/model_identity.py: the files' sha256, or a hub snapshot's revision), and
- every setting that decides an answer: the version with its calibration hash, the prior, the answer policy, each
  level's exit margin, each expert's backend, options, input size, resize, dtype, calibration and weight.

Where and how fast a model runs (device, replicas, batching, worker, memory estimate, warm-up) is left out: moving a
model to another GPU does not make it another model.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from cascade.config import CascadeConfig
from cascade.model_identity import content_identity

SEPARATOR = "+id."
DIGEST_CHARS = 10
# ExpertConfig fields that only place or schedule a model (cascade/config.py).
PLACEMENT_FIELDS = frozenset({"device", "replicas", "max_batch", "max_wait_ms", "wait_when_idle", "worker",
                              "memory_gb", "warmup_batches", "expected_latency_ms"})


def answers_digest(cascade: CascadeConfig) -> str:
    """A hex digest that changes whenever the models' content or an answer-deciding setting changes."""
    data: dict[str, Any] = cascade.model_dump(mode="json", exclude={"release", "calibration", "levels"})
    data["version"] = own_version(cascade.version)
    fitted = cascade.fitted()
    data["fitted_levels"] = [level.model_dump(mode="json") for level in fitted.levels] if fitted else None
    data["levels"] = [
        {"name": level.name, "exit_margin": level.exit_margin,
         "experts": [{**expert.model_dump(mode="json", exclude=set(PLACEMENT_FIELDS) | {"model"}),
                      "model": content_identity(expert.model)} for expert in level.experts]}
        for level in cascade.levels
    ]
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:DIGEST_CHARS]


def own_version(version: str) -> str:
    """The version without a served digest (a version read back from a served cascade)."""
    return version.split(SEPARATOR, 1)[0]


def served(cascade: CascadeConfig) -> CascadeConfig:
    """`cascade` under its served version `<version>+id.<digest>`.

    A copy (`model_copy` skips validation: the YAML's 64-character bound is for what people write, and the digest
    comes on top of it); the calibration it carries (`fitted()`) comes along.
    """
    version = f"{own_version(cascade.version)}{SEPARATOR}{answers_digest(cascade)}"
    return cascade.model_copy(update={"version": version})
