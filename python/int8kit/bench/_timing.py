"""Interleaved per-call timing that keeps every sample (for latency distributions)."""

from __future__ import annotations

import gc
import math
import time

import numpy as np

from ._harness import schedule, williams_orders


def time_samples(fns: dict, repeats: int, warmup: int = 2) -> dict[str, list[float]]:
    """Calls every zero-argument callable in rounds whose orders form a Williams design and
    returns {name: [milliseconds per call]}, at least `repeats` samples each. Over the
    samples kept every contender directly follows every other one equally often
    (`_harness.schedule`): int8 kernels run slower right after float32 work, so an
    unbalanced order would bias them. The rounds make whole blocks of the design. The
    garbage collector is paused so a collection does not land in one contender's samples."""
    names = list(fns)
    for _ in range(warmup):
        for n in names:
            fns[n]()
    n_orders = len(williams_orders(len(names)))
    # per block each contender opens n_orders / len(names) rounds, whose first call is not kept
    kept = n_orders - n_orders // len(names) if len(names) > 1 else 1
    rounds = math.ceil(repeats / kept) * n_orders
    samples = {n: [] for n in names}
    clock = time.perf_counter
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        for i, prev in schedule(len(names), rounds):
            t0 = clock()
            fns[names[i]]()
            ms = (clock() - t0) * 1e3
            if prev is not None:
                samples[names[i]].append(ms)
    finally:
        if was_enabled:
            gc.enable()
    return samples


def summary(ms: list[float]) -> dict:
    a = np.asarray(ms)
    p25, p50, p75, p90, p99 = (float(v) for v in np.percentile(a, [25, 50, 75, 90, 99]))
    return {"p25": p25, "p50": p50, "p75": p75, "p90": p90, "p99": p99,
            "min": float(a.min()), "max": float(a.max()), "samples": [float(v) for v in ms]}
