"""The calibration file: what `sn72-eval --fit` learns and the cascade YAML names in `calibration:`.

JSON, versioned by `format`, with the fit's metadata. It holds
- per expert: temperature and bias (z = logit(p) / temperature + bias), as the YAML's `calibration`, and the
  content identity of the weights they were fitted for (cascade/model_identity.py): a calibration is refused
  by every loader (`--check`, start-up, reload, the eval) when an expert's weights are no longer those;
- per level: pooling weights for every expert answered up to that level plus an intercept
  (a logistic regression on the calibrated log-odds, so each level's pooled answer is calibrated on
  its own), the `threshold` of a monotone map that puts the level's MCC-best threshold on 0.5
  (validators round at 0.5), and the level's exit margin (tested on the mapped answer);
- the content hashes of the images it was fitted on (a judge set must share none: sn72_tools/evaluation/roles.py),
  and the fit's report: each parameter's interval and why each choice was made.
Loaded by `cascade.config.load_cascade`; nothing here imports more than pydantic and the standard library.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from cascade.model_identity import content_identity, short

FORMAT: Literal[2] = 2


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ExpertFit(_Strict):
    temperature: float = Field(..., gt=0.0, le=100.0)
    bias: float = Field(..., ge=-20.0, le=20.0)
    backend: str = Field(..., description="The backend the expert had when fitted.")
    model: str = Field(..., description="Hub id, or the last part of a local path, the expert had when fitted "
                       "(for people reading the file; the weights are matched by `weights`).")
    weights: str = Field(..., min_length=6, description="Content identity of the weights fitted for: sha256:<hex> of "
                         "a local model's files, hub:<id>@<revision>, or name:<id> (cascade/model_identity.py).")


class LevelFit(_Strict):
    name: str
    weights: dict[str, float] = Field(..., description="Weight of each expert answered up to this level.")
    intercept: float = Field(0.0, ge=-30.0, le=30.0)
    threshold: float = Field(0.5, gt=0.0, lt=1.0, description="This pooled value is mapped to 0.5.")
    exit_margin: float = Field(..., ge=0.0, le=0.5, description="Exit when |mapped - 0.5| >= this.")


class FitSource(_Strict):
    """Where the fit came from, so the file says what it was fitted on."""

    dataset: str
    kind: str
    distortion: str
    images: int = Field(..., ge=0)
    counts: dict[str, int] = Field(..., description="Images per label in the whole set.")
    fit_images: int = Field(..., ge=0)
    held_out_images: int = Field(..., ge=0)
    split: str = Field(..., description="How the held-out images were chosen.")
    seed: int
    max_mcc_loss: float = Field(..., ge=0.0, le=1.0)
    expert_seconds: dict[str, float] = Field(default_factory=dict, description="Per-image costs the margins used.")
    notes: list[str] = Field(default_factory=list)
    fit_sha256: list[str] = Field(default_factory=list, description="Content hashes of the images fitted on: "
                                  "a judge set must share none of them.")


class CalibrationFile(_Strict):
    format: Literal[2] = FORMAT
    created: str = Field(..., description="ISO 8601 time of the fit (UTC).")
    cascade_version: str = Field(..., description="The cascade's version when fitted (before this calibration).")
    source: FitSource
    experts: dict[str, ExpertFit]
    levels: list[LevelFit] = Field(..., min_length=1)
    report: dict[str, Any] = Field(default_factory=dict, description="What the fit chose and how sure it was: "
                                   "every parameter's interval, the structure, threshold and margin decisions.")

    def to_json(self) -> str:
        return json.dumps(self.model_dump(), indent=2, sort_keys=False) + "\n"


def digest(data: bytes) -> str:
    """Short content hash: the cascade's effective version carries it."""
    return hashlib.sha256(data).hexdigest()[:8]


def read_calibration(path: Path) -> tuple[CalibrationFile, str]:
    """The file, validated, and its short hash. ValueError names the file and the problem."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ValueError(f"calibration {path}: cannot read it ({exc.strerror or exc})") from exc
    try:
        raw = json.loads(data)
    except ValueError as exc:
        raise ValueError(f"calibration {path}: not JSON ({exc})") from exc
    if isinstance(raw, dict) and raw.get("format") == 1:
        raise ValueError(f"calibration {path}: format 1 names models by path only, so nothing shows which weights it "
                         "was fitted for; fit it again (sn72-eval --fit or sn72-train --refit) and promote it with "
                         "sn72-promote")
    if isinstance(raw, dict) and raw.get("format") != FORMAT:
        raise ValueError(f"calibration {path}: format {raw.get('format')!r}; this code reads format {FORMAT}")
    try:
        return CalibrationFile.model_validate(raw), digest(data)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or '(top)'}: {e['msg']}" for e in exc.errors())
        raise ValueError(f"calibration {path}: {problems}") from exc


def model_reference(model: str) -> str:
    """How a calibration names an expert's model for people: a hub id as is, a local path by its last part.

    Matching is by content (`ExpertFit.weights`), never by this name: every trained model is `OUT/model`.
    """
    path = Path(model)
    return path.name if path.is_absolute() or model.startswith(("./", "../")) else model


Identity = Callable[[str], str]


def check_against(calibration: CalibrationFile, levels: list[tuple[str, list[tuple[str, str, str]]]],
                  identity: Identity = content_identity) -> None:
    """Raise ValueError unless the file fits the cascade: `levels` is [(name, [(expert, backend, model)])].

    Each expert's weights must be the ones fitted for (`identity(model)`, a content digest): the same path
    holding retrained weights is another model.
    """
    problems: list[str] = []
    experts = {name: (backend, model) for _, members in levels for name, backend, model in members}
    missing, extra = sorted(set(experts) - set(calibration.experts)), sorted(set(calibration.experts) - set(experts))
    if missing or extra:
        problems.append(f"experts differ: missing {missing}, not in the cascade {extra}")
    for name, fit in calibration.experts.items():
        if name not in experts:
            continue
        backend, model = experts[name]
        if fit.backend != backend:
            problems.append(f"expert {name!r} was fitted as {fit.backend}, the cascade has {backend}")
            continue
        current = identity(model)
        if current != fit.weights:
            problems.append(f"expert {name!r} was fitted for the weights {short(fit.weights)} ({fit.model}), but "
                            f"{model_reference(model)} now holds {short(current)}: fit the calibration again for "
                            "these weights")
    if [fit.name for fit in calibration.levels] != [name for name, _ in levels]:
        problems.append(f"levels differ: fitted {[f.name for f in calibration.levels]}, "
                        f"the cascade has {[name for name, _ in levels]}")
    else:
        answered: list[str] = []
        for (name, members), level_fit in zip(levels, calibration.levels, strict=True):
            answered += [expert for expert, _, _ in members]
            if sorted(level_fit.weights) != sorted(answered):
                problems.append(
                    f"level {name!r} weighs {sorted(level_fit.weights)}, but {sorted(answered)} answer by then"
                )
    if problems:
        raise ValueError("; ".join(problems))


def threshold_map(probability: float, threshold: float) -> float:
    """Monotone, piecewise linear in p: [0, t] -> [0, 0.5] and [t, 1] -> [0.5, 1]; t = 0.5 is the identity.

    The MCC-best threshold t of a level lands on 0.5, where validators round; 0 and 1 stay put.
    """
    if threshold == 0.5:
        return probability
    if probability <= threshold:
        return 0.5 * probability / threshold
    return 0.5 + 0.5 * (probability - threshold) / (1.0 - threshold)
