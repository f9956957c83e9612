"""Deterministic test data: the same bytes on every machine and every run."""

from __future__ import annotations

import json
import random

from blake3 import blake3


def random_bytes(size: int, seed: int = 0) -> bytes:
    """Deterministic pseudo-random bytes (BLAKE3 extended output of the seed)."""
    return blake3(b"statebag-test-data" + seed.to_bytes(8, "little")).digest(length=size)


def json_like_bytes(size: int, seed: int = 0) -> bytes:
    """Deterministic JSON text of agent-like records, cut to exactly ``size`` bytes."""
    rng = random.Random(seed)
    words = ["state", "agent", "tool", "call", "result", "user", "said", "the", "a", "42", "ok"]
    parts: list[bytes] = []
    total = 0
    step = 0
    while total < size:
        record = {
            "step": step,
            "role": rng.choice(["user", "assistant", "tool"]),
            "text": " ".join(rng.choice(words) for _ in range(rng.randint(5, 200))),
            "score": rng.random(),
            "tags": [rng.choice(words) for _ in range(rng.randint(0, 6))],
        }
        line = json.dumps(record, sort_keys=True).encode() + b"\n"
        parts.append(line)
        total += len(line)
        step += 1
    return b"".join(parts)[:size]
