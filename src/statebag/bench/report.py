"""What a bench run reports: its JSON document and its markdown table.

The JSON (``statebag bench --json FILE``) has exactly these keys, one document per workload::

    {"workload", "steps", "logical_bytes", "machine",
     "tools": [{"name", "status", "settings", "stored_bytes", "save_p50_s", "save_p99_s",
                "restore_latest_s", "restore_first_s", "objects", "per_call_s"}]}

``status`` is ``ok``, ``skipped`` (not installed: its figures are null, never invented) or
``failed`` (figures null, and ``error`` holds the tail of the tool's stderr). The table
shows the same figures, and the ratios against statebag in-process beside them.
"""

from __future__ import annotations

import contextlib
import math
import os
import platform
from collections.abc import Sequence
from typing import Final, Literal

import msgspec

import statebag

__all__ = [
    "REFERENCE",
    "Report",
    "ToolResult",
    "machine",
    "markdown",
    "percentile",
    "ratio_text",
    "seconds_text",
]

Status = Literal["ok", "skipped", "failed"]
REFERENCE: Final = "statebag"  # the row every ratio is taken against


class ToolResult(msgspec.Struct, kw_only=True):
    """One tool's row; every figure is None unless ``status`` is ``ok``. ``error`` is the
    failure of a failed tool, ``reason`` why a skipped one did not run (the table's note;
    the JSON has no key for it)."""

    name: str
    status: Status
    settings: str
    stored_bytes: int | None = None
    save_p50_s: float | None = None
    save_p99_s: float | None = None
    restore_latest_s: float | None = None
    restore_first_s: float | None = None
    objects: int | None = None
    per_call_s: float | None = None
    error: str | None = None
    reason: str | None = None


_FIGURES: Final = (
    "stored_bytes",
    "save_p50_s",
    "save_p99_s",
    "restore_latest_s",
    "restore_first_s",
    "objects",
    "per_call_s",
)


class Report(msgspec.Struct, kw_only=True):
    workload: str
    steps: int
    logical_bytes: int
    machine: str
    tools: list[ToolResult]

    def to_builtins(self) -> dict[str, object]:
        """The JSON document: every figure key present (null when none), ``error`` only
        on a failed tool."""
        rows = []
        for tool in self.tools:
            row: dict[str, object] = {
                "name": tool.name,
                "status": tool.status,
                "settings": tool.settings,
            }
            row.update({key: getattr(tool, key) for key in _FIGURES})
            if tool.status == "failed":
                row["error"] = tool.error
            rows.append(row)
        return {
            "workload": self.workload,
            "steps": self.steps,
            "logical_bytes": self.logical_bytes,
            "machine": self.machine,
            "tools": rows,
        }

    def tool(self, name: str) -> ToolResult | None:
        return next((tool for tool in self.tools if tool.name == name), None)


def percentile(values: Sequence[float], q: float) -> float:
    """The nearest-rank ``q``-th percentile of ``values``."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


def machine() -> str:
    """The machine in one line: CPU, cores, memory, OS, Python and statebag's backend."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            cpu = next(
                (line.split(":", 1)[1].strip() for line in info if line.startswith("model name")),
                cpu,
            )
    except OSError:
        pass
    memory = ""
    with contextlib.suppress(AttributeError, ValueError, OSError):  # not every OS says
        memory = f", {os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB"
    return (
        f"{cpu}, {os.cpu_count()} cores{memory}, {platform.system()} {platform.release()} "
        f"{platform.machine()}, {platform.python_implementation()} "
        f"{platform.python_version()}, statebag {statebag.__version__} ({statebag.backend})"
    )


def ratio_text(value: float) -> str:
    """A ratio as the table shows it: three significant figures, and never an exponent."""
    if value >= 100:
        return f"{value:.0f}x"
    if value >= 10:
        return f"{value:.1f}x"
    return f"{value:.2f}x"


def seconds_text(seconds: float) -> str:
    """A time as the table shows it, in ms with about three significant figures."""
    ms = seconds * 1000
    if ms >= 100:
        return f"{ms:.0f} ms"
    if ms >= 10:
        return f"{ms:.1f} ms"
    return f"{ms:.2f} ms"


_COLUMNS: Final = (
    "tool",
    "settings",
    "status",
    "stored bytes",
    "logical / stored",
    "stored vs statebag",
    "save p50",
    "save p99",
    "p50 vs statebag",
    "restore latest",
    "restore first",
    "objects",
    "per call (nothing changed)",
)


def markdown(report: Report, *, heading: str) -> str:
    """The report as a markdown section: ``heading``, one table row per tool (raw figures
    and, beside them, the ratios against statebag in-process), then a note per tool that
    did not run."""
    reference = report.tool(REFERENCE)
    if reference is not None and reference.status != "ok":
        reference = None
    lines = [heading, "", _row(_COLUMNS), _row(["---"] * 3 + ["---:"] * (len(_COLUMNS) - 3))]
    notes = []
    for tool in report.tools:
        lines.append(_row(_cells(tool, report.logical_bytes, reference)))
        if tool.status == "skipped":
            notes.append(f"- {tool.name}: skipped: {tool.reason or 'not installed'}")
        elif tool.status == "failed":
            last = (tool.error or "").strip().splitlines()
            notes.append(f"- {tool.name}: failed: {_one_line(last[0] if last else '')}")
    if notes:
        lines += ["", *notes]
    return "\n".join(lines) + "\n"


def _cells(tool: ToolResult, logical: int, reference: ToolResult | None) -> list[str]:
    if tool.status != "ok":
        return [tool.name, tool.settings, tool.status, *(["-"] * (len(_COLUMNS) - 3))]
    assert tool.stored_bytes is not None and tool.save_p50_s is not None
    assert tool.save_p99_s is not None and tool.restore_latest_s is not None
    assert tool.restore_first_s is not None and tool.per_call_s is not None
    stored_vs = p50_vs = "-"
    if reference is not None:
        assert reference.stored_bytes is not None and reference.save_p50_s is not None
        stored_vs = _ratio(tool.stored_bytes, reference.stored_bytes)
        p50_vs = _ratio(tool.save_p50_s, reference.save_p50_s)
    return [
        tool.name,
        tool.settings,
        tool.status,
        f"{tool.stored_bytes:,}",
        _ratio(logical, tool.stored_bytes),
        stored_vs,
        seconds_text(tool.save_p50_s),
        seconds_text(tool.save_p99_s),
        p50_vs,
        seconds_text(tool.restore_latest_s),
        seconds_text(tool.restore_first_s),
        f"{tool.objects:,}",
        seconds_text(tool.per_call_s),
    ]


def _ratio(a: float, b: float) -> str:
    return ratio_text(a / b) if b > 0 else "-"


def _row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |"


def _one_line(text: str, limit: int = 200) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."
