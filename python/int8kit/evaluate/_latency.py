"""Latency distributions of two models at fixed batch sizes, timed interleaved.

Each round times one call of each model with perf_counter, the order alternating every
round, so slow drift of the machine (clocks, other load) affects both models alike.
"""

from __future__ import annotations

import gc
import time
from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class LatencyStat:
    batch_size: int
    float_ms: list[float]
    quant_ms: list[float]

    @staticmethod
    def _summary(samples: list[float], batch: int) -> dict:
        a = np.asarray(samples)
        p50, p90, p99 = (float(v) for v in np.percentile(a, [50, 90, 99]))
        return {"p50_ms": p50, "p90_ms": p90, "p99_ms": p99, "mean_ms": float(a.mean()),
                "min_ms": float(a.min()), "throughput_per_s": batch / (p50 / 1e3)}

    @property
    def float_summary(self) -> dict:
        return self._summary(self.float_ms, self.batch_size)

    @property
    def quant_summary(self) -> dict:
        return self._summary(self.quant_ms, self.batch_size)

    @property
    def speedup_p50(self) -> float:
        """float p50 / quantized p50 (> 1: the quantized model is faster)."""
        return self.float_summary["p50_ms"] / self.quant_summary["p50_ms"]

    def to_dict(self) -> dict:
        return {"batch_size": self.batch_size, "float": self.float_summary,
                "quantized": self.quant_summary, "speedup_p50": self.speedup_p50,
                "float_samples_ms": list(self.float_ms),
                "quantized_samples_ms": list(self.quant_ms)}


def batch_of(inputs: torch.Tensor, size: int) -> torch.Tensor:
    """The first `size` samples, cycling through the data when it has fewer."""
    n = inputs.shape[0]
    if size <= n:
        return inputs[:size].contiguous()
    reps = -(-size // n)
    return inputs.repeat(reps, *([1] * (inputs.dim() - 1)))[:size].contiguous()


def measure(run_float, run_quant, inputs: torch.Tensor, batch_sizes, repeats: int,
            warmup: int = 3) -> list[LatencyStat]:
    """run_float / run_quant: callables taking one input batch (no grad, eval mode)."""
    stats = []
    clock = time.perf_counter
    gc_was_enabled = gc.isenabled()
    gc.disable()  # a collection inside one call would land in one model's samples
    try:
        for b in batch_sizes:
            x = batch_of(inputs, b)
            for _ in range(warmup):
                run_float(x)
                run_quant(x)
            fs, qs = [], []
            for r in range(repeats):
                order = ((run_float, fs), (run_quant, qs))
                for fn, sink in (order if r % 2 == 0 else order[::-1]):
                    t0 = clock()
                    fn(x)
                    sink.append((clock() - t0) * 1e3)
            stats.append(LatencyStat(b, fs, qs))
    finally:
        if gc_was_enabled:
            gc.enable()
    return stats
