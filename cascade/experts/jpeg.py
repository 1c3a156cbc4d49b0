"""JPEGs decoded on the expert's own GPU, in its batch (nvJPEG through torchvision), PIL as the fallback.

Why in the expert's batch, not in the request path: the micro-batcher already forms the batch that
nvJPEG wants (one call decodes them all, baseline JPEGs on the GPU's hardware decoder); the replica
that runs the batch is the only one that knows the device; device memory is held for one batch, not
for every request waiting in a queue; and the expert's thread is the only one driving its device's
stream. The scheduler still never touches a tensor: it hands over `DeviceJpeg` objects (bytes and a
checked header) and the expert turns them into tensors (docs/decoding.md).

Failure isolation: torchvision's batched decode returns nothing when one file fails. The batch is then
split in halves until the refused files are alone (a few calls, not one per image); each is decoded by
PIL instead (`DeviceJpeg.host_pixels`), and one that PIL cannot read either becomes that image's
DecodeError while the rest of the batch is answered. Out-of-memory and lost-context errors are not a
file's fault: they fail the batch as before (the scheduler halves its batches or exits for a restart).

NOTE: torchvision keeps ONE nvJPEG decoder per process and rebuilds it (leaking the old one's buffers)
whenever it is called for another device. So the first GPU that decodes keeps nvJPEG for the process;
experts on other GPUs get host arrays (PIL) and say so at load (`serving.defers_jpegs`). A replica in a worker
process of its own (`worker: process`, cascade/experts/worker.py) is the only expert of its process: each GPU
then has its own decoder.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from loguru import logger

from cascade.decode import DecodeError, DeviceJpeg
from cascade.device_errors import is_fatal_device_error, is_out_of_memory
from cascade.experts.base import Expert, ExpertError
from cascade.experts.preprocess import Pixels

JpegDecoder = Callable[[list[torch.Tensor], str], list[torch.Tensor]]  # encoded CPU uint8 -> 3xHxW uint8 on device

_lock = threading.Lock()
_owner: str | None = None  # the device whose experts use nvJPEG in this process (see the NOTE above)
_works: dict[str, str] = {}  # device -> "" when nvJPEG decodes there, else why not
_warned_fallback = False


def nvjpeg(encoded: list[torch.Tensor], device: str) -> list[torch.Tensor]:
    """torchvision's batched nvJPEG decode to RGB on `device` (3xHxW uint8 tensors, ready on its current stream)."""
    from torchvision.io import ImageReadMode, decode_jpeg

    target = torch.device(device)
    if target.index is None:  # torchvision rebuilds its decoder for "cuda" after "cuda:0": always name the index
        target = torch.device("cuda", torch.cuda.current_device())
    # torchvision syncs the result with the current stream of the device current when its decoder was made.
    with torch.cuda.device(target):
        decoded = decode_jpeg(encoded, mode=ImageReadMode.RGB, device=target)
    return list(decoded)


def _probe(device: str) -> str:
    """"" if nvJPEG decodes a small JPEG on `device` as PIL does, else the reason it cannot."""
    from cascade.experts.base import jpeg_of

    if not device.startswith("cuda"):
        return f"{device} is not a CUDA device"
    try:
        gradient = np.linspace(0, 255, 32 * 48 * 3).astype(np.uint8).reshape(32, 48, 3)
        jpeg = jpeg_of(gradient, quality=95)
        decoded = nvjpeg([torch.frombuffer(bytearray(jpeg.data), dtype=torch.uint8)], device)[0]
        expected = torch.from_numpy(jpeg.host_pixels()).permute(2, 0, 1).to(device)
        if tuple(decoded.shape) != tuple(expected.shape):
            return f"nvJPEG returned shape {tuple(decoded.shape)} for {tuple(expected.shape)}"
        error = (decoded.float() - expected.float()).abs().mean().item()
        if error > 4.0:
            return f"nvJPEG's pixels differ from PIL's by {error:.1f} on average"
    except Exception as exc:  # noqa: BLE001 - any failure means: not available here, and why
        return f"torchvision's CUDA JPEG decoder does not work on {device}: {type(exc).__name__}: {exc}"
    return ""


def enable_device_jpeg(expert: Expert, mode: str) -> str | None:
    """Give `expert` nvJPEG if `mode` (decode.device: auto/on/off) and its device allow; a line for the log.

    None when nothing applies (off, or a backend that needs host arrays). ExpertError with mode 'on' when the
    expert's device cannot decode JPEGs (torchvision without nvJPEG, or not a CUDA device).
    """
    global _owner
    if mode == "off" or not expert.decodes_jpeg:
        return None
    device = expert.device
    if device == "cuda":  # the same GPU as "cuda:N" must be recognised as such
        device = f"cuda:{torch.cuda.current_device()}"
    with _lock:
        if _owner is not None and _owner != device:  # probing here would move torchvision's decoder: not tried
            taken = (f"nvJPEG already decodes for {_owner} in this process (torchvision keeps one decoder per "
                     "process and rebuilds it on every change of device)")
            return f"expert {expert.name}@{device}: JPEGs decoded by PIL on the host ({taken})"
        if device not in _works:
            _works[device] = _probe(device)
        reason = _works[device]
        if not reason:
            _owner = device
    if reason:
        if mode == "on":
            raise ExpertError(f"expert {expert.name}: decode.device is 'on' but {reason}")
        return f"expert {expert.name}@{device}: JPEGs decoded by PIL on the host ({reason})"
    expert.jpeg_decoder = nvjpeg
    return f"expert {expert.name}@{device}: JPEGs decoded on the device in its batches (nvJPEG)"


@dataclass
class Materialised:
    """A batch turned into pixels: what could be decoded, where each came from, and the refused images."""

    size: int
    images: list[Pixels] = field(default_factory=list)  # in batch order, refused images left out
    refused: dict[int, DecodeError] = field(default_factory=dict)  # batch position -> why

    def answers(self, values: Sequence[float]) -> list[float | DecodeError]:
        """The expert's answers for `images`, with each refused image's DecodeError back in its place."""
        if len(values) != len(self.images):
            raise ExpertError(f"{len(values)} answers for {len(self.images)} decoded images")
        answered = iter(values)
        return [self.refused[i] if i in self.refused else next(answered) for i in range(self.size)]


def materialise(images: Sequence[np.ndarray | DeviceJpeg], device: str, decoder: JpegDecoder | None) -> Materialised:
    """Arrays as they are; JPEGs decoded on `device` by `decoder` in one call, turned upright (see the module
    docstring for what happens when the decoder refuses a file)."""
    jpegs = [i for i, image in enumerate(images) if isinstance(image, DeviceJpeg)]
    if not jpegs:
        return Materialised(len(images), list(images))  # type: ignore[arg-type]  # only arrays here
    if decoder is None:
        raise ExpertError("a JPEG reached an expert without a device decoder (the request path decodes those)")
    decoded: dict[int, Pixels | DecodeError] = {}
    _decode_into(decoded, [(i, images[i]) for i in jpegs], device, decoder)  # type: ignore[misc]
    batch = Materialised(len(images))
    for index, image in enumerate(images):
        value = decoded.get(index, image)
        if isinstance(value, DecodeError):
            batch.refused[index] = value
        else:
            batch.images.append(value)  # type: ignore[arg-type]  # an array or a decoded tensor
    return batch


def _decode_into(out: dict[int, Pixels | DecodeError], jpegs: list[tuple[int, DeviceJpeg]], device: str,
                 decoder: JpegDecoder) -> None:
    """Decode `jpegs` in one call; if it fails for a file's sake, halve and retry until the refused files are alone."""
    try:
        tensors = decoder([torch.frombuffer(bytearray(j.data), dtype=torch.uint8) for _, j in jpegs], device)
        if len(tensors) != len(jpegs):
            raise RuntimeError(f"the decoder returned {len(tensors)} images for {len(jpegs)}")
        for (_, jpeg), tensor in zip(jpegs, tensors, strict=True):
            if tuple(tensor.shape) != (3, jpeg.size[1], jpeg.size[0]):
                raise RuntimeError(f"decoded shape {tuple(tensor.shape)} for a {jpeg.size[0]}x{jpeg.size[1]} JPEG")
    except Exception as exc:
        if is_out_of_memory(exc) or is_fatal_device_error(exc):
            raise  # not the file's fault: the batch fails (the scheduler halves batches, or the process restarts)
        if len(jpegs) == 1:
            index, jpeg = jpegs[0]
            out[index] = _fallback(jpeg, exc)
            return
        middle = len(jpegs) // 2
        _decode_into(out, jpegs[:middle], device, decoder)
        _decode_into(out, jpegs[middle:], device, decoder)
        return
    for (index, jpeg), tensor in zip(jpegs, tensors, strict=True):
        out[index] = upright(tensor, jpeg.orientation)


def _fallback(jpeg: DeviceJpeg, exc: Exception) -> np.ndarray | DecodeError:
    """PIL's pixels for a file the device decoder refused; its DecodeError if PIL refuses it too."""
    global _warned_fallback
    if not _warned_fallback:  # once per process: a stream of hostile files must not flood the log
        _warned_fallback = True
        logger.warning("the device JPEG decoder refused a {}x{} JPEG ({!r}); such files are decoded by PIL "
                       "(logged once)", jpeg.size[0], jpeg.size[1], exc)
    try:
        return jpeg.host_pixels()
    except DecodeError as refused:
        return refused


def upright(image: torch.Tensor, orientation: int) -> torch.Tensor:
    """A 3xHxW image turned upright by its EXIF orientation (as PIL's transposes in cascade/decode.py)."""
    if orientation == 2:  # mirrored left-right
        return image.flip(2)
    if orientation == 3:  # rotated 180
        return image.flip(1, 2)
    if orientation == 4:  # mirrored top-bottom
        return image.flip(1)
    if orientation == 5:  # transposed
        return image.transpose(1, 2)
    if orientation == 6:  # PIL ROTATE_270: a quarter turn clockwise
        return image.rot90(-1, (1, 2))
    if orientation == 7:  # transverse
        return image.transpose(1, 2).flip(1, 2)
    if orientation == 8:  # PIL ROTATE_90: a quarter turn anticlockwise
        return image.rot90(1, (1, 2))
    return image
