def quick_check(value: object, max_depth: int) -> bool:
    """True when msgspec may encode ``value`` as it is; the twin of codec._quick_check."""

def leaf_types() -> frozenset[type]:
    """The exact types accepted without a look inside (for tests: must equal codec's)."""

def msgpack_depth(data: bytes | bytearray | memoryview, limit: int) -> tuple[int, int, int]:
    """(depth, error, offset) of the MessagePack value in ``data``; the twin of
    codec._msgpack_depth."""
