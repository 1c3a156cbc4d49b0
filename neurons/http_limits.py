"""The HTTP layer's limits, as the miner's configuration (`axon.*`, `deadline.*`) sets them."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class HttpLimits:
    max_request_bytes: int
    header_timeout_s: float
    body_timeout_s: float  # from the request's turn (when its body may be read), not from its arrival
    max_connections: int
    max_connections_per_ip: int
    max_concurrent_requests: int = 128
    timeout_cap_s: float = 12.0
    nonce_trust_s: float = 4.0
    max_concurrent_requests_per_ip: int | None = None  # None: half of max_concurrent_requests
    # JSON structure a body may hold, counted as its bytes arrive: `{`, `[`, `:`, `,` and backslashes (escapes).
    # An ImageSynapse body holds about 70 (its base64 image none); a body of a million keys, a million-element list
    # or 100,000 nested lists is refused before any of it is parsed.
    max_body_structure: int = 1024
    body_budget_bytes: int | None = None  # bodies in flight at once, in bytes; None: 4 x max_request_bytes
    # The request's header block, counted once it is parsed: h11's own limit holds only for a block still arriving
    # (one that comes in a single read of 100 KB is parsed whole, and was served).
    max_header_bytes: int = 16 * 1024

    @property
    def requests_per_ip(self) -> int:
        """How many of the concurrent request slots one address may hold at once (never all of them, unless 1)."""
        wanted = self.max_concurrent_requests_per_ip or max(1, self.max_concurrent_requests // 2)
        return min(wanted, self.max_concurrent_requests)

    @property
    def bodies_in_flight_bytes(self) -> int:
        """Bytes of request bodies (by their Content-Length) read or being read at once, never below two bodies of
        the largest size (one caller may hold half of it, so the largest body always fits a caller's share)."""
        return max(self.body_budget_bytes or 4 * self.max_request_bytes, 2 * self.max_request_bytes)
