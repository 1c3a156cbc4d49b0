"""Blacklist, priority and rate limiting as plain functions of (hotkey, metagraph snapshot).

The blacklist runs in the axon's blacklist step, before the signature is checked and before the
body is read: it must never raise for any caller (the official miner does, for unknown hotkeys),
never block, and never change state keyed by the hotkey it is shown (anyone can claim any hotkey
there). The rate limit is charged only after the signature and nonce are verified.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import NamedTuple

from neurons.chain import MetagraphSnapshot


@dataclass(frozen=True)
class GuardPolicy:
    allow_non_validators: bool = False
    min_stake: float = 0.0
    allowed_hotkeys: frozenset[str] = frozenset()  # always let through (e.g. your own test wallet)
    denied_hotkeys: frozenset[str] = frozenset()


class Verdict(NamedTuple):
    refused: bool
    reason: str  # for the caller
    code: str  # for counters: one word per kind of refusal


def blacklist(hotkey: str | None, snapshot: MetagraphSnapshot, policy: GuardPolicy) -> Verdict:
    """Whether to refuse the caller, why, and the counter code of the reason."""
    if not hotkey:
        return Verdict(True, "no caller hotkey", "no_hotkey")
    if hotkey in policy.denied_hotkeys:
        return Verdict(True, "hotkey denied by configuration", "denied")
    if hotkey in policy.allowed_hotkeys:
        return Verdict(False, "hotkey allowed by configuration", "allowed")
    neuron = snapshot.get(hotkey)
    if neuron is None:
        return Verdict(True, "hotkey not registered on the subnet", "unregistered")
    if not neuron.validator_permit and not policy.allow_non_validators:
        return Verdict(True, "caller has no validator permit", "no_permit")
    if neuron.stake < policy.min_stake:
        return Verdict(True, f"stake {neuron.stake:.1f} below the minimum {policy.min_stake:.1f}", "low_stake")
    return Verdict(False, "registered caller", "registered")


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
