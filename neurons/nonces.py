"""Which signed nonces the miner accepts: fresh by the signer's clock, each one once, in bounded memory
(docs/security.md, "Nonces").

bittensor 10.5's `Axon.default_verify` has two faults. Its age window applies only when the unsigned
`bt_header_dendrite_version` header claims bittensor >= 7.2 (or is absent: no window either), so a captured
request replays with that header lowered. And once a (hotkey, uuid) has been seen it wants every nonce larger than
the last, so a validator's own concurrent requests that a queue reorders are refused as "too old". Here:

- a nonce is the wall-clock time its signer signed, in ns (every dendrite since 7.2; validators run 9.x). It must
  lie in [now - max_age, now + future] by our clock, whatever any header says, and not before this process
  started (the record of a previous process is gone, so its requests must not be replayable against this one);
- each (hotkey, uuid, nonce) is accepted once: the record keeps, per signing hotkey, the nonces still inside the
  window; one outside it is refused by age, so forgetting it costs nothing;
- at most `max_entries` nonces are kept in all. Past that the hotkey holding the most gives up its oldest, and its
  floor rises to it: that hotkey's nonces at or below its floor are refused, so nothing forgotten can be
  replayed, and only the heaviest signer (the one flooding) pays, by having its late stragglers refused.

Pure bookkeeping: no bittensor, no I/O. The axon calls it on its event loop, check and record with no await
between (neurons/axon_hardening.py), so two copies of one request cannot both pass.
"""

from __future__ import annotations

import heapq
import time
from collections.abc import Callable
from dataclasses import dataclass, field

NS_PER_S = 1_000_000_000
DEFAULT_MAX_AGE_S = 16.0  # bittensor's own allowance (ALLOWED_DELTA, 4 s) plus the miner's 12 s timeout cap
DEFAULT_FUTURE_S = 4.0  # a caller's clock may run this far ahead of ours (the same 4 s, the other way)
DEFAULT_MAX_ENTRIES = 65_536  # ~220 bytes each (measured): 14 MB at worst; 3,000+ verified requests/s fill it
_SWEEP_EVERY_NS = NS_PER_S  # expired nonces of callers that went quiet are dropped at least this often


@dataclass
class _Signer:
    oldest: list[tuple[int, str]] = field(default_factory=list)  # heap of (nonce, uuid) still in the window
    seen: set[tuple[int, str]] = field(default_factory=set)  # the same entries, for the membership test
    floor_ns: int = 0  # nonces at or below are refused: raised when the memory bound drops this signer's oldest


class NonceRecord:
    """The nonce rule: `refusal` (changes nothing) before the signature is checked, `accept` once it holds."""

    def __init__(self, max_age_s: float = DEFAULT_MAX_AGE_S, future_s: float = DEFAULT_FUTURE_S,
                 max_entries: int = DEFAULT_MAX_ENTRIES, not_before_ns: int = 0,
                 clock_ns: Callable[[], int] = time.time_ns) -> None:
        if max_age_s <= 0 or future_s < 0 or max_entries < 1:
            raise ValueError(f"max_age_s {max_age_s} must be > 0, future_s {future_s} >= 0, max_entries "
                             f"{max_entries} >= 1")
        self.max_age_ns = int(max_age_s * NS_PER_S)
        self.future_ns = int(future_s * NS_PER_S)
        self.max_entries = max_entries
        self.not_before_ns = not_before_ns
        self._clock_ns = clock_ns
        self._signers: dict[str, _Signer] = {}
        self._size = 0
        self._now_ns = 0
        self._swept_ns = 0

    def __len__(self) -> int:
        return self._size

    def signers(self) -> int:
        return len(self._signers)

    def now_ns(self) -> int:
        # The wall clock, as nonces are (rule 4's monotonic clock cannot be compared with them), but never going
        # back: after a step back, nonces already forgotten as too old would look fresh again.
        self._now_ns = max(self._now_ns, self._clock_ns())
        return self._now_ns

    def refusal(self, hotkey: str, uuid: str | None, nonce: object) -> str | None:
        """Why this nonce cannot be accepted, or None."""
        return self.window_refusal(nonce) or self.seen_refusal(hotkey, uuid, nonce)  # type: ignore[arg-type]

    def claim(self, hotkey: str, uuid: str | None, nonce: int) -> str | None:
        """`refusal`, then `accept` when there is none, in one step: why it was refused, or None (now recorded).

        With front processes (neurons/fronts.py) each front checks the window itself and the miner process claims
        here, once for all of them: two copies of one request sent to two fronts cannot both pass."""
        refusal = self.refusal(hotkey, uuid, nonce)
        if refusal is None:
            self.accept(hotkey, uuid, nonce)
        return refusal

    def window_refusal(self, nonce: object) -> str | None:
        """The checks that need no record: a nonce at all, inside the age window, not before this process started."""
        if not isinstance(nonce, int) or isinstance(nonce, bool):
            return "missing nonce"
        now_ns = self.now_ns()
        if nonce < now_ns - self.max_age_ns:
            return f"nonce is too old: signed {_ago(now_ns - nonce)} ago, {self.max_age_ns / NS_PER_S:g} s allowed"
        if nonce > now_ns + self.future_ns:
            return f"nonce is in the future: {_ago(nonce - now_ns)} ahead, {self.future_ns / NS_PER_S:g} s allowed"
        if nonce < self.not_before_ns:
            return "nonce is older than this miner process"
        return None

    def seen_refusal(self, hotkey: str, uuid: str | None, nonce: int) -> str | None:
        """The checks against the record: used before, or at or below the caller's floor."""
        self._sweep(self.now_ns())
        signer = self._signers.get(hotkey)
        if signer is not None:
            if nonce <= signer.floor_ns:
                return "nonce is older than this caller's oldest remembered one (too many requests at once)"
            if (nonce, str(uuid)) in signer.seen:
                return "nonce already used"
        return None

    def accept(self, hotkey: str, uuid: str | None, nonce: int) -> None:
        """Remember a verified nonce until it leaves the window (call right after `refusal` said None)."""
        signer = self._signers.setdefault(hotkey, _Signer())
        entry = (nonce, str(uuid))
        if entry in signer.seen:
            return
        heapq.heappush(signer.oldest, entry)
        signer.seen.add(entry)
        self._size += 1
        if self._size > self.max_entries:
            self._sweep(self.now_ns(), force=True)
            while self._size > self.max_entries:
                self._drop_oldest_of_heaviest()

    def _sweep(self, now_ns: int, force: bool = False) -> None:
        if not force and now_ns - self._swept_ns < _SWEEP_EVERY_NS:
            return
        self._swept_ns = now_ns
        cutoff_ns = now_ns - self.max_age_ns  # below it the age check refuses: nothing to remember
        for hotkey in list(self._signers):
            signer = self._signers[hotkey]
            while signer.oldest and signer.oldest[0][0] < cutoff_ns:
                signer.seen.discard(heapq.heappop(signer.oldest))
                self._size -= 1
            if not signer.oldest and signer.floor_ns < cutoff_ns:
                del self._signers[hotkey]

    def _drop_oldest_of_heaviest(self) -> None:
        # NOTE: O(signers) per drop. Signers are hotkeys past the blacklist and the signature (registered
        # validators, a few hundred at most), and drops happen only while someone floods at thousands per second.
        heaviest = max(self._signers.values(), key=lambda s: len(s.oldest))
        entry = heapq.heappop(heaviest.oldest)
        heaviest.seen.discard(entry)
        heaviest.floor_ns = max(heaviest.floor_ns, entry[0])
        self._size -= 1


def _ago(ns: int) -> str:
    # Integer arithmetic first: a nonce of hundreds of digits would overflow a float division.
    hours = ns // (3600 * NS_PER_S)
    if hours == 0:
        return f"{ns / NS_PER_S:.1f} s"
    return f"{hours} h" if hours < 1_000_000 else "over a million hours"
