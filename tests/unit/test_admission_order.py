"""Admission hands slots on by the rule, whatever the sequence of arrivals, releases and callers giving up.

The rule (cascade/admission.py): while a slot is free, the waiting request of the caller with the fewest in
flight goes first, then the highest stake, the earliest deadline, the first to arrive; a caller at its own cap
waits. A small model applies that rule directly to the whole waiting list; the Admission under test keeps
per-hotkey heaps instead, and must admit exactly the same requests after every step.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from dataclasses import dataclass, field

from hypothesis import given, settings
from hypothesis import strategies as st

from cascade.admission import Admission

MAX_IN_FLIGHT, MAX_PER_HOTKEY = 2, 2
HOTKEYS = ["a", "b", "c", "d"]
STAKES = {"a": 10.0, "b": 10.0, "c": 50.0, "d": 1.0}


@dataclass
class Model:
    """The rule over the whole waiting list, in arrival order."""

    in_flight: Counter[str] = field(default_factory=Counter)
    waiting: list[tuple[int, str, float]] = field(default_factory=list)  # (request, hotkey, deadline)
    admitted: set[int] = field(default_factory=set)

    def arrive(self, request: int, hotkey: str, deadline: float) -> None:
        self.waiting.append((request, hotkey, deadline))
        self.hand_on()

    def release(self, request: int, hotkey: str) -> None:
        self.admitted.discard(request)
        self.in_flight[hotkey] -= 1
        self.hand_on()

    def give_up(self, request: int) -> None:
        self.waiting = [w for w in self.waiting if w[0] != request]

    def hand_on(self) -> None:
        while self.waiting and sum(self.in_flight.values()) < MAX_IN_FLIGHT:
            eligible = [w for w in self.waiting if self.in_flight[w[1]] < MAX_PER_HOTKEY]
            if not eligible:
                return
            best = min(eligible, key=lambda w: (self.in_flight[w[1]], -STAKES[w[1]], w[2], w[0]))
            self.waiting.remove(best)
            self.in_flight[best[1]] += 1
            self.admitted.add(best[0])


steps = st.lists(st.one_of(
    st.tuples(st.just("arrive"), st.sampled_from(HOTKEYS), st.integers(1, 5)),  # deadline (far in the future)
    st.tuples(st.just("release"), st.integers(0, 100)),  # the n-th admitted request (mod their number) leaves
    st.tuples(st.just("give_up"), st.integers(0, 100)),  # the n-th waiting request (mod their number) gives up
), min_size=1, max_size=40)


@settings(max_examples=300, deadline=None)
@given(steps)
def test_the_same_requests_are_admitted_as_the_rule_says_after_every_step(ops):
    async def run() -> None:
        admission = Admission(MAX_IN_FLIGHT, MAX_PER_HOTKEY, max_waiting=1000)
        model = Model()
        tasks: dict[int, tuple[asyncio.Task[bool], str]] = {}
        released: set[int] = set()
        now = asyncio.get_running_loop().time()

        def holding() -> list[int]:
            return sorted(r for r, (task, _) in tasks.items()
                          if task.done() and not task.cancelled() and task.result() and r not in released)

        for op in ops:
            if op[0] == "arrive":
                request, hotkey = len(tasks), op[1]
                deadline = now + 1000.0 + op[2]
                tasks[request] = (asyncio.create_task(admission.acquire(hotkey, STAKES[hotkey], deadline, now)),
                                  hotkey)
                model.arrive(request, hotkey, deadline)
            elif op[0] == "release" and holding():
                held = holding()
                request = held[op[1] % len(held)]
                released.add(request)
                admission.release(tasks[request][1])
                model.release(request, tasks[request][1])
            elif op[0] == "give_up":
                pending = [w[0] for w in model.waiting]
                if pending:
                    request = pending[op[1] % len(pending)]
                    tasks[request][0].cancel()
                    model.give_up(request)
            for _ in range(4):  # let admitted waiters resume and cancelled ones unwind
                await asyncio.sleep(0)
            assert set(holding()) == model.admitted, op
            assert admission.in_flight == sum(model.in_flight.values())
            assert admission.waiting() == len(model.waiting)
        for task, _ in tasks.values():
            task.cancel()

    asyncio.run(run())



def test_among_callers_with_as_many_in_flight_the_higher_stake_goes_first_then_the_earlier_deadline():
    async def run() -> list[str]:
        admission = Admission(1, 1, max_waiting=10)
        now = asyncio.get_running_loop().time()
        assert await admission.acquire("a", 10.0, now + 60, now)
        order: list[str] = []

        async def wait(hotkey: str, stake: float, deadline: float) -> None:
            if await admission.acquire(hotkey, stake, now + deadline, now):
                order.append(hotkey)
                admission.release(hotkey)

        waiters = [asyncio.create_task(wait(*args)) for args in
                   [("low-stake-soon", 1.0, 5.0), ("high-stake-late", 50.0, 50.0), ("high-stake-soon", 50.0, 20.0)]]
        await asyncio.sleep(0)
        admission.release("a")
        await asyncio.gather(*waiters)
        return order

    assert asyncio.run(run()) == ["high-stake-soon", "high-stake-late", "low-stake-soon"]
