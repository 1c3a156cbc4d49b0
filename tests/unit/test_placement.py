"""Placement plans on fake devices: exact assignments, spreading, pins, and the errors operators see."""

from __future__ import annotations

from typing import Any

import pytest

from cascade.config import ExpertConfig
from cascade.placement import (
    GIB,
    DeviceInfo,
    PlacementError,
    Slot,
    describe_plan,
    plan_placement,
    replica_bytes,
    visible_devices,
)


def make_expert(name: str, memory_gb: float = 1.0, **overrides: Any) -> ExpertConfig:
    fields: dict[str, Any] = {"name": name, "backend": "hf_classifier", "model": f"org/{name}", "memory_gb": memory_gb}
    fields.update(overrides)
    return ExpertConfig(**fields)


def make_devices(*free_gb: float, total_gb: float = 80.0) -> list[DeviceInfo]:
    return [
        DeviceInfo(name=f"cuda:{i}", total_bytes=round(total_gb * GIB), free_bytes=round(free * GIB))
        for i, free in enumerate(free_gb)
    ]


def assignment(slots: list[Slot]) -> list[tuple[str, int, str]]:
    return [(slot.expert, slot.replica, slot.device) for slot in slots]


def test_one_gpu_holds_everything_and_replicas_stack_when_there_is_no_other() -> None:
    experts = [make_expert("vit", 2.0, replicas=2), make_expert("siglip", 4.0)]
    slots = plan_placement(experts, make_devices(20.0))
    assert assignment(slots) == [("vit", 0, "cuda:0"), ("vit", 1, "cuda:0"), ("siglip", 0, "cuda:0")]


def test_two_gpus_largest_first_and_replicas_on_distinct_gpus() -> None:
    experts = [
        make_expert("vit", 1.0, replicas=2),
        make_expert("siglip", 4.0, backend="zero_shot"),
        make_expert("yolo", 1.0, backend="detector", model="yolo11m.pt"),
        # vLLM takes 0.35 of the 80 GB total = 28 GB, more than its memory_gb: the plan uses the larger.
        make_expert("vlm", 20.0, backend="vlm_vllm", options={"gpu_memory_utilization": 0.35}),
    ]
    slots = plan_placement(experts, make_devices(40.0, 40.0), reserve_gb=1.0)
    # left after reserve: 39/39 -> vlm 28 on cuda:0 (tie: lower index) -> 11/39 -> siglip on cuda:1 -> 11/35
    # -> vit#0 on cuda:1 (more left) -> vit#1 on cuda:0 (the one without vit) -> yolo on cuda:1.
    assert assignment(slots) == [
        ("vit", 0, "cuda:1"),
        ("vit", 1, "cuda:0"),
        ("siglip", 0, "cuda:1"),
        ("yolo", 0, "cuda:1"),
        ("vlm", 0, "cuda:0"),
    ]


def test_four_gpus_with_uneven_free_memory() -> None:
    experts = [make_expert("small", 2.0, replicas=2), make_expert("big", 12.0, replicas=3)]
    slots = plan_placement(experts, make_devices(10.0, 30.0, 20.0, 30.0), reserve_gb=1.0)
    # left 9/29/19/29: big#0 cuda:1 (tie with cuda:3), big#1 cuda:3, big#2 cuda:2 (cuda:0 is too small)
    # -> 9/17/7/17: small#0 cuda:1 (tie), small#1 cuda:3.
    assert assignment(slots) == [
        ("small", 0, "cuda:1"),
        ("small", 1, "cuda:3"),
        ("big", 0, "cuda:1"),
        ("big", 1, "cuda:3"),
        ("big", 2, "cuda:2"),
    ]


def test_replicas_spread_even_when_one_gpu_has_far_more_room() -> None:
    slots = plan_placement([make_expert("vit", 2.0, replicas=2)], make_devices(70.0, 10.0))
    assert {slot.device for slot in slots} == {"cuda:0", "cuda:1"}


def test_more_replicas_than_gpus_stack_on_the_roomiest() -> None:
    slots = plan_placement([make_expert("vit", 2.0, replicas=3)], make_devices(30.0, 20.0))
    assert assignment(slots) == [("vit", 0, "cuda:0"), ("vit", 1, "cuda:1"), ("vit", 2, "cuda:0")]


def test_pinned_experts_are_respected_and_counted() -> None:
    experts = [
        make_expert("auto", 4.0),
        make_expert("pinned", 8.0, device="cuda:0"),
        make_expert("on-cpu", 50.0, device="cpu"),
        make_expert("plain-cuda", 1.0, device="cuda"),
    ]
    slots = plan_placement(experts, make_devices(20.0, 20.0))
    # Without the pin, "auto" would take cuda:0 (tie); the pin's 8 GB (+1 GB of "cuda") leave cuda:1 roomier.
    assert assignment(slots) == [
        ("auto", 0, "cuda:1"),
        ("pinned", 0, "cuda:0"),
        ("on-cpu", 0, "cpu"),
        ("plain-cuda", 0, "cuda:0"),
    ]


def test_no_gpu_puts_everything_on_the_cpu() -> None:
    experts = [make_expert("vit", 2.0, replicas=2), make_expert("pinned-cpu", 1.0, device="cpu")]
    slots = plan_placement(experts, [])
    assert assignment(slots) == [("vit", 0, "cpu"), ("vit", 1, "cpu"), ("pinned-cpu", 0, "cpu")]


def test_remote_vlm_holds_no_gpu_memory() -> None:
    expert = make_expert("remote", 30.0, backend="vlm_remote", options={"base_url": "http://127.0.0.1:8000/v1"})
    slots = plan_placement([expert], make_devices(2.0))
    assert assignment(slots) == [("remote", 0, "cpu")]
    assert replica_bytes(expert, make_devices(2.0)[0]) == 0


def test_what_does_not_fit_is_named_with_numbers() -> None:
    experts = [
        make_expert("vit", 1.0),
        make_expert("vlm", 30.0),
        make_expert("siglip", 12.0, replicas=2),
    ]
    with pytest.raises(PlacementError) as caught:
        plan_placement(experts, make_devices(10.0, 10.5), reserve_gb=1.0)
    message = str(caught.value)
    assert "2 expert(s) do not fit" in message
    assert "'vlm' needs 30.0 GB per replica" in message
    assert "'siglip' needs 12.0 GB per replica, 2 of 2 replicas" in message
    assert "'vit'" not in message  # it fits; only what does not fit is named
    assert "cuda:0: 9.0 GB free" in message
    assert "cuda:1: 9.5 GB free" in message
    assert "1 GB reserve" in message


def test_over_full_pin_is_reported() -> None:
    experts = [make_expert("pinned", 12.0, device="cuda:1"), make_expert("vlm", 40.0)]
    with pytest.raises(PlacementError) as caught:
        plan_placement(experts, make_devices(20.0, 10.0), reserve_gb=0.0)
    message = str(caught.value)
    assert "'pinned' needs 12.0 GB on cuda:1 (pinned), which has 10.0 GB left" in message
    assert "'vlm' needs 40.0 GB per replica" in message


@pytest.mark.parametrize(
    ("devices", "visible"),
    [(make_devices(20.0, 20.0), "cuda:0, cuda:1"), ([], "none (no CUDA device is visible)")],
)
def test_unknown_pinned_device(devices: list[DeviceInfo], visible: str) -> None:
    with pytest.raises(PlacementError) as caught:
        plan_placement([make_expert("vit", device="cuda:3")], devices)
    message = str(caught.value)
    assert "'vit'" in message
    assert "'cuda:3'" in message
    assert f"visible devices: {visible}" in message


def test_plan_is_deterministic() -> None:
    experts = [make_expert(f"e{i}", 1.0 + (i % 3), replicas=1 + i % 2) for i in range(8)]
    devices = make_devices(24.0, 24.0, 24.0)
    first = plan_placement(experts, devices)
    assert all(plan_placement(experts, devices) == first for _ in range(5))


def test_describe_plan_lists_devices_experts_and_memory() -> None:
    experts = [make_expert("vit", 1.0, replicas=2), make_expert("vlm", 20.0), make_expert("cpu-one", device="cpu")]
    devices = make_devices(40.0, 30.0)
    text = describe_plan(plan_placement(experts, devices), experts, devices)
    lines = text.splitlines()
    assert lines[0] == "placement plan: 4 replica(s) on 3 device(s)"
    assert "  cuda:0: 2 replica(s), 21.0 GB planned, 40.0 GB free of 80.0 GB, 19.0 GB left after the plan" in lines
    assert "    vlm#0 (hf_classifier): 20.0 GB" in lines
    assert "  cuda:1: 1 replica(s), 1.0 GB planned, 30.0 GB free of 80.0 GB, 29.0 GB left after the plan" in lines
    assert "  cpu: 1 replica(s)" in lines
    assert "    cpu-one#0 (hf_classifier): 0.0 GB" in lines


def test_describe_plan_shows_idle_gpus() -> None:
    experts = [make_expert("vit")]
    devices = make_devices(10.0, 5.0)
    text = describe_plan(plan_placement(experts, devices), experts, devices)
    assert "  cuda:1: 0 replica(s), 0.0 GB planned" in text
    assert "(idle)" in text


def test_negative_reserve_is_refused() -> None:
    with pytest.raises(PlacementError, match="reserve_gb"):
        plan_placement([make_expert("vit")], make_devices(10.0), reserve_gb=-1.0)


def test_visible_devices_is_empty_without_cuda() -> None:
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("a GPU is visible")
    assert visible_devices() == []
