from typing import Union

Buffer = Union[bytes, bytearray, memoryview]

class Chunker:
    """FastCDC 2020 chunker with normalized chunking level 2 (compiled)."""

    def __init__(
        self,
        min_size: int = 4096,
        avg_size: int = 16384,
        max_size: int = 65536,
        seed: int = 0,
    ) -> None: ...
    @property
    def min_size(self) -> int: ...
    @property
    def avg_size(self) -> int: ...
    @property
    def max_size(self) -> int: ...
    @property
    def seed(self) -> int: ...
    def gear_table(self) -> list[int]: ...
    def cut(self, data: Buffer, /) -> list[int]: ...
    def cut_and_hash(
        self, data: Buffer, /, threads: int = 1
    ) -> tuple[list[int], list[bytes]]: ...
