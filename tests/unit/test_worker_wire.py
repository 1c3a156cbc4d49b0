"""The miner-worker wire (frames, items, answers) and how a worker's failures reach the scheduler."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from cascade.config import DecodeConfig, ExpertConfig
from cascade.decode import DecodeError, DeviceJpeg
from cascade.device_errors import is_fatal_device_error, is_out_of_memory
from cascade.experts.base import Expert, ExpertError
from cascade.experts.worker import WorkerExpert
from cascade.experts.worker_main import _answer
from cascade.experts.worker_wire import (
    FrameReader,
    frame,
    frame_parts,
    pack_answer,
    pack_item,
    unpack_answer,
    unpack_item,
)
from cascade.serving import LOAD_FIELDS

messages = st.lists(st.tuples(st.sampled_from(["batch", "result"]), st.integers(0, 2**40),
                              st.lists(st.floats(0, 1) | st.binary(max_size=300), max_size=5)), min_size=1, max_size=6)


@given(messages, st.lists(st.integers(1, 97), min_size=1, max_size=20))
def test_frames_come_out_whole_however_the_stream_is_cut(sent, cuts):
    stream = b"".join(frame(m) for m in sent)
    reader, received, at, i = FrameReader(), [], 0, 0
    while at < len(stream):
        step = cuts[i % len(cuts)]
        received += list(reader.feed(stream[at:at + step]))
        at, i = at + step, i + 1
    assert received == sent


@given(st.lists(st.binary(min_size=1, max_size=4000), min_size=1, max_size=6), st.integers(1, 5000))
def test_a_batchs_jpegs_and_arrays_travel_out_of_band_and_arrive_whole(jpegs, cut):
    limits = DecodeConfig()
    array = np.arange(40 * 30 * 3, dtype=np.uint8).reshape(40, 30, 3)
    items = [pack_item(DeviceJpeg(data, (64, 48), 1, limits)) for data in jpegs] + [pack_item(array)]
    parts = frame_parts(("batch", 3, items))
    header, body = parts[0], parts[1]
    assert len(parts) == 2 + len(jpegs) + 1  # one buffer per JPEG and one for the array, none copied into the pickle
    assert len(body) < 1000 + 100 * len(jpegs) and all(data not in body for data in jpegs if len(data) > 16)
    stream = b"".join(parts)
    assert len(stream) == len(header) + len(body) + sum(map(len, jpegs)) + array.nbytes
    reader, received = FrameReader(), []
    for at in range(0, len(stream), cut):
        received += list(reader.feed(stream[at:at + cut]))
    [(kind, batch_id, back)] = received
    assert (kind, batch_id) == ("batch", 3)
    unpacked = [unpack_item(item, limits) for item in back]
    jpegs_back = [image.data for image in unpacked[:-1]]
    assert jpegs_back == jpegs and all(type(data) is bytes for data in jpegs_back)
    assert np.array_equal(unpacked[-1], array) and unpacked[-1].flags.writeable  # as the miner's own arrays are


def test_a_broken_length_prefix_is_refused_not_waited_for():
    with pytest.raises(ValueError, match="stream broken"):
        list(FrameReader().feed(b"\xff\xff\xff\xff" + b"x" * 10))  # 0x78787878 buffers
    with pytest.raises(ValueError, match="stream broken: a frame of"):
        list(FrameReader().feed(b"\x7f\xff\xff\xff\x00\x00\x00\x01\x7f\xff\xff\xff"))  # 4 GB in all


def test_items_and_answers_cross_unchanged():
    limits = DecodeConfig()
    jpeg = DeviceJpeg(b"\xff\xd8jpeg-bytes", (640, 480), 6, limits, 224)
    back = unpack_item(pack_item(jpeg), limits)
    assert isinstance(back, DeviceJpeg)
    assert (back.data, back.size, back.orientation, back.min_side, back.upright_hw) == (
        jpeg.data, jpeg.size, 6, 224, (640, 480))
    array = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
    assert np.array_equal(unpack_item(pack_item(array), limits), array)
    answers = [unpack_answer(pack_answer(v)) for v in (0.25, DecodeError("not a JPEG after all"))]
    assert answers[0] == 0.25 and isinstance(answers[1], DecodeError) and str(answers[1]) == "not a JPEG after all"


class _Failing(Expert):
    def __init__(self, error: str) -> None:
        super().__init__(ExpertConfig(name="x", backend="hf_classifier", model="m"), "cuda:0")
        self.error = error

    def load(self) -> None:
        pass

    def predict_batch(self, images):
        raise RuntimeError(self.error)


@pytest.mark.parametrize(("error", "kind", "ends"), [
    ("CUDA error: an illegal memory access was encountered", "fatal", True),
    ("CUDA out of memory. Tried to allocate 2.00 GiB", "oom", False),
    ("shape mismatch", "error", False),
])
def test_a_worker_answers_a_failed_batch_with_its_kind(error, kind, ends):
    message, fatal = _answer(_Failing(error), 7, [pack_item(np.zeros((4, 4, 3), np.uint8))], DecodeConfig())
    assert message[:3] == ("error", 7, kind) and error in message[3] and fatal is ends


def test_a_lost_device_in_a_worker_restarts_the_worker_not_the_miner():
    worker = WorkerExpert(ExpertConfig(name="x", backend="hf_classifier", model="m", worker="process"), "cuda:0")
    with pytest.raises(ExpertError) as fatal:
        worker._raise_failure("fatal", "RuntimeError: CUDA error: an illegal memory access was encountered")
    assert not is_fatal_device_error(fatal.value)  # the scheduler would end the whole miner for these words
    with pytest.raises(ExpertError) as oom:
        worker._raise_failure("oom", "OutOfMemoryError: CUDA out of memory")
    assert is_out_of_memory(oom.value)  # kept: the scheduler halves its batches


def test_worker_is_a_load_field_and_only_for_synchronous_backends():
    assert "worker" in LOAD_FIELDS  # a replica moved into or out of a process is loaded anew on reload
    with pytest.raises(ValidationError, match="worker='process' does not apply to backend='vlm_remote'"):
        ExpertConfig(name="v", backend="vlm_remote", model="http://127.0.0.1:8000/v1", worker="process")


def test_a_slow_model_is_given_longer_than_a_second_before_its_worker_counts_as_hung():
    worker = WorkerExpert(ExpertConfig(name="x", backend="hf_classifier", model="m", worker="process"), "cuda:0")
    assert worker.grace_s() == 1.0  # nothing measured yet
    worker.busy_s, worker.batches = 0.2, 10  # 20 ms batches
    assert worker.grace_s() == 1.0
    worker.busy_s, worker.batches = 3.0, 2  # 1.5 s batches: one may wait behind another
    assert worker.grace_s() == pytest.approx(4.5)


def test_a_workers_stderr_becomes_the_miners_log_lines_with_their_levels():
    import io

    from loguru import logger

    from cascade.experts.worker import relay_log

    lines: list[str] = []
    sink = logger.add(lambda message: lines.append(str(message).rstrip("\n")), format="{level} {message}")
    try:
        relay_log(io.BytesIO(b"ERROR\tdevice lost\nWARNING\tslow batch\nsome library output\n"
                             b"Loading 10%\rLoading 100%\n\n"), "vit@cuda:1")
    finally:
        logger.remove(sink)
    assert lines == ["ERROR worker vit@cuda:1 | device lost", "WARNING worker vit@cuda:1 | slow batch",
                     "INFO worker vit@cuda:1 | some library output", "INFO worker vit@cuda:1 | Loading 100%"]


@pytest.mark.slow
@settings(max_examples=30, deadline=None)
@given(st.lists(st.integers(0, 300_000), min_size=1, max_size=40), st.integers(1, 64))
@example([5000, 0], 1)  # an empty last part (an empty array's memory) once left the sender spinning
def test_the_sending_thread_delivers_every_part_in_order_through_a_small_nonblocking_socket(sizes, read_kib):
    # Partial sends (a gather larger than the socket's buffer) and a full buffer (BlockingIOError) on the way.
    import socket
    import threading

    from cascade.experts.worker_channel import send_all

    parts = [bytes([i % 251]) * size for i, size in enumerate(sizes)]
    parts.insert(1, memoryview(np.arange(5000, dtype=np.uint16)).cast("B"))  # an array's memory, as numpy sends it
    expected = b"".join(bytes(part) for part in parts)
    mine, theirs = socket.socketpair()
    mine.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    mine.setblocking(False)
    received = bytearray()

    def read() -> None:
        while len(received) < len(expected):
            chunk = theirs.recv(read_kib * 1024)
            if not chunk:
                return
            received.extend(chunk)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        send_all(mine, parts)
        reader.join(10)
    finally:
        mine.close()
        theirs.close()
    assert bytes(received) == expected
