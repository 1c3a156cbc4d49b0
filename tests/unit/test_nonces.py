"""The nonce rule as bookkeeping (neurons/nonces.py), on a clock the test moves: window edges, order, replays, the
memory bound and its floors, a clock stepping back, nonces that are not timestamps."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from neurons.nonces import NS_PER_S, NonceRecord

T0 = 1_800_000_000 * NS_PER_S  # some wall-clock time


class Clock:
    def __init__(self, now_ns: int = T0) -> None:
        self.now_ns = now_ns

    def __call__(self) -> int:
        return self.now_ns


def record(clock: Clock, **settings: object) -> NonceRecord:
    return NonceRecord(clock_ns=clock, **settings)  # type: ignore[arg-type]


def admit(nonces: NonceRecord, hotkey: str, uuid: str, nonce: int) -> str | None:
    """What the axon does: check, then (the signature holding) record."""
    refusal = nonces.refusal(hotkey, uuid, nonce)
    if refusal is None:
        nonces.accept(hotkey, uuid, nonce)
    return refusal


def test_the_window_edges_count_from_our_clock():
    clock = Clock()
    nonces = record(clock, max_age_s=16.0, future_s=4.0)
    assert admit(nonces, "v", "u", T0 - 16 * NS_PER_S) is None
    assert "too old" in str(admit(nonces, "v", "u", T0 - 16 * NS_PER_S - 1))
    assert admit(nonces, "v", "u", T0 + 4 * NS_PER_S) is None
    assert "future" in str(admit(nonces, "v", "u", T0 + 4 * NS_PER_S + 1))


def test_any_order_is_accepted_and_each_nonce_once_per_uuid():
    nonces = record(Clock())
    assert [admit(nonces, "v", "u", T0 - k) for k in (5, 9, 1, 7)] == [None] * 4
    assert "already used" in str(admit(nonces, "v", "u", T0 - 9))
    assert admit(nonces, "v", "other-uuid", T0 - 9) is None  # another signed message
    assert admit(nonces, "w", "u", T0 - 9) is None  # another signer


def test_a_refusal_changes_nothing():
    nonces = record(Clock())
    for nonce in (T0 - 3600 * NS_PER_S, T0 + 3600 * NS_PER_S):
        assert nonces.refusal("v", "u", nonce) is not None
    assert nonces.refusal("v", "u", T0) is None and nonces.refusal("v", "u", T0) is None  # not recorded by a check
    assert len(nonces) == 0 and nonces.signers() == 0


def test_nonces_that_are_not_timestamps_are_refused_without_raising():
    nonces = record(Clock())
    for nonce in (None, True, "123", 1.5e18, 10**400, -(10**400), 0, -1):
        assert nonces.refusal("v", "u", nonce) is not None, nonce
    assert "million hours" in str(nonces.refusal("v", "u", 10**400))


def test_expired_nonces_and_quiet_signers_are_forgotten():
    clock = Clock()
    nonces = record(clock, max_age_s=16.0)
    for i in range(10):
        admit(nonces, f"v{i}", "u", T0)
    assert len(nonces) == 10 and nonces.signers() == 10
    clock.now_ns += 17 * NS_PER_S
    assert admit(nonces, "v0", "u", clock.now_ns) is None
    assert len(nonces) == 1 and nonces.signers() == 1


def test_a_clock_stepping_back_does_not_revive_forgotten_nonces():
    clock = Clock()
    nonces = record(clock, max_age_s=16.0)
    admit(nonces, "v", "u", T0)
    clock.now_ns += 20 * NS_PER_S
    admit(nonces, "v", "u", clock.now_ns)  # sweeps: T0 is forgotten
    clock.now_ns = T0 + 1 * NS_PER_S  # NTP steps the clock back
    assert "too old" in str(admit(nonces, "v", "u", T0))


def test_the_bound_drops_the_heaviest_signers_oldest_and_raises_only_its_floor():
    nonces = record(Clock(), max_entries=8)
    assert admit(nonces, "honest", "u", T0 - 100) is None
    flood = [T0 - 50 + i for i in range(20)]
    assert [admit(nonces, "flooder", "f", n) for n in flood] == [None] * 20
    assert len(nonces) == 8
    assert "already used" in str(admit(nonces, "honest", "u", T0 - 100))  # the light signer kept its nonce
    assert admit(nonces, "honest", "u", T0 - 200) is None  # and its floor did not move
    dropped = flood[:13]  # 1 honest + 7 flooder entries are what remained
    assert all("oldest remembered" in str(admit(nonces, "flooder", "f", n)) for n in dropped)
    assert "oldest remembered" in str(admit(nonces, "flooder", "other-uuid", flood[0] - 1))  # the floor is the signer's
    assert admit(nonces, "flooder", "f", flood[-1] + 1) is None  # newer ones still pass


def test_nonces_signed_before_the_process_started_are_refused():
    nonces = record(Clock(), not_before_ns=T0 - NS_PER_S)
    assert "process" in str(admit(nonces, "v", "u", T0 - 2 * NS_PER_S))
    assert admit(nonces, "v", "u", T0 - NS_PER_S // 2) is None


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["a", "b", "c"]), st.sampled_from(["u1", "u2"]),
                          st.integers(-20, 6), st.integers(0, 3)), max_size=120))
def test_nothing_is_accepted_twice_and_the_record_stays_bounded(steps):
    """Any interleaving of signers, uuids, nonces (seconds around now) and clock advances."""
    clock = Clock()
    nonces = record(clock, max_age_s=8.0, future_s=2.0, max_entries=5)
    accepted: set[tuple[str, str, int]] = set()
    for hotkey, uuid, offset_s, advance_s in steps:
        clock.now_ns += advance_s * NS_PER_S
        nonce = T0 + offset_s * NS_PER_S
        if admit(nonces, hotkey, uuid, nonce) is None:
            assert (hotkey, uuid, nonce) not in accepted
            assert clock.now_ns - 8 * NS_PER_S <= nonce <= clock.now_ns + 2 * NS_PER_S
            accepted.add((hotkey, uuid, nonce))
        assert len(nonces) <= 5
