"""Blacklist, priority and rate limiting as plain functions of (hotkey, metagraph snapshot).

They run in the axon's blacklist step, before the body is read: they must never raise for any
caller (the official miner does, for unknown hotkeys) and never block.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from neurons.chain import MetagraphSnapshot


@dataclass(frozen=True)
class GuardPolicy:
    allow_non_validators: bool = False
    min_stake: float = 0.0
    allowed_hotkeys: frozenset[str] = frozenset()  # always let through (e.g. your own test wallet)
    denied_hotkeys: frozenset[str] = frozenset()


def blacklist(hotkey: str | None, snapshot: MetagraphSnapshot, policy: GuardPolicy) -> tuple[bool, str]:
    """(True, reason) to refuse the caller; (False, reason) to let it through."""
    if not hotkey:
        return True, "no caller hotkey"
    if hotkey in policy.denied_hotkeys:
        return True, "hotkey denied by configuration"
    if hotkey in policy.allowed_hotkeys:
        return False, "hotkey allowed by configuration"
    neuron = snapshot.get(hotkey)
    if neuron is None:
        return True, "hotkey not registered on the subnet"
    if not neuron.validator_permit and not policy.allow_non_validators:
        return True, "caller has no validator permit"
    if neuron.stake < policy.min_stake:
        return True, f"stake {neuron.stake:.1f} below the minimum {policy.min_stake:.1f}"
    return False, "registered caller"


def priority(hotkey: str | None, snapshot: MetagraphSnapshot) -> float:
    """The caller's stake (0 for strangers)."""
    neuron = snapshot.get(hotkey) if hotkey else None
    return neuron.stake if neuron is not None else 0.0


@dataclass
class TokenBucketLimiter:
    """Per-hotkey token buckets: `rate_per_s` sustained, `burst` at once. `rate_per_s` 0 turns it off."""

    rate_per_s: float
    burst: float
    max_hotkeys: int = 10_000
    _buckets: dict[str, tuple[float, float]] = field(default_factory=dict)  # hotkey -> (tokens, stamp)

    def allow(self, hotkey: str, now_s: float | None = None) -> bool:
        if self.rate_per_s <= 0:
            return True
        now_s = time.monotonic() if now_s is None else now_s
        tokens, stamp = self._buckets.get(hotkey, (self.burst, now_s))
        tokens = min(self.burst, tokens + (now_s - stamp) * self.rate_per_s)
        allowed = tokens >= 1.0
        if allowed:
            tokens -= 1.0
        if hotkey not in self._buckets and len(self._buckets) >= self.max_hotkeys:
            self._buckets.pop(next(iter(self._buckets)))  # bounded memory against hotkey spraying
        self._buckets[hotkey] = (tokens, now_s)
        return allowed
