"""Typed configuration of the engine: the cascade, the scheduler, decoding limits, active learning.

Everything is checked when it is loaded: bounds on fields, cross-field errors naming both values.
Nothing here imports torch, so the miner process can validate a config before it loads any model.
"""

from __future__ import annotations

import difflib
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator, model_validator

from cascade.calibration import CalibrationFile, Identity, check_against, read_calibration
from cascade.event_loop import EventLoopKind
from cascade.experts.options import options_model_for
from cascade.model_identity import content_identity
from cascade.release import DEFAULT_RELEASE, parse_release

Backend = Literal["hf_classifier", "zero_shot", "detector", "owlv2", "vlm_transformers", "vlm_vllm", "vlm_remote"]
ResizeMode = Literal["squash", "letterbox", "center_crop"]
# Backends that resize images to a fixed input themselves (cascade/experts/preprocess.py); ultralytics always
# letterboxes on its own and the VLMs keep each image's aspect, so `resize` means nothing to them.
RESIZE_BACKENDS = ("hf_classifier", "zero_shot", "owlv2")
ASYNC_BACKENDS = ("vlm_vllm", "vlm_remote")  # engines or servers of their own: answered asynchronously
DType = Literal["auto", "float32", "float16", "bfloat16"]
ImageFormat = Literal["JPEG", "PNG", "WEBP", "BMP", "GIF", "TIFF"]
DEFAULT_FORMATS: tuple[ImageFormat, ...] = ("JPEG", "PNG", "WEBP")
_DEVICE_RE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")


class Strict(BaseModel):
    """Base for every config section: unknown keys are errors (a typo must not be silently ignored)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class Calibration(Strict):
    """Per-expert calibration in log-odds space: z = logit(p) / temperature + bias."""

    temperature: float = Field(1.0, gt=0.0, le=100.0, description="Divides the expert's log-odds (>1 softens).")
    bias: float = Field(0.0, ge=-20.0, le=20.0, description="Added to the expert's log-odds after scaling.")


class ExpertConfig(Strict):
    """One model of the cascade, run on its own micro-batcher per device."""

    name: str = Field(..., min_length=1, max_length=64, description="Unique name, used in logs and metrics.")
    backend: Backend = Field(..., description="Which expert implementation loads and runs the model.")
    model: str = Field(..., min_length=1, description="Hub id, local folder, or weights file (detector).")
    device: str = Field("auto", description="'auto' (placed by memory), 'cpu', or 'cuda:N'.")
    replicas: int = Field(1, ge=1, le=16, description="Copies of the model; 'auto' places them on distinct GPUs.")
    dtype: DType = Field("auto", description="'auto' is bfloat16 on CUDA and float32 on the CPU.")
    input_size: int | None = Field(None, ge=16, le=4096, description="Square input side; None: the model's own.")
    resize: ResizeMode | None = Field(
        None,
        description="How an image meets the model's input: squash, letterbox (aspect kept, padded with the "
        "processor's mean) or center_crop; None: the mode recorded in the model folder, else the backend's default.",
    )
    max_batch: int = Field(32, ge=1, le=1024, description="Largest micro-batch.")
    max_wait_ms: float = Field(2.0, ge=0.0, le=1000.0, description="Longest wait for a batch to fill.")
    # Default from one H200 lease (docs/performance.md, "Level 1's batch window"): under 512 clients both settings
    # served the same (2,644 vs 2,611 req/s medians, ranges overlapping, mean batch 63.8 each), and alone an idle
    # replica that starts at once answered in 3.1 ms p50 against the window's 5.4 ms.
    wait_when_idle: bool = Field(
        False,
        description="Hold a batch up to max_wait_ms for more requests even when the replica is idle. False (the "
        "default): an idle replica starts on what it has at once (no batch window at low load); batches still form "
        "from the requests that arrive while one runs, so under load the batches are as large as with the window.",
    )
    worker: Literal["thread", "process"] = Field(
        "thread",
        description="Where each replica runs: 'thread' in the miner process; 'process' in a worker process of its own "
        "(model execution and device JPEG decoding leave the miner's interpreter; a dead worker is restarted). "
        "Synchronous backends only. A process holds a CUDA context of its own: count it in memory_gb.",
    )
    memory_gb: float = Field(1.0, ge=0.0, le=1024.0, description="Estimated device memory of one replica.")
    weight: float = Field(1.0, ge=0.0, le=100.0, description="Weight of this expert's log-odds in pooling.")
    calibration: Calibration = Field(default_factory=Calibration)
    warmup_batches: int = Field(2, ge=0, le=100, description="Dummy batches run at load (per batch size tried).")
    expected_latency_ms: float | None = Field(
        None, ge=0.0, le=600_000.0, description="Latency assumed before any batch was measured (None: warm-up's)."
    )
    options: dict[str, Any] = Field(default_factory=dict, description="Backend-specific options, checked at load.")

    @field_validator("device")
    @classmethod
    def _device_form(cls, value: str) -> str:
        if not _DEVICE_RE.match(value):
            raise ValueError(f"device must be 'auto', 'cpu' or 'cuda:N', got {value!r}")
        return value

    @model_validator(mode="after")
    def _check_options(self) -> ExpertConfig:
        options_cls = options_model_for(self.backend)
        try:
            self.__dict__["options"] = options_cls.model_validate(self.options).model_dump()
        except ValidationError as exc:
            raise ValueError(f"options of expert {self.name!r} ({self.backend}): {exc}") from exc
        if self.resize is not None and self.backend not in RESIZE_BACKENDS:
            raise ValueError(
                f"expert {self.name!r}: resize={self.resize!r} does not apply to backend={self.backend!r} "
                f"(only {', '.join(RESIZE_BACKENDS)} resize to a fixed input)"
            )
        if self.worker == "process" and self.backend in ASYNC_BACKENDS:
            raise ValueError(
                f"expert {self.name!r}: worker='process' does not apply to backend={self.backend!r} "
                "(it runs in an engine or server of its own already)"
            )
        if self.replicas > 1 and self.device != "auto":
            raise ValueError(
                f"expert {self.name!r}: replicas={self.replicas} needs device='auto', got device={self.device!r}"
            )
        return self

    def typed_options(self) -> Any:
        """The options as the backend's own pydantic model."""
        return options_model_for(self.backend).model_validate(self.options)


class LevelConfig(Strict):
    """A step of the cascade: its experts run together, then the pooled answer may exit."""

    name: str = Field(..., min_length=1, max_length=64)
    experts: list[ExpertConfig] = Field(..., min_length=1)
    exit_margin: float = Field(
        0.3, ge=0.0, le=0.5, description="Exit when |pooled - 0.5| >= this (0.5: never exit early)."
    )


class AnswerConfig(Strict):
    """What the validator is sent, from the cascade's calibrated probability (cascade/answer.py, docs/learning.md).

    Validators score only the binarised answer, and a consensus task's label is the rounded mean of the raw
    answers, this miner's own included: a confident answer pulls that label to its side and costs nothing on a
    known-answer task. The calibrated probability still drives exits, metrics and active learning.
    """

    policy: Literal["calibrated", "decisive"] = Field(
        "decisive",
        description="calibrated: send the cascade's probability; decisive: send decisive_value on the side of the "
        "decision (1 - decisive_value for 'no roadwork'). Answers from the prior are sent as they are.",
    )
    decisive_value: float = Field(
        0.99, gt=0.5, le=1.0, description="The confident value a decisive answer sends for 'roadwork'."
    )


class CascadeConfig(Strict):
    """The ordered levels, cheapest first, and the answer given when no level could answer in time."""

    version: str = Field("0", min_length=1, max_length=64, description="Recorded with every kept sample.")
    release: str = Field(DEFAULT_RELEASE, description="X.Y.Z of the submitted model card (cascade/release.py).")
    prior: float = Field(
        0.5, ge=0.0, le=1.0, description="Answer when nothing finished in time (validators round 0.5 down)."
    )
    levels: list[LevelConfig] = Field(..., min_length=1)
    answer: AnswerConfig = Field(default_factory=AnswerConfig)
    calibration: Path | None = Field(
        None,
        description="Fitted calibration file (JSON from `sn72-eval --fit`), relative to this YAML. Its temperatures,"
        " biases, per-level weights, thresholds and exit margins replace the YAML's.",
    )
    _fitted: CalibrationFile | None = PrivateAttr(None)

    @field_validator("release")
    @classmethod
    def _release_form(cls, value: str) -> str:
        parse_release(value)  # raises with the X.Y.Z rule in the message
        return value

    @model_validator(mode="after")
    def _unique_names(self) -> CascadeConfig:
        seen: set[str] = set()
        for level in self.levels:
            for expert in level.experts:
                if expert.name in seen:
                    raise ValueError(f"expert name {expert.name!r} is used twice; names must be unique")
                seen.add(expert.name)
        return self

    def experts(self) -> list[ExpertConfig]:
        return [expert for level in self.levels for expert in level.experts]

    def fitted(self) -> CalibrationFile | None:
        """The calibration being served (`load_cascade` reads the file `calibration` names), or None."""
        return self._fitted


class SchedulerConfig(Strict):
    """Admission, deadline routing and the result cache."""

    max_in_flight: int | None = Field(
        None, ge=1, le=100_000,
        description="Requests inside the cascade at once; unset: max_in_flight_per_replica per first-level replica.",
    )
    max_in_flight_per_replica: int = Field(
        256, ge=1, le=100_000,
        description="Room per replica of the first level when max_in_flight is unset: a second GPU doubles it.",
    )
    max_in_flight_per_hotkey: int = Field(
        64, ge=1, le=100_000, description="A caller beyond this waits behind other callers."
    )
    max_waiting: int = Field(4096, ge=0, le=1_000_000, description="Admission queue bound; beyond it: rejected.")
    latency_quantile: float = Field(0.95, gt=0.0, lt=1.0, description="Quantile of a level's latency to plan with.")
    latency_window: int = Field(256, ge=8, le=100_000, description="Recent batches each latency estimate uses.")
    answer_guard_ms: float = Field(15.0, ge=0.0, le=5000.0, description="Time kept back to hand the answer over.")
    latency_horizon_s: float = Field(
        120.0, gt=0.0, le=86_400.0, description="Batch durations older than this no longer count in estimates."
    )
    latency_stale_s: float = Field(
        10.0, gt=0.0, le=86_400.0, description="A level skipped for time gets a probe batch once unmeasured this long."
    )
    unhealthy_after_failures: int = Field(
        3, ge=1, le=1000, description="Consecutive failed batches that take a replica out of service."
    )
    unhealthy_cooldown_s: float = Field(
        30.0, ge=0.0, le=86_400.0, description="How long an unhealthy replica is skipped before it is retried."
    )
    hang_factor: float = Field(
        10.0, ge=1.0, le=1000.0, description="A batch running this many times its usual latency is hung."
    )
    hang_min_ms: float = Field(1000.0, ge=1.0, le=600_000.0, description="...and running at least this long.")
    cache_size: int = Field(4096, ge=0, le=10_000_000, description="Results kept by image hash (0: off).")
    cache_ttl_s: float = Field(900.0, ge=0.0, le=86_400.0, description="How long a cached result stays valid.")
    decode_workers: int = Field(2, ge=1, le=64, description="Threads that decode images.")
    inline_check_max_bytes: int = Field(
        1 << 20, ge=0, le=1 << 26,
        description="JPEGs for a device decoder up to this size (base64) are checked on the engine's loop, not in "
        "the decode pool (0: never).",
    )
    worker_nice: int = Field(
        0, ge=0, le=19, description="Niceness of decode and expert threads: under overload the axon's thread wins."
    )
    gil_switch_interval_ms: float = Field(
        0.5, ge=0.05, le=100.0, description="Process-wide sys.setswitchinterval (Python's default is 5 ms)."
    )
    event_loop: EventLoopKind = Field(
        "uvloop", description="The engine's event loop: uvloop (cheaper per request) or the standard library's."
    )


class DecodeConfig(Strict):
    """Limits on what an incoming image may be."""

    max_payload_bytes: int = Field(
        32 * 1024 * 1024, ge=1024, le=1 << 31, description="Largest base64 string accepted."
    )
    max_pixels: int = Field(16_000_000, ge=1024, le=1 << 31, description="Largest image handed to the experts.")
    max_decode_pixels: int = Field(
        120_000_000, ge=1024, le=1 << 32, description="Larger images are refused whatever the policy (bombs)."
    )
    oversize: Literal["downscale", "reject"] = Field("downscale", description="What happens above max_pixels.")
    reduce_jpeg: bool = Field(
        True, description="Decode JPEGs at the smallest DCT scale that still covers every expert's input size."
    )
    device: Literal["auto", "on", "off"] = Field(
        "auto",
        description="JPEGs for GPU experts decoded on their device (nvJPEG) in the expert's batch: auto (where "
        "torchvision's CUDA decoder works), on (start-up fails where it does not), off (PIL always). docs/decoding.md",
    )
    device_max_pixels: int = Field(
        4_194_304, ge=1024, le=1 << 31,
        description="Larger JPEGs are decoded by PIL at reduced DCT scale instead of in full on the device.",
    )
    formats: list[ImageFormat] = Field(default_factory=lambda: list(DEFAULT_FORMATS), min_length=1)
    budget_bytes: int = Field(
        512 << 20, ge=1 << 20, le=1 << 40,
        description="Memory concurrent decodes may hold at once, as estimated from each header by format, mode, bit "
        "depth and the JPEG coefficient buffer (docs/decoding.md); an image estimated above it decodes alone.",
    )
    max_jpeg_scans: int = Field(
        100, ge=1, le=100_000,
        description="JPEGs with more scans are refused from the header (libjpeg walks the frame once per scan; "
        "encoders write 1-20).",
    )
    max_decode_work: int = Field(
        3_000_000_000, ge=1024, le=1 << 50,
        description="Images whose estimated decoding work (pixels x components, once per JPEG scan) is larger are "
        "refused from the header.",
    )
    isolate_above_work: int = Field(
        50_000_000, ge=0, le=1 << 50,
        description="Images whose estimated work is larger are decoded in a killable worker process, abandoned at "
        "the request's deadline (0: every image; the rest decode in the decode threads).",
    )
    isolated_workers: int = Field(
        2, ge=0, le=64,
        description="Worker processes for costly decodes (0: none; costly images then decode in the decode threads).",
    )
    isolated_per_hotkey: int = Field(
        1, ge=1, le=64, description="Worker processes one caller may hold at once; its further costly images wait."
    )
    isolated_nice: int = Field(
        10, ge=0, le=19, description="Niceness of the decode worker processes: the request path keeps the CPU first."
    )
    mmap_threshold_bytes: int = Field(
        1 << 20, ge=0, le=1 << 30,
        description="glibc mmap threshold fixed at start, so freed image buffers go back to the OS (0: glibc default).",
    )

    @model_validator(mode="after")
    def _bounds_order(self) -> DecodeConfig:
        if self.max_decode_pixels < self.max_pixels:
            raise ValueError(
                f"max_decode_pixels ({self.max_decode_pixels}) must be >= max_pixels ({self.max_pixels})"
            )
        return self


class ActiveLearningConfig(Strict):
    """Which finished requests are kept for retraining, and how much disk they may take."""

    enabled: bool = False
    directory: Path = Field(Path("al-store"), description="Store folder (images + SQLite index).")
    uncertain_band: float = Field(0.15, ge=0.0, le=0.5, description="Keep when |pooled - 0.5| < this.")
    disagreement: float = Field(0.5, ge=0.0, le=1.0, description="Keep when two experts differ by more.")
    keep_deadline_cut: bool = Field(True, description="Keep requests whose cascade the deadline cut short.")
    keep_labelled: bool = Field(True, description="Keep requests that carry a testnet label.")
    sample_rate: float = Field(0.02, ge=0.0, le=1.0, description="Random share of the rest kept for calibration.")
    max_items: int = Field(50_000, ge=1, le=100_000_000)
    max_bytes: int = Field(20 * 1024**3, ge=1024, le=1 << 50)
    queue_size: int = Field(256, ge=1, le=1_000_000, description="Samples waiting for the writer; beyond: dropped.")
    warn_interval_s: float = Field(
        60.0, ge=0.0, le=86_400.0, description="At most one warning per kind of drop in this interval."
    )
    reopen_interval_s: float = Field(
        30.0, ge=0.0, le=86_400.0, description="Wait between attempts to open a store that failed to open."
    )


class EngineConfig(Strict):
    """Everything the engine needs; the miner adds wallet, chain and axon settings around it."""

    cascade: CascadeConfig
    scheduler: SchedulerConfig = Field(default_factory=SchedulerConfig)
    decode: DecodeConfig = Field(default_factory=DecodeConfig)
    active_learning: ActiveLearningConfig = Field(default_factory=ActiveLearningConfig)


def read_yaml(path: Path) -> dict[str, Any]:
    """A YAML mapping from a file, with an error that names the file."""
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ValueError(f"cannot read config {path}: {exc}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ValueError(f"config {path} must hold a mapping at the top, got {type(data).__name__}")
    return data


def load_cascade(path: Path) -> CascadeConfig:
    """A cascade YAML file; relative model paths and the calibration file are resolved against its folder.

    A calibration that does not fit the cascade (other experts, levels, or weights other than those it was fitted
    for) is a ValueError.
    """
    data = read_yaml(path)
    try:
        config = CascadeConfig.model_validate(data)
    except ValidationError as exc:
        # NOTE: pydantic keeps no reference to what it validated, and the names of levels and experts live only
        # there: kept on the error so that format_validation_error can name them (its callers pass only the error).
        exc.cascade_input = data  # type: ignore[attr-defined]
        raise
    config = resolve_model_paths(config, path.parent)
    if config.calibration is not None:
        config.calibration = (path.parent / config.calibration.expanduser()).resolve()
        calibration, short_hash = read_calibration(config.calibration)
        apply_calibration(config, calibration, short_hash)
    return config


def base_version(version: str) -> str:
    """The cascade's own version, without the calibration's hash that `apply_calibration` adds."""
    return version.split("+cal.", 1)[0]


def apply_calibration(config: CascadeConfig, calibration: CalibrationFile, short_hash: str,
                      identity: Identity = content_identity) -> None:
    """Serve a fitted calibration: its expert calibrations and exit margins replace the YAML's, its
    per-level weights reach `consensus.Pooling`, and the effective version becomes `version+cal.<hash>`.

    `identity` names a model by content (the fit passes the identities it already computed)."""
    members = [(level.name, [(e.name, str(e.backend), e.model) for e in level.experts]) for level in config.levels]
    try:
        check_against(calibration, members, identity)
    except ValueError as exc:
        raise ValueError(f"calibration {config.calibration} does not fit this cascade: {exc}") from exc
    for expert in config.experts():
        fit = calibration.experts[expert.name]
        expert.calibration = Calibration(temperature=fit.temperature, bias=fit.bias)
    for level, level_fit in zip(config.levels, calibration.levels, strict=True):
        level.exit_margin = level_fit.exit_margin
    config.version = f"{base_version(config.version)}+cal.{short_hash}"
    config._fitted = calibration


def resolve_model_paths(config: CascadeConfig, base: Path) -> CascadeConfig:
    """Make `./x` and `../x` model paths absolute, so the miner can run from any folder."""
    for expert in config.experts():
        if expert.model.startswith(("./", "../")):
            expert.model = str((base / expert.model).resolve())
    return config


def format_validation_error(exc: ValidationError, data: Any = None, schema: type[BaseModel] = CascadeConfig) -> str:
    """One line per problem: the dotted field, what is wrong, the value given, and for a cascade the names of the
    level and expert the field belongs to (from `data`, the validated input, or what load_cascade kept of it); an
    unknown key comes with the closest known names of its section in `schema`."""
    if data is None:
        data = getattr(exc, "cascade_input", None)
    lines = []
    for error in exc.errors():
        where = ".".join(str(part) for part in error["loc"]) or "(top)"
        given = error.get("input")
        details = [] if isinstance(given, dict) else [f"given: {given!r}"]
        owner = owner_names(error["loc"], data)
        if owner:
            details.append(owner)
        hint = did_you_mean(schema, error["loc"]) if error["type"] == "extra_forbidden" else ""
        lines.append(f"{where}: {error['msg']}{hint}" + (f" ({'; '.join(details)})" if details else ""))
    return "\n".join(lines)


def owner_names(loc: tuple[int | str, ...], data: Any) -> str:
    """`expert 'vit' of level 'fast'` for a location inside a named list item of `data` ('' when none is named):
    an operator knows the cascade by its names, not by list positions."""
    named: list[str] = []
    node = data
    for part in loc:
        if isinstance(part, int) and isinstance(node, list) and 0 <= part < len(node):
            node = node[part]
            name = node.get("name") if isinstance(node, dict) else None
            if name is not None:
                named.append(f"{_ITEM_KIND.get(len(named), 'item')} {name!r}")
        elif isinstance(part, str) and isinstance(node, dict):
            node = node.get(part)
        else:
            break
    return " of ".join(reversed(named))


_ITEM_KIND = {0: "level", 1: "expert"}  # named list items by depth: levels[i], then levels[i].experts[j]


def did_you_mean(schema: type[BaseModel], loc: tuple[int | str, ...]) -> str:
    """`; did you mean 'port'?` when the unknown key at `loc` is close to a field of its section ('' otherwise)."""
    section = _section_at(schema, loc[:-1])
    if section is None or not loc or not isinstance(loc[-1], str):
        return ""
    close = difflib.get_close_matches(loc[-1], list(section.model_fields), n=2, cutoff=0.6)
    return "; did you mean " + " or ".join(repr(name) for name in close) + "?" if close else ""


def _section_at(schema: type[BaseModel], loc: tuple[int | str, ...]) -> type[BaseModel] | None:
    """The model class of the section `loc` points into (list positions skipped), or None."""
    node: Any = schema
    for part in loc:
        if isinstance(part, int):
            continue
        fields = getattr(node, "model_fields", None)
        if fields is None or part not in fields:
            return None
        node = _model_in(fields[part].annotation)
    return node if isinstance(node, type) and issubclass(node, BaseModel) else None


def _model_in(annotation: Any) -> Any:
    """The model class an annotation holds: itself, or inside `X | None` and `list[X]`."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()) or ():
        found = _model_in(arg)
        if found is not None:
            return found
    return None
