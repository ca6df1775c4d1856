"""What this process has spent: busy seconds of its compute methods, CPU time, peak memory.

Measured where the work runs: every Ray actor is its own process, so each one
keeps its own counters, and the driver reads them with `snapshot()` run inside
the actor (`ActorGroup.usage()`).

    class RolloutWorker:
        @busy
        def generate(self, prompts, sampling, group_ids=None) -> Batch: ...

    snapshot()  # {"busy_s": 3.2, "busy_cpu_s": 5.1, "cpu_s": 9.9, "peak_rss_mb": 812.0, "gpu_peak_mb": 0.0,
                #  "calls": 7, "methods": {"generate": {"busy_s": 3.2, "busy_cpu_s": 5.1, "calls": 7,
                #                                       "tokens_in": 0, "tokens_out": 1804}}}

`busy_s` is the wall time spent inside decorated methods, `busy_cpu_s` the
process's CPU time (all its threads) during them: on a shared machine the
first grows with the load, the second much less. `cpu_s` is the process's CPU
time since it started (model loading included). A decorated method called from
inside another one (a CriticWorker's LearnerWorker, say) counts once, in the
outermost call. `tokens_in` / `tokens_out` are the response tokens
of a `Batch` argument / result: a rollout worker's `generate` tokens_out are the
tokens it generated, a learner's `train_step` tokens_in the tokens it trained on.
`intervals` are the (start, end) wall-clock times (time.time()) of the last
`MAX_INTERVALS` busy calls, so that the driver can tell how much two roles
overlapped (`overlap_share`).
"""

from __future__ import annotations

import collections
import functools
import resource
import sys
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

from rlcore.core.batch import Batch

F = TypeVar("F", bound=Callable[..., Any])

MAX_INTERVALS = 100_000

_methods: dict[str, dict[str, float]] = {}
_intervals: collections.deque[tuple[float, float]] = collections.deque(maxlen=MAX_INTERVALS)
_inside = threading.local()


def busy(method: F) -> F:
    """Count the wall time, calls and Batch tokens of every call of `method` in this process's usage."""

    @functools.wraps(method)
    def counted(*args: Any, **kwargs: Any) -> Any:
        if not _enter():
            return method(*args, **kwargs)
        start, start_cpu, wall = time.perf_counter(), time.process_time(), time.time()
        result = None
        try:
            result = method(*args, **kwargs)
            return result
        finally:
            _leave(method.__name__, time.perf_counter() - start, time.process_time() - start_cpu,
                   (*args, *kwargs.values()), result, wall)

    return counted  # type: ignore[return-value]


def _enter() -> bool:
    """Whether this is the outermost counted call on this thread (and mark it so)."""
    if getattr(_inside, "depth", 0):
        return False
    _inside.depth = 1
    return True


def _leave(name: str, seconds: float, cpu_seconds: float, arguments: tuple, result: Any, wall: float) -> None:
    # Module-level (not inside `counted`), so that an actor class pickled by value still counts in this module.
    _inside.depth = 0
    _intervals.append((wall, wall + seconds))
    row = _methods.setdefault(name, {"busy_s": 0.0, "busy_cpu_s": 0.0, "calls": 0, "tokens_in": 0, "tokens_out": 0})
    row["busy_s"] += seconds
    row["busy_cpu_s"] += cpu_seconds
    row["calls"] += 1
    row["tokens_in"] += next((_tokens(a) for a in arguments if isinstance(a, Batch)), 0)
    row["tokens_out"] += _tokens(result) if isinstance(result, Batch) else 0


def snapshot() -> dict[str, Any]:
    """This process's usage so far: busy seconds, CPU seconds, peak RSS and GPU memory (MiB), calls, per method."""
    peak_rss_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    methods = {name: dict(row) for name, row in _methods.items()}
    return {
        "busy_s": sum(row["busy_s"] for row in methods.values()),
        "busy_cpu_s": sum(row["busy_cpu_s"] for row in methods.values()),
        "cpu_s": time.process_time(),
        "peak_rss_mb": peak_rss_kib / 1024,
        "gpu_peak_mb": _gpu_peak_mb(),
        "calls": sum(row["calls"] for row in methods.values()),
        "methods": methods,
        "intervals": list(_intervals),
    }


def reset() -> None:
    """Forget the busy counters (CPU time and peak memory are the process's own and stay)."""
    _methods.clear()
    _intervals.clear()


def overlap_share(busy: list[tuple[float, float]], others: list[tuple[float, float]]) -> float:
    """The share of the time covered by `busy` intervals during which at least one of `others` was running.

    E.g. busy [(0, 4)], others [(1, 2), (1.5, 3)]: others cover 1..3, so 2 of the 4 seconds overlap: 0.5.
    0.0 when `busy` covers no time.
    """
    def merged(intervals):
        out: list[list[float]] = []
        for start, end in sorted(intervals):
            if out and start <= out[-1][1]:
                out[-1][1] = max(out[-1][1], end)
            else:
                out.append([start, end])
        return out

    mine, theirs = merged(busy), merged(others)
    total = sum(end - start for start, end in mine)
    shared, j = 0.0, 0
    for start, end in mine:  # both lists are sorted and disjoint: one pass
        while j < len(theirs) and theirs[j][1] <= start:
            j += 1
        k = j
        while k < len(theirs) and theirs[k][0] < end:
            shared += min(end, theirs[k][1]) - max(start, theirs[k][0])
            k += 1
    return shared / total if total > 0 else 0.0


def _tokens(batch: Batch) -> int:
    return int(batch.response_mask.sum())


def _gpu_peak_mb() -> float:
    """torch.cuda.max_memory_allocated on this process's device, or 0 where CUDA was never used."""
    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_available() or not torch.cuda.is_initialized():
        return 0.0
    return torch.cuda.max_memory_allocated() / 1024**2
