"""Per-step figures of a torch.profiler window: GPU kernel time, kernel launches, convolution share.

Two sources give the same `ProfileSummary`: a live profiler's key averages (`bench/profile.py`) and
the text tables printed from one and kept in a results folder (`bench/results/*/profile-*.txt`, read by
`bench/tables.py`), whose summary lines may be wrong but whose tables are the profiler's own.
Not named `profile*` alone: a `profile.py` on the import path hides the standard library's `profile`,
which torch.compile imports through cProfile.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

# Host API calls that each put one kernel or memset on the GPU; counted on the CPU side because the
# host pays ~10 us per call whatever the kernel does.
LAUNCH_APIS = ("cudaLaunchKernel", "cuLaunchKernel", "cudaLaunchKernelExC", "cudaMemsetAsync")
# One call replays a whole captured CUDA graph (CUDA-graph trees, `--compile reduce-overhead`).
GRAPH_APIS = ("cudaGraphLaunch",)
# cuDNN convolution operators, forward and backward: their self GPU time is their kernels'.
CONV_OPS = ("aten::cudnn_convolution", "aten::convolution_backward")
STEP_ROW = "ProfilerStep*"
_UNITS_US = {"us": 1.0, "ms": 1e3, "s": 1e6}


@dataclass(frozen=True)
class ProfileSummary:
    """What one profiled window of `steps` training steps cost; times in microseconds."""

    steps: int
    kernel_us: float  # the profiler's "Self CUDA time total": kernels, memsets and copies on the GPU
    conv_us: float = 0.0
    launches: dict[str, int] = field(default_factory=dict)  # per API in LAUNCH_APIS, whole window
    graph_launches: int = 0

    @property
    def kernel_ms_per_step(self) -> float:
        return self.kernel_us / 1e3 / self.steps

    @property
    def launches_per_step(self) -> float:
        return sum(self.launches.values()) / self.steps

    @property
    def conv_share(self) -> float:
        """Fraction of the GPU kernel time spent in cuDNN convolutions."""
        return self.conv_us / self.kernel_us if self.kernel_us else 0.0


def from_key_averages(events) -> ProfileSummary:
    """Summarise `profiler.key_averages()` (torch 2.11-2.14, Kineto)."""
    from torch.autograd import DeviceType

    # Same sum as the table's "Self CUDA time total": GPU-side events, without user annotations
    # (ProfilerStep*, Optimizer.step on the GPU track), which span kernels rather than being kernels.
    kernel_us = sum(e.self_device_time_total for e in events
                    if e.device_type == DeviceType.CUDA and not e.is_user_annotation)
    counts: dict[str, int] = {}
    conv_us = 0.0
    steps = 0
    for e in events:
        if e.key == STEP_ROW:  # one CPU row and, with CUDA, one GPU annotation row of the same count
            steps = max(steps, e.count)
        elif e.key in LAUNCH_APIS or e.key in GRAPH_APIS:
            counts[e.key] = counts.get(e.key, 0) + e.count
        elif e.key in CONV_OPS and e.device_type == DeviceType.CPU:
            conv_us += e.self_device_time_total
    return _summary(steps, kernel_us, conv_us, counts)


def from_table_text(text: str) -> ProfileSummary:
    """Summarise the text of `key_averages().table(...)` printouts (one or more, as saved by a run).

    The launch and convolution rows are read from whichever printed table holds them, so they are
    only complete if the tables' row limits reached them; `ValueError` when a table has no footer.
    """
    totals = re.findall(r"^Self (?!CPU)\w+ time total: ([0-9.]+)(us|ms|s)\s*$", text, re.M)
    if not totals:
        raise ValueError("no 'Self CUDA time total' line: not a torch.profiler table with GPU times")
    kernel_us = float(totals[0][0]) * _UNITS_US[totals[0][1]]
    rows = _table_rows(text)
    steps = max((int(r["# of Calls"]) for r in rows.get(STEP_ROW, [])), default=0)
    counts = {name: int(rows[name][0]["# of Calls"]) for name in LAUNCH_APIS + GRAPH_APIS if name in rows}
    conv_us = sum(_time_us(rows[name][0]["Self CUDA"]) for name in CONV_OPS if name in rows)
    return _summary(steps, kernel_us, conv_us, counts)


def _summary(steps: int, kernel_us: float, conv_us: float, counts: dict[str, int]) -> ProfileSummary:
    if steps <= 0:
        raise ValueError(f"no '{STEP_ROW}' row: the profiler recorded no step")
    return ProfileSummary(steps=steps, kernel_us=kernel_us, conv_us=conv_us,
                          launches={k: v for k, v in counts.items() if k in LAUNCH_APIS},
                          graph_launches=sum(v for k, v in counts.items() if k in GRAPH_APIS))


def _table_rows(text: str) -> dict[str, list[dict[str, str]]]:
    """Every row of every table in `text`, by operator name; columns named by each table's header."""
    rows: dict[str, list[dict[str, str]]] = {}
    columns: list[str] | None = None
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("Name") and "# of Calls" in stripped:
            # Column titles are separated by two or more spaces; names and values are right-aligned.
            columns = re.split(r"\s{2,}", stripped)
        elif stripped.startswith("Self ") and "time total" in stripped:
            columns = None  # the footer closes the table
        elif columns and stripped and not set(stripped) <= {"-", " "}:
            parts = line.rsplit(None, len(columns) - 1)  # a name may hold spaces; values never do
            if len(parts) == len(columns):
                name = parts[0].strip()
                rows.setdefault(name, []).append(dict(zip(columns, [name, *parts[1:]])))
    return rows


def _time_us(value: str) -> float:
    match = re.fullmatch(r"([0-9.]+)(us|ms|s)", value)
    if not match:
        raise ValueError(f"not a profiler time: {value!r}")
    return float(match.group(1)) * _UNITS_US[match.group(2)]
