"""Length bucketing: split variable-length sequences into batches that waste little compute on padding."""

from __future__ import annotations

import math
from collections.abc import Sequence


def length_buckets(lengths: Sequence[int], overhead_tokens: int = 32, max_tokens: float = math.inf) -> list[list[int]]:
    """Indices grouped into runs of similar length that minimise the tokens computed with padding, each bucket
    costing ``size * longest + overhead_tokens`` (a forward pass's fixed cost, in tokens) and holding at most
    `max_tokens` padded tokens (a single longer sequence still gets its own bucket). Exact dynamic programme over
    the sorted lengths; buckets come shortest first."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    best, cut = [0.0] + [math.inf] * len(order), [0] * (len(order) + 1)
    for j in range(1, len(order) + 1):
        longest = lengths[order[j - 1]]
        for i in range(j - 1, -1, -1):
            if j - i > 1 and (j - i) * longest > max_tokens:
                break
            cost = best[i] + (j - i) * longest + overhead_tokens
            if cost < best[j]:
                best[j], cut[j] = cost, i
    buckets, j = [], len(order)
    while j > 0:
        buckets.append(order[cut[j]: j])
        j = cut[j]
    return buckets[::-1]
