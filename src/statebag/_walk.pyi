def quick_check(value: object, max_depth: int) -> bool:
    """True when msgspec may encode ``value`` as it is; the twin of codec._quick_check."""

def leaf_types() -> frozenset[type]:
    """The exact types accepted without a look inside (for tests: must equal codec's)."""
