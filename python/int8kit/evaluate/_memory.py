"""Memory footprint: weight bytes of a model and peak process memory during inference.

What is counted (and what is not):
- weight_bytes: every parameter and buffer, once each. A module that defines
  `weight_bytes()` (int8kit's quantized modules) reports its own state instead: the int8
  weight in the packed kernel layout, scales, bias.
  torch.ao quantized modules keep their weights in opaque packed params: we count their
  int8 weight (`weight()`), its per-channel scales/zero points and the float bias; fbgemm's internal prepacked copy
  is not visible from Python and is not counted.
- peak RSS: torch allocates outside Python's allocator, so tracemalloc and
  resource.getrusage (lifetime only) cannot isolate one model. On Linux the kernel's
  high-water mark (VmHWM in /proc/self/status) is reset by writing 5 to
  /proc/self/clear_refs before each model runs, giving the peak during that model's
  inference. Where the reset is refused, the lifetime peak is reported and flagged. Off
  Linux, psutil's current RSS after inference is used when installed (a lower bound).
"""

from __future__ import annotations

import gc

import torch
from torch import nn


def _tensor_bytes(t: torch.Tensor) -> int:
    n = t.numel() * t.element_size()
    if t.is_quantized and t.qscheme() in (torch.per_channel_affine,
                                          torch.per_channel_symmetric):
        n += _tensor_bytes(t.q_per_channel_scales()) + _tensor_bytes(t.q_per_channel_zero_points())
    elif t.is_quantized:
        n += 8 + 8  # one double scale, one int64 zero point
    return n


def _ao_bytes(m: nn.Module) -> int | None:
    """int8 weight + qparams + bias of a torch.ao quantized module, None if not one."""
    if not type(m).__module__.startswith("torch.ao.nn.quantized"):
        return None
    w = getattr(m, "weight", None)
    if not callable(w):
        return None
    try:
        weight = w()
        bias = m.bias() if callable(getattr(m, "bias", None)) else None
    except Exception:
        return None
    return _tensor_bytes(weight) + (_tensor_bytes(bias) if bias is not None else 0)


def weight_bytes(model: nn.Module) -> int:
    total, seen = 0, set()
    skip_under: list[str] = []
    for name, m in model.named_modules():
        if any(name.startswith(p) for p in skip_under):
            continue
        own = getattr(m, "weight_bytes", None)
        own = own() if callable(own) else _ao_bytes(m)
        if own is not None:
            total += int(own)
            skip_under.append(name + "." if name else "")
            seen.update(id(t) for t in m.parameters())
            seen.update(id(t) for t in m.buffers())
            continue
        for t in list(m.parameters(recurse=False)) + list(m.buffers(recurse=False)):
            if t is not None and id(t) not in seen:
                seen.add(id(t))
                total += _tensor_bytes(t)
    return total


def _status_kb(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_rss_during(fn) -> dict:
    """Runs fn() and returns {"peak_rss_bytes", "rss_before_bytes", "peak_increase_bytes",
    "method"}; values are None where the platform gives nothing."""
    gc.collect()
    if _status_kb("VmHWM") is not None:
        reset = _reset_peak()
        before = _status_kb("VmRSS")
        fn()
        peak = _status_kb("VmHWM")
        method = ("Linux VmHWM, reset via /proc/self/clear_refs before the run" if reset else
                  "Linux VmHWM (reset refused: lifetime peak of the process)")
        return {"peak_rss_bytes": peak * 1024, "rss_before_bytes": before * 1024,
                "peak_increase_bytes": (peak - before) * 1024 if reset else None,
                "method": method}
    try:
        import psutil
    except ImportError:
        fn()
        return {"peak_rss_bytes": None, "rss_before_bytes": None, "peak_increase_bytes": None,
                "method": "unavailable (no /proc and no psutil)"}
    proc = psutil.Process()
    before = proc.memory_info().rss
    fn()
    after = proc.memory_info().rss
    return {"peak_rss_bytes": after, "rss_before_bytes": before,
            "peak_increase_bytes": max(after - before, 0),
            "method": "psutil RSS after the run (a lower bound on the peak)"}


def state_dict_bytes(model: nn.Module) -> int | None:
    """Size of torch.save(model.state_dict()): what saving the model costs on disk."""
    import io
    buf = io.BytesIO()
    try:
        torch.save(model.state_dict(), buf)
    except Exception:
        return None
    return buf.tell()
