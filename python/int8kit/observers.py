"""Observers: watch calibration tensors and choose a quantization range from them.

Every observer is an nn.Module whose forward records x and returns it unchanged, and whose
calculate_qparams() turns what it saw into (scale, zero_point) through
qparams.qparams_from_range, so every observer shares one formula and differs only in the
range [lo, hi] it picks:

  MinMaxObserver               the extremes seen (torch.ao's MinMaxObserver)
  MovingAverageMinMaxObserver  extremes averaged over batches (robust to one odd batch)
  HistogramObserver            percentile clipping on a running histogram
  MSEObserver                  the clipping range that minimizes the expected squared
                               quantization error over the running histogram

axis=None observes per tensor; axis=k keeps one range per slice along dimension k.
`name` (set by prepare to the layer's name) appears in errors, e.g. NaN in calibration data.
"""

from __future__ import annotations

import functools

import torch
from torch import nn

from .qparams import QParams, qparams_from_range, qrange


class ObserverBase(nn.Module):
    """Shared state and checks; subclasses implement _observe(x) and _range()."""

    def __init__(self, bits: int = 8, symmetric: bool = False, signed: bool = False,
                 axis: int | None = None, name: str = ""):
        super().__init__()
        qrange(bits, signed)  # validates bits
        if axis is not None and (not isinstance(axis, int) or isinstance(axis, bool)):
            raise ValueError(f"axis must be None or an int, got {axis!r}")
        self.bits, self.symmetric, self.signed = bits, bool(symmetric), bool(signed)
        self.axis = axis
        self.name = name
        self.register_buffer("min_val", torch.tensor([]))
        self.register_buffer("max_val", torch.tensor([]))
        self.batches = 0

    @classmethod
    def with_args(cls, **kwargs):
        """A factory with preset arguments (what a QConfig holds): Obs.with_args(axis=0)()."""
        return functools.partial(cls, **kwargs)

    @property
    def per_channel(self) -> bool:
        return self.axis is not None

    @property
    def calibrated(self) -> bool:
        return self.batches > 0

    def _where(self) -> str:
        return f"layer {self.name!r}" if self.name else type(self).__name__

    def _rows(self, x: torch.Tensor) -> torch.Tensor:
        """x as float32 [C, n] (per channel) or [1, n] (per tensor) with its extremes,
        after checks; None for an empty x."""
        if not isinstance(x, torch.Tensor) or not x.is_floating_point():
            raise TypeError(f"{self._where()}: observers take floating-point tensors, got "
                            f"{type(x).__name__ if not isinstance(x, torch.Tensor) else x.dtype}")
        if x.numel() == 0:
            return None
        x = x.detach().float()
        if self.axis is None:
            rows = x.reshape(1, -1)
        else:
            if not -x.dim() <= self.axis < x.dim():
                raise ValueError(f"{self._where()}: axis={self.axis} is out of range for a "
                                 f"tensor of shape {tuple(x.shape)}")
            rows = x.movedim(self.axis, 0).reshape(x.shape[self.axis], -1)
        lo, hi = torch.aminmax(rows, dim=1)
        # min/max propagate NaN and expose +-Inf, so checking them checks every element.
        if not bool(torch.isfinite(lo).all() and torch.isfinite(hi).all()):
            raise ValueError(f"{self._where()}: calibration data contains NaN or Inf")
        if self.calibrated and lo.numel() != self.min_val.numel():
            raise ValueError(f"{self._where()}: saw {lo.numel()} channels along axis "
                             f"{self.axis}, earlier batches had {self.min_val.numel()}")
        return rows, lo, hi

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        seen = self._rows(x)
        if seen is None:  # e.g. an MoE expert that got no tokens: nothing to observe
            return x
        self._observe(*seen)
        self.batches += 1
        return x

    def get_extra_state(self):
        # batches is a plain int (cheap to test and count) that state_dict must carry:
        # without it a loaded observer would count as never calibrated.
        return {"batches": self.batches}

    def set_extra_state(self, state) -> None:
        self.batches = int(state["batches"])

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):
        # The buffers take the shape of what was observed (empty before calibration), so
        # a fresh observer takes the checkpoint's shapes and dtypes instead of refusing them.
        for name, buf in self._buffers.items():
            t = state_dict.get(prefix + name)
            if isinstance(t, torch.Tensor) and (t.shape != buf.shape or t.dtype != buf.dtype):
                self._buffers[name] = torch.empty_like(t, device=buf.device)
        self.__dict__.pop("_range_cache", None)  # keyed by batches, which may not change
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict,
                                      missing_keys, unexpected_keys, error_msgs)

    def _observe(self, rows, lo, hi) -> None:
        raise NotImplementedError

    def _range(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.min_val, self.max_val

    def calculate_range(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The chosen [lo, hi]: 0-D per tensor, 1-D per channel."""
        if not self.calibrated:
            raise RuntimeError(f"{self._where()}: observer has seen no data; run calibration "
                               "data through the prepared model first")
        cached = getattr(self, "_range_cache", None)
        if cached is not None and cached[0] == self.batches:  # searches can be costly
            lo, hi = cached[1]
        else:
            lo, hi = self._range()
            self._range_cache = (self.batches, (lo, hi))
        return (lo.reshape(()), hi.reshape(())) if self.axis is None else (lo, hi)

    def calculate_qparams(self) -> QParams:
        lo, hi = self.calculate_range()
        return qparams_from_range(lo, hi, self.bits, self.symmetric, self.signed)

    def extra_repr(self) -> str:
        kind = f"{'int' if self.signed else 'uint'}{self.bits} " \
               f"{'symmetric' if self.symmetric else 'asymmetric'}"
        where = "per tensor" if self.axis is None else f"per channel (axis={self.axis})"
        return f"{kind}, {where}" + (f", name={self.name!r}" if self.name else "")


class MinMaxObserver(ObserverBase):
    """Running min and max over every batch."""

    def _observe(self, rows, lo, hi):
        if self.calibrated:
            lo, hi = torch.min(self.min_val, lo), torch.max(self.max_val, hi)
        self.min_val, self.max_val = lo, hi


class MovingAverageMinMaxObserver(ObserverBase):
    """min/max as exponential moving averages of the per-batch extremes:
    m <- m + c * (batch_m - m), the first batch taken as is."""

    def __init__(self, averaging_constant: float = 0.01, **kwargs):
        super().__init__(**kwargs)
        if not 0.0 < float(averaging_constant) <= 1.0:
            raise ValueError(f"averaging_constant must be in (0, 1], got {averaging_constant!r}")
        self.averaging_constant = float(averaging_constant)

    def _observe(self, rows, lo, hi):
        if self.calibrated:
            c = self.averaging_constant
            lo = self.min_val + c * (lo - self.min_val)
            hi = self.max_val + c * (hi - self.max_val)
        self.min_val, self.max_val = lo, hi


class _HistogramBase(ObserverBase):
    """A running histogram per channel (or one per tensor) with `bins` equal bins over
    [min_val, max_val], keeping each bin's count and the sum of its values (so the mean
    of a bin, not its center, stands for its values). When a batch widens the range, old
    bins move to the new ones by their means (an approximation within one new bin)."""

    def __init__(self, bins: int = 2048, **kwargs):
        super().__init__(**kwargs)
        if not isinstance(bins, int) or isinstance(bins, bool) or bins < 16:
            raise ValueError(f"bins must be an int >= 16, got {bins!r}")
        self.bins = bins
        self.register_buffer("histogram", torch.tensor([]))
        self.register_buffer("bin_sums", torch.tensor([]))

    def _load_from_state_dict(self, state_dict, prefix, *args):
        hist = state_dict.get(prefix + "histogram")
        if isinstance(hist, torch.Tensor) and hist.numel() and hist.shape[-1] != self.bins:
            args[-1].append(f"{prefix}histogram has {hist.shape[-1]} bins, this "  # error_msgs
                            f"{type(self).__name__} has {self.bins}")
        super()._load_from_state_dict(state_dict, prefix, *args)

    def _accumulate(self, values, lo, hi, counts=None):
        """(counts, sums) [C, bins] of values [C, n] (weighted by counts if given)."""
        c = values.shape[0]
        width = (hi - lo).clamp_min(1e-30) / self.bins
        idx = torch.floor((values - lo[:, None]) / width[:, None]).clamp_(0, self.bins - 1)
        idx = (idx.long() + torch.arange(c)[:, None] * self.bins).reshape(-1)
        w = torch.ones_like(values) if counts is None else counts
        n = torch.zeros(c * self.bins, dtype=torch.float64)
        n.index_add_(0, idx, w.reshape(-1).double())
        sums = torch.zeros(c * self.bins, dtype=torch.float64)
        sums.index_add_(0, idx, (w * values).reshape(-1).double())
        return n.reshape(c, self.bins), sums.reshape(c, self.bins)

    def _observe(self, rows, lo, hi):
        if not self.calibrated:
            self.min_val, self.max_val = lo, hi
            self.histogram, self.bin_sums = self._accumulate(rows, lo, hi)
            return
        new_lo, new_hi = torch.min(self.min_val, lo), torch.max(self.max_val, hi)
        hist, sums = self.histogram, self.bin_sums
        if bool((new_lo < self.min_val).any() or (new_hi > self.max_val).any()):
            means = self._means().float()
            hist, sums = self._accumulate(means, new_lo, new_hi, counts=hist.float())
        self.min_val, self.max_val = new_lo, new_hi
        n, s = self._accumulate(rows, new_lo, new_hi)
        self.histogram, self.bin_sums = hist + n, sums + s

    def _edges(self):
        """Bin edges [C, bins + 1]."""
        t = torch.linspace(0, 1, self.bins + 1)
        return self.min_val[:, None] + (self.max_val - self.min_val)[:, None] * t

    def _means(self):
        """Mean value of each bin [C, bins] (the center for empty bins), float64."""
        edges = self._edges().double()
        centers = (edges[:, :-1] + edges[:, 1:]) / 2
        return torch.where(self.histogram > 0, self.bin_sums / self.histogram.clamp_min(1e-30),
                           centers)


class HistogramObserver(_HistogramBase):
    """Clips the range to the [100 - p, p] percentiles of the data (p = `percentile`).

    The upper bound is the upper edge of the first bin where the cumulative count reaches
    p% of the total, the lower bound the lower edge of the first bin whose cumulative count
    exceeds (100 - p)%; so the bounds are within one bin width of the true percentiles.
    """

    def __init__(self, percentile: float = 99.99, **kwargs):
        super().__init__(**kwargs)
        if not 50.0 < float(percentile) <= 100.0:
            raise ValueError(f"percentile must be in (50, 100], got {percentile!r}")
        self.percentile = float(percentile)

    def _range(self):
        if self.percentile == 100.0:
            return self.min_val, self.max_val
        cum = self.histogram.cumsum(1)
        total = cum[:, -1:]
        p = self.percentile / 100.0
        upper = torch.searchsorted(cum, total * p - 1e-9).clamp_max(self.bins - 1)  # first >= p
        lower = torch.searchsorted(cum, total * (1 - p), right=True).clamp_max(self.bins - 1)
        edges = self._edges()
        lo = edges.gather(1, lower).squeeze(1)
        hi = edges.gather(1, upper + 1).squeeze(1)
        # A clipped bound never lies outside the observed data.
        return torch.max(lo, self.min_val), torch.min(hi, self.max_val)


class MSEObserver(_HistogramBase):
    """Searches the clipping range that minimizes the expected squared quantization error.

    Candidates shrink the observed range, widened to include 0, toward zero:
    [a_lo * min(min, 0), a_hi * max(max, 0)] for `steps` fractions in [min_fraction, 1];
    first both ends by the same fraction, then (asymmetric schemes, whose two ends may clip
    different tails) each end in turn. The error of a candidate is the sum over bins of
    count * (mean - fake_quant(mean))^2, each bin standing in for its values by their
    mean; with 2048 bins a quantization step spans many bins, so rounding noise shows.
    """

    def __init__(self, steps: int = 40, min_fraction: float = 0.2, **kwargs):
        super().__init__(**kwargs)
        if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
            raise ValueError(f"steps must be a positive int, got {steps!r}")
        if not 0.0 < float(min_fraction) <= 1.0:
            raise ValueError(f"min_fraction must be in (0, 1], got {min_fraction!r}")
        self.steps, self.min_fraction = steps, float(min_fraction)

    def _errors(self, lo, hi):
        """Expected squared error [C, A] for candidate ranges lo, hi of shape [C, A]."""
        scale, zp = qparams_from_range(lo, hi, self.bits, self.symmetric, self.signed)
        qmin, qmax = qrange(self.bits, self.signed)
        keep = (self.histogram > 0).any(0)  # empty bins add nothing: skip them
        x = self._means().float()[:, None, keep]                              # [C, 1, B]
        s, z = scale[:, :, None], zp.float()[:, :, None]                      # [C, A, 1]
        q = torch.clamp(torch.round(x * (1.0 / s)) + z, qmin, qmax)
        err = (x - (q - z) * s) ** 2                                          # [C, A, B]
        return (err * self.histogram.float()[:, None, keep]).sum(-1)

    def _best(self, lo, hi):
        """Per channel, the candidate (columns of lo, hi [C, A]) with the least error;
        ties go to the widest range (the last minimum)."""
        errs = torch.cat([self._errors(lo[:, i:i + 32], hi[:, i:i + 32])
                          for i in range(0, lo.shape[1], 32)], dim=1)
        best = (errs.shape[1] - 1 - errs.flip(1).argmin(1))[:, None]
        return lo.gather(1, best).squeeze(1), hi.gather(1, best).squeeze(1)

    def _range(self):
        fr = torch.linspace(self.min_fraction, 1.0, self.steps)[None, :]
        # Shrink the range widened to include 0 (as the qparams are): shrinking [0.5, 1]
        # itself would give candidates like [0.5, 0.2], with lo > hi.
        lo_grid = self.min_val.clamp_max(0)[:, None] * fr
        hi_grid = self.max_val.clamp_min(0)[:, None] * fr
        lo, hi = self._best(lo_grid, hi_grid)  # both ends shrunk by the same fraction
        if not self.symmetric:
            # Then each end on its own (coordinate descent over the same grid: every
            # step keeps the current choice among its candidates, so the error never rises).
            for _ in range(2):
                lo, hi = self._best(lo_grid, hi[:, None].expand_as(hi_grid))
                lo, hi = self._best(lo[:, None].expand_as(lo_grid), hi_grid)
        return lo, hi


OBSERVERS = {
    "minmax": MinMaxObserver,
    "moving_average_minmax": MovingAverageMinMaxObserver,
    "histogram": HistogramObserver,
    "mse": MSEObserver,
}
