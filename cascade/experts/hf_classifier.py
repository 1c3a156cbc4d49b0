"""transformers image classifier: any `AutoModelForImageClassification`, hub id or local folder.

P(roadwork) is the softmax mass of the labels that mean roadwork (by name or index); a model with a
single output is read through a sigmoid. The subnet's baseline (`natix-network-org/roadwork`, a
ViT-B/16 with labels None/Roadwork) loads here unchanged.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import numpy as np
import torch

from cascade.decode import DecodeError
from cascade.experts.base import Expert, ExpertError, Stages, parameter_bytes, torch_dtype
from cascade.experts.jpeg import materialise
from cascade.experts.preprocess import batch_tensor, choose_resize, preprocessing, processor_geometry, recorded_resize


def roadwork_indices(id2label: dict[int, str], names: Sequence[str], indices: Sequence[int]) -> list[int]:
    """Class indices that mean roadwork: explicit indices win, else labels matched by name."""
    if indices:
        bad = [i for i in indices if i not in id2label]
        if bad:
            raise ExpertError(f"positive_indices {bad} not among the model's classes {sorted(id2label)}")
        return list(indices)
    wanted = {name.strip().lower() for name in names}
    found = [int(i) for i, label in id2label.items() if str(label).strip().lower() in wanted]
    if not found:
        raise ExpertError(
            f"none of the labels {sorted(wanted)} is a class of the model (classes: {dict(id2label)}); "
            "set options.positive_labels or options.positive_indices"
        )
    return found


def check_model_reference(name: str, model: str, backend: str) -> None:
    """ExpertError naming the problem when `model` is a path that is not a saved model, or not a hub id at all
    (transformers' own message for a missing folder is about the form of a repo id)."""
    from cascade.model_sources import ModelRef, Source, check_local, classify_model

    source, problem = classify_model(model, backend)
    try:
        if source is Source.INVALID:
            raise ValueError(f"{model!r} is {problem}")
        if source is Source.LOCAL:
            check_local(ModelRef(name, backend, model, source, None))
    except ValueError as exc:
        raise ExpertError(f"expert {name}: {exc} (the bench and demo models are built by sn72-make-tiny-models; "
                          "a hub id is fetched by sn72-download-models)") from None


def eager_logits(model: torch.nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    def logits(pixels: torch.Tensor) -> torch.Tensor:
        return model(pixel_values=pixels).logits

    return logits


def eager_probabilities(model: torch.nn.Module,
                        positive: torch.Tensor | None) -> Callable[[torch.Tensor], torch.Tensor]:
    """pixels -> P(roadwork) per image: the model and the answer's head as one function, so that a captured graph
    replays the head too: run eagerly after the graph, it was half a dozen more kernel launches and a copy of its
    index (a host list) to the device, which waits for the stream, at every call.
    `positive`: the roadwork labels' indices on the model's device; None for a single-output (sigmoid) model."""
    logits_of = eager_logits(model)

    def probabilities(pixels: torch.Tensor) -> torch.Tensor:
        logits = logits_of(pixels).float()
        if positive is None:
            probs = torch.sigmoid(logits[:, 0])
        else:
            probs = torch.softmax(logits, dim=-1).index_select(1, positive).sum(dim=-1)
        return probs.clamp(0.0, 1.0)

    return probabilities


class ClassifierExpert(Expert):
    decodes_jpeg = True

    def load(self) -> None:
        from transformers import AutoImageProcessor, AutoModelForImageClassification

        self.dtype = torch_dtype(self.config.dtype, self.device)
        check_model_reference(self.name, self.config.model, self.config.backend)
        try:
            processor = AutoImageProcessor.from_pretrained(self.config.model)
            model = AutoModelForImageClassification.from_pretrained(self.config.model, dtype=self.dtype)
        except OSError as exc:
            raise ExpertError(f"expert {self.name}: cannot load {self.config.model!r}: {exc}") from exc
        self.model = model.to(self.device).eval()
        self.channels_last = bool(self.options.channels_last and self.device.startswith("cuda"))
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.size_hw, self.mean, self.std, self.rescale = processor_geometry(processor, self.config.input_size)
        self.resize, source = choose_resize(self.name, self.config.resize, recorded_resize(self.config.model))
        self.preprocessing = preprocessing(self.size_hw, self.resize, source)  # logged once per expert by the engine
        id2label = {int(k): v for k, v in self.model.config.id2label.items()}
        self.num_labels = len(id2label)
        self.positive = roadwork_indices(id2label, self.options.positive_labels, self.options.positive_indices)
        # A closure over the model, never a bound method of self: the expert must not refer to itself, or
        # once replaced it would wait for a cycle collection the engine's frozen heap never runs (hot reload).
        single = self.num_labels == 1  # one output: read through a sigmoid
        positive = None if single else torch.tensor(self.positive, dtype=torch.long, device=self.device)
        self.probabilities_of: Callable[[torch.Tensor], torch.Tensor] | None = eager_probabilities(self.model, positive)
        if self.options.cuda_graphs and self.device.startswith("cuda"):
            from cascade.experts.cuda_graphs import try_graph

            self.probabilities_of = try_graph(self.probabilities_of, (3, *self.size_hw), self.config.max_batch,
                                              self.device, self.dtype, self.channels_last,
                                              self.options.compile_max_batch)

    def predict_batch(self, images: Sequence[np.ndarray]) -> list[float | DecodeError]:
        self.stages = None
        finish = self.start_batch(images)
        began = time.perf_counter()
        answers = finish()
        if self.stages is not None:  # the wait for the device's answers, in `finish` on a GPU
            self.stages["wait"] = self.stages.get("wait", 0.0) + time.perf_counter() - began
        return answers

    @torch.inference_mode()
    def start_batch(self, images: Sequence[np.ndarray]) -> Callable[[], list[float | DecodeError]]:
        """Decode, preprocess and forward queued on the device; the answers' copy to the host queued behind them
        (into pinned memory, with an event), so that the returned function only waits for the device."""
        if self.probabilities_of is None:  # closed: refuse before decoding anything
            raise ExpertError(f"expert {self.name} is closed")
        stages = Stages()
        batch = materialise(images, self.device, self.jpeg_decoder)
        stages.lap("decode")
        if not batch.images:
            empty = batch.answers([])
            return lambda: empty
        pixels = batch_tensor(
            batch.images, self.size_hw, self.mean, self.std, self.device, self.dtype, self.rescale,
            self.channels_last, resize=self.resize,
        )
        stages.lap("preprocess")
        probabilities = self.probabilities_of(pixels)
        if not probabilities.is_cuda:  # answered already: read back here
            values = self.read_answers(probabilities, stages)
            return lambda: batch.answers(values)
        stages.lap("forward")
        self.stages = stages.seconds  # "wait" is added by whoever waits for the answers (`finish`)
        # Queued now, right behind this batch's forward: a copy made when the answers are wanted would queue behind
        # whatever batch the worker started in between.
        host = torch.empty(probabilities.shape, dtype=probabilities.dtype, pin_memory=True)
        host.copy_(probabilities, non_blocking=True)
        copied = torch.cuda.Event()
        copied.record(torch.cuda.current_stream(probabilities.device))

        def answers() -> list[float | DecodeError]:
            copied.synchronize()
            return batch.answers(host.tolist())

        return answers

    def input_side(self) -> int | None:
        return max(self.size_hw)

    def memory_bytes(self) -> int:
        return parameter_bytes(self.model)

    def close(self) -> None:
        self.model = None
        self.probabilities_of = None  # captured CUDA graphs hold their own memory pool
