"""Type aliases shared across modules."""

from __future__ import annotations

from typing import TypeAlias

# What statebag accepts wherever it reads raw bytes: any contiguous byte buffer.
Buffer: TypeAlias = bytes | bytearray | memoryview
