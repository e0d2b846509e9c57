"""Interleaved per-call timing that keeps every sample (for latency distributions)."""

from __future__ import annotations

import gc
import time

import numpy as np


def time_samples(fns: dict, repeats: int, warmup: int = 2) -> dict[str, list[float]]:
    """Calls every zero-argument callable `repeats` times, round-robin with the start of the
    order rotating each round, and returns {name: [milliseconds per call]}. The garbage
    collector is paused so a collection does not land in one contender's samples."""
    names = list(fns)
    for _ in range(warmup):
        for n in names:
            fns[n]()
    samples = {n: [] for n in names}
    clock = time.perf_counter
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        for r in range(repeats):
            for j in range(len(names)):
                n = names[(j + r) % len(names)]
                t0 = clock()
                fns[n]()
                samples[n].append((clock() - t0) * 1e3)
    finally:
        if was_enabled:
            gc.enable()
    return samples


def summary(ms: list[float]) -> dict:
    a = np.asarray(ms)
    p25, p50, p75, p90, p99 = (float(v) for v in np.percentile(a, [25, 50, 75, 90, 99]))
    return {"p25": p25, "p50": p50, "p75": p75, "p90": p90, "p99": p99,
            "min": float(a.min()), "max": float(a.max()), "samples": [float(v) for v in ms]}
