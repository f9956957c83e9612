"""Peak memory of one save or one load of a bytes value, measured in this process alone.

    python benches/peak_memory.py save REPO SIZE   # a new repository REPO, one field "blob"
    python benches/peak_memory.py load REPO SIZE   # the head of chain "c" of REPO

Prints one JSON object: ``peak`` (bytes of resident memory above the baseline at the
operation's highest point), ``baseline`` (resident bytes just before the operation: the value
itself is already there for a save), ``seconds`` and ``bytes``. The value is SIZE bytes of
BLAKE3 extended output (incompressible), generated before the baseline is taken.

The peak is the kernel's high-water mark of resident memory (``VmHWM``), reset just before
the operation (``/proc/self/clear_refs``), so nothing before it counts. Where that is not
available, ``ru_maxrss`` is used: then anything before the baseline that went higher counts
too, so the figure is an upper bound.
"""

from __future__ import annotations

import json
import resource
import sys
import time
from pathlib import Path

from blake3 import blake3

import statebag

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def _status(field: str) -> int | None:
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _maxrss() -> int:
    usage = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return usage if sys.platform == "darwin" else usage * 1024  # bytes there, KiB here


class Peak:
    """Resident memory now, and the highest it reached since ``start``."""

    def start(self) -> int:
        try:
            _CLEAR_REFS.write_text("5")  # resets VmHWM to the current resident size
            self.exact = True
        except OSError:
            self.exact = False
        self.baseline = _status("VmRSS") or _maxrss()
        return self.baseline

    def above_baseline(self) -> int:
        high = _status("VmHWM") if self.exact else None
        return (high if high is not None else _maxrss()) - self.baseline


def main(op: str, where: str, size: int) -> dict[str, object]:
    peak = Peak()
    if op == "save":
        value = blake3(b"statebag peak memory").digest(length=size)
        repo = statebag.open(where)
        peak.start()
        started = time.perf_counter()
        repo.save("c", {"blob": value})
    elif op == "load":
        repo = statebag.open(where, create=False)
        head = repo.head("c")
        assert head is not None, f"no chain 'c' in {where}"
        peak.start()
        started = time.perf_counter()
        value = repo.load(head)["blob"]
        assert len(value) == size
    else:
        raise SystemExit(f"unknown operation {op!r}: save or load")
    seconds = time.perf_counter() - started
    result = {
        "op": op,
        "bytes": size,
        "peak": peak.above_baseline(),
        "baseline": peak.baseline,
        "seconds": seconds,
        "exact": peak.exact,
    }
    repo.close()
    return result


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1], sys.argv[2], int(sys.argv[3]))))
