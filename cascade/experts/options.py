"""Backend-specific options, one pydantic model per backend.

They live apart from the backends so a config can be checked without importing torch.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator


class _Options(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ClassifierOptions(_Options):
    """transformers image classifier (`AutoModelForImageClassification`)."""

    positive_labels: list[str] = Field(
        default_factory=lambda: ["roadwork"], description="Label names (case-insensitive) that mean roadwork."
    )
    positive_indices: list[int] = Field(
        default_factory=list, description="Class indices that mean roadwork; used instead of names when given."
    )
    channels_last: bool = Field(True, description="NHWC memory layout on CUDA (faster convolutions and patches).")
    cuda_graphs: bool = Field(True, description="Capture CUDA graphs per batch bucket at load (CUDA only).")
    compile_max_batch: int = Field(
        0, ge=0, le=4096,
        description="With cuda_graphs: batch buckets up to this size are captured from a torch.compile'd forward "
        "(batch-1 latency down, seconds more load; docs/configuration.md). 0: none.",
    )


class ZeroShotOptions(_Options):
    """CLIP / SigLIP / SigLIP2 through transformers: roadwork prompts against the rest."""

    positive_prompts: list[str] = Field(
        default_factory=lambda: [
            "a photo of road construction work",
            "a street with roadwork, traffic cones and barriers",
        ],
        min_length=1,
    )
    negative_prompts: list[str] = Field(
        default_factory=lambda: ["a photo of a normal street", "a road with ordinary traffic"],
        min_length=1,
    )


_ROADWORK_CLASSES: tuple[str | int, ...] = ("cone", "traffic cone", "barrier", "construction sign", "excavator")


class DetectorOptions(_Options):
    """ultralytics detector: roadwork objects become an image probability (noisy-OR of the top-k)."""

    classes: list[str | int] = Field(
        default_factory=lambda: list(_ROADWORK_CLASSES),
        min_length=1,
        description="Roadwork class names (case-insensitive) or indices.",
    )
    top_k: int = Field(3, ge=1, le=100, description="Detections combined by noisy-OR.")
    conf: float = Field(0.05, ge=0.0, le=1.0, description="Detections below this confidence are ignored.")
    iou: float = Field(0.6, ge=0.0, le=1.0, description="NMS IoU threshold.")
    floor: float = Field(0.02, ge=0.0, le=0.5, description="Probability when no roadwork object is found.")
    max_det: int = Field(100, ge=1, le=1000, description="Most detections kept per image after NMS.")


_ROADWORK_QUERIES = ("traffic cone", "construction barrier", "road work sign", "excavator", "worker in a safety vest")


class OWLv2Options(_Options):
    """OWLv2 open-vocabulary detector: text queries become an image probability (noisy-OR of the top-k)."""

    queries: list[str] = Field(
        default_factory=lambda: list(_ROADWORK_QUERIES),
        min_length=1,
        max_length=64,
        description="Text queries for roadwork objects, embedded once at load.",
    )
    top_k: int = Field(3, ge=1, le=100, description="Detections combined by noisy-OR.")
    conf: float = Field(0.1, ge=0.0, le=1.0, description="Detections scoring below this are ignored.")
    iou: float = Field(0.5, ge=0.0, le=1.0, description="Class-agnostic NMS IoU threshold (1.0: no NMS).")
    floor: float = Field(0.02, ge=0.0, le=0.5, description="Probability when no roadwork object is found.")
    max_candidates: int = Field(
        100, ge=1, le=10_000, description="Best-scoring patches per image that get a box and go to NMS."
    )

    @model_validator(mode="after")
    def _queries_usable(self) -> OWLv2Options:
        if any(not query.strip() for query in self.queries):
            raise ValueError("queries must not be empty strings")
        if len(set(self.queries)) != len(self.queries):
            raise ValueError(f"queries repeat: {self.queries}")
        return self


class VLMOptions(_Options):
    """A VLM asked a yes/no question; P(roadwork) from the Yes/No token probabilities."""

    question: str = Field(
        "Is there roadwork or a construction zone on or beside the road in this image? Answer Yes or No.",
        min_length=1,
    )
    yes_tokens: list[str] = Field(default_factory=lambda: ["Yes", "yes", " Yes", " yes"], min_length=1)
    no_tokens: list[str] = Field(default_factory=lambda: ["No", "no", " No", " no"], min_length=1)
    max_pixels: int = Field(
        448 * 448, ge=28 * 28, le=16_000_000, description="Images are scaled down to at most this many pixels."
    )
    # vLLM in-process engine
    gpu_memory_utilization: float = Field(0.35, gt=0.0, le=0.95)
    max_model_len: int = Field(4096, ge=256, le=1_000_000)
    enable_prefix_caching: bool = True
    # remote OpenAI-compatible server
    base_url: str | None = Field(None, description="e.g. http://127.0.0.1:8000/v1 (vlm_remote only).")
    api_key_env: str | None = Field(None, description="Environment variable holding the server's API key.")
    served_model: str | None = Field(None, description="Model name the server knows (default: `model`).")
    top_logprobs: int = Field(20, ge=1, le=20)
    jpeg_quality: int = Field(90, ge=50, le=100, description="JPEG quality of images sent to a server (vlm_remote).")

    @model_validator(mode="after")
    def _token_sets_disjoint(self) -> VLMOptions:
        overlap = set(self.yes_tokens) & set(self.no_tokens)
        if overlap:
            raise ValueError(f"yes_tokens and no_tokens share {sorted(overlap)}")
        return self


_BY_BACKEND: dict[str, type[_Options]] = {
    "hf_classifier": ClassifierOptions,
    "zero_shot": ZeroShotOptions,
    "detector": DetectorOptions,
    "owlv2": OWLv2Options,
    "vlm_transformers": VLMOptions,
    "vlm_vllm": VLMOptions,
    "vlm_remote": VLMOptions,
}


def options_model_for(backend: str) -> type[_Options]:
    """The options model of a backend name."""
    try:
        return _BY_BACKEND[backend]
    except KeyError:
        raise ValueError(f"unknown backend {backend!r}; known: {sorted(_BY_BACKEND)}") from None
